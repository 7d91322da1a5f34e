"""``ServerSettings(tls_self_signed=True)``: the runtime makes one certificate for all listeners (issue 17).

Library use, no CLI: every TLS listener of a Server serves the same certificate, whose SHA-256 is
``server.tls_fingerprint`` (what ``announce_tls`` prints, once); a client pinning it talks, on the
reactor's TLS layer and on asyncio's.
"""

from __future__ import annotations

import io
import socket
from contextlib import redirect_stderr

import pytest

from socklab.core.errors import UsageError
from socklab.core.protocol import Protocol
from socklab.core.selfsigned import PinMismatch, fingerprint, pinned_client_context
from socklab.core.settings import ServerSettings
from socklab.core.transport import Transport
from socklab.runtime import Server, announce_tls

pytestmark = pytest.mark.timeout(60)


class _Echo(Protocol):
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _served_fingerprint(port: int, pin: str | None = None) -> tuple[str, bytes]:
    ctx = pinned_client_context(pin)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"ping")
        return fingerprint(der), tls.recv(4)


@pytest.mark.parametrize("engine", ["epoll", "threads", "asyncio"])
def test_one_certificate_for_every_listener_and_its_fingerprint(engine: str) -> None:
    srv = Server(ServerSettings(engine=engine, host="127.0.0.1", port=0, tls_self_signed=True, shutdown_timeout=1))
    try:
        first = srv.listen(_Echo)
        second = srv.listen(_Echo, port=0)
        plain = srv.listen(_Echo, port=0, tls=False)
        srv.start()
        fp = srv.tls_fingerprint
        assert fp is not None
        assert _served_fingerprint(first[1], fp) == (fp, b"ping")
        assert _served_fingerprint(second[1], fp) == (fp, b"ping")
        wrong = ("11" if fp.startswith("00") else "00") + fp[2:]
        with pytest.raises(PinMismatch):
            _served_fingerprint(first[1], wrong)
        with socket.create_connection(("127.0.0.1", plain[1]), timeout=10) as conn:  # tls=False: plain TCP
            conn.sendall(b"clear")
            assert conn.recv(5) == b"clear"
        said = io.StringIO()
        with redirect_stderr(said):
            announce_tls(srv, "demo")
            announce_tls(srv, "demo")  # once only
        assert said.getvalue() == (f"socklab demo: TLS with a self-signed certificate, SHA-256 {fp}\n"
                                   f"socklab demo: clients check it with --pin {fp}\n")
    finally:
        srv.shutdown(timeout=2)


def test_settings_refuse_self_signed_with_a_certificate_file() -> None:
    with pytest.raises(UsageError, match=r"--tls-self-signed makes its own certificate: drop --tls-cert c\.pem"):
        ServerSettings(tls_self_signed=True, tls_cert="c.pem").validate()
    assert ServerSettings(tls_self_signed=True).serves_tls
    assert not ServerSettings().serves_tls


def test_no_tls_asked_no_context_and_nothing_said() -> None:
    srv = Server(ServerSettings(host="127.0.0.1", port=0))
    try:
        assert srv.tls_context() is None and srv.tls_fingerprint is None
        said = io.StringIO()
        with redirect_stderr(said):
            announce_tls(srv, "demo")
        assert said.getvalue() == ""
    finally:
        srv.close()

