"""The client API (socklab.runtime.client) on every engine: real sockets on loopback, port 0.

Connect + echo, refused, timeout (a listener whose backlog is full: SYNs are dropped, so the
connect can only time out), the server's EOF, and the documented callback order
(connection_made, data_received*, eof_received?, connection_lost once).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoDatagramProtocol, EchoProtocol
from socklab.core.errors import ConnectionRefused, ConnectTimeout
from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.runtime.client import BlockingClient, connect, run_client
from tests.conftest import running_server, silent_listener

WAIT = 20.0  # only matters when something is broken


class Recorder(Protocol):
    """Records every callback in order; done when ``want`` bytes arrived."""

    def __init__(self, send: bytes = b"", want: int = 0) -> None:
        self.events: list[str] = []
        self.got = bytearray()
        self.send, self.want = send, want
        self.enough = threading.Event()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.events.append("made")
        if self.send:
            transport.write(self.send)

    def data_received(self, data: bytes) -> None:
        if self.events[-1] != "data":
            self.events.append("data")
        self.got += data
        if len(self.got) >= self.want:
            self.enough.set()

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(f"lost:{type(exc).__name__ if exc else None}")
        self.enough.set()


def test_connect_and_echo(engine: str) -> None:
    with running_server(EchoProtocol, engine) as srv, BlockingClient(engine=engine) as client:
        message = b"x" * 100_000
        handle = client.connect(Endpoint("127.0.0.1", srv.port), lambda: Recorder(message, len(message)))
        proto = handle.protocol
        assert proto is not None and proto.enough.wait(WAIT)
        assert bytes(proto.got) == message
        client.call(handle.transport.close)
        handle.wait_closed(WAIT)
        assert proto.events == ["made", "data", "lost:None"]


def test_refused(engine: str) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ConnectionRefused), BlockingClient(engine=engine) as client:
        client.connect(Endpoint("127.0.0.1", port), Recorder)


def test_timeout(engine: str) -> None:
    # a listener whose backlog is full: SYNs are dropped, the connect can only time out
    with silent_listener(case="the connect-timeout case") as (host, port), pytest.raises(ConnectTimeout), \
            BlockingClient(ClientSettings(connect_timeout=0.5), engine=engine) as client:
        client.connect(Endpoint(host, port), Recorder)


def test_server_eof_and_callback_order(engine: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"bye\n")
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # until the client closes
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        proto = run_client(Endpoint("127.0.0.1", listener.getsockname()[1]), Recorder, engine=engine,
                           timeout=WAIT)
        assert bytes(proto.got) == b"bye\n"
        assert proto.events == ["made", "data", "eof", "lost:None"]
    finally:
        t.join(WAIT)
        listener.close()


class Pinger(DatagramProtocol):
    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.errors: list[BaseException] = []
        self.got = threading.Event()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.sendto(b"ping")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.append(data)
        self.got.set()

    def error_received(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.got.set()


def test_datagram_echo(engine: str) -> None:
    with running_server(EchoDatagramProtocol, engine, udp=True) as srv, BlockingClient(engine=engine) as client:
        handle = client.open_datagram(Endpoint("127.0.0.1", srv.port), Pinger)
        assert handle.protocol is not None and handle.protocol.got.wait(WAIT)
        assert handle.protocol.replies == [b"ping"]


def test_datagram_nothing_listens(engine: str) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with BlockingClient(engine=engine) as client:
        handle = client.open_datagram(Endpoint("127.0.0.1", port), Pinger)
        assert handle.protocol is not None and handle.protocol.got.wait(WAIT)
        assert [type(e) for e in handle.protocol.errors] == [ConnectionRefused]


def test_a_client_engine_never_closes_an_idle_connection() -> None:
    # A server closes idle clients (idle_timeout 300 s by default); a client's own engine must not
    # close the connection it was asked to keep (a chat client waits for hours).
    with BlockingClient() as client:
        assert client.engine.settings.idle_timeout == 0


def test_on_error_is_told_on_the_engine(engine: str) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    told: list[BaseException] = []
    done = threading.Event()

    def on_error(exc: BaseException) -> None:
        told.append(exc)
        done.set()

    with BlockingClient(engine=engine) as client:
        client.call(lambda: connect(Endpoint("127.0.0.1", port), Recorder, engine=client.engine, on_error=on_error))
        assert done.wait(WAIT)
    assert [type(e) for e in told] == [ConnectionRefused]


class _Anyone(Pinger):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # sends once the handle knows the server's address


def test_unconnected_datagram_endpoint_talks_to_the_resolved_server(engine: str) -> None:
    with running_server(EchoDatagramProtocol, engine, udp=True) as srv, BlockingClient(engine=engine) as client:
        handle = client.open_datagram(Endpoint("localhost", srv.port), _Anyone, connected=False)
        assert handle.remote[:2] == ("127.0.0.1", srv.port)
        proto = handle.protocol
        assert proto is not None
        client.call(lambda: proto.transport.sendto(b"tid", handle.remote))
        assert proto.got.wait(WAIT) and proto.replies == [b"tid"]
