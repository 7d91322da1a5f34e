"""``transport.tcp_state()``: the kernel's TCP state as a capability, on every engine (issue 18 part 4).

``socklab connect --explain`` shows the kernel's state beside each step; it took the raw socket
from ``get_extra_info("socket")`` for that. The transport now answers itself, under TLS too (the
state of the TCP connection that carries it), and ``None`` where there is no TCP (a Unix socket).
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from socklab.core.protocol import Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.runtime.client import BlockingClient
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0


class _States(Protocol):
    """Records the transport's TCP state when the connection opens and when the peer's FIN comes."""

    def __init__(self) -> None:
        self.states: list[str | None] = []
        self.made = threading.Event()
        self.done = threading.Event()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.states.append(transport.tcp_state())
        self.made.set()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        self.states.append(self.transport.tcp_state())
        self.done.set()
        return None


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_server_side_states(engine: str, tls: bool, tls_files: dict[str, str]) -> None:
    proto = _States()
    extra = {"tls_cert": tls_files["cert"], "tls_key": tls_files["key"]} if tls else {}
    with running_server(lambda: proto, engine, **extra) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT)
        conn: Any = raw
        if tls:
            ctx = ssl.create_default_context(cafile=tls_files["ca"])
            conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        with conn:
            assert proto.made.wait(WAIT)  # the FIN only once the server side is open
            conn.sendall(b"x")
            if tls:
                conn.unwrap()  # close_notify (the server answers with its own); no TCP FIN yet
            else:
                conn.shutdown(socket.SHUT_WR)
            assert proto.done.wait(WAIT)
    # the peer's end of stream: a FIN puts the kernel in CLOSE_WAIT; a TLS close_notify is
    # only bytes to the kernel (TLS is carried by the TCP connection, still ESTABLISHED)
    assert proto.states == ["ESTABLISHED", "ESTABLISHED" if tls else "CLOSE_WAIT"]


def test_client_side_state(engine: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as lst, \
            BlockingClient(ClientSettings(connect_timeout=WAIT), engine=engine) as client:
        handle = client.connect(Endpoint("127.0.0.1", lst.getsockname()[1]), _States)
        conn, _ = lst.accept()
        with conn:
            assert client.call(handle.transport.tcp_state) == "ESTABLISHED"
            conn.shutdown(socket.SHUT_WR)
            assert handle.protocol is not None and handle.protocol.done.wait(WAIT)
    assert handle.protocol.states == ["ESTABLISHED", "CLOSE_WAIT"]


def test_unix_socket_has_no_tcp_state(engine: str, tmp_path: Path) -> None:
    proto = _States()
    path = str(tmp_path / "s.sock")
    with running_server(lambda: proto, engine, unix=path), \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(WAIT)
        c.connect(path)
        assert proto.made.wait(WAIT)
        c.shutdown(socket.SHUT_WR)
        assert proto.done.wait(WAIT)
    assert proto.states == [None, None]
