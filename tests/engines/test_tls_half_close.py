"""TLS half-close on socklab's own TLS (core/tls.py): ``write_eof()`` is close_notify, then the FIN.

The reactor and blocking engines put :class:`~socklab.core.tls.TLSProtocol` between the socket and
the app; its ``write_eof()`` used to raise (``can_write_eof()`` False), so a TLS client could not
say "that was all" and still read the answer (``nc --ssl -N``). Now it sends close_notify, the
engine transport sends the FIN once its buffer drained, and reading goes on until the peer ends.

The peer is Python's ``ssl`` on a plain blocking socket, so what arrives is checked on the wire:
the request, then close_notify (``recv`` returns ``b""`` with ``suppress_ragged_eofs=False``: a FIN
without it would raise), then the FIN itself (the raw socket reads end-of-file) - all before the
peer answers; the answer, sent after our EOF, must still reach the app. TLS 1.2 and 1.3 both.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

import pytest

from socklab.core.protocol import Protocol
from socklab.core.selfsigned import self_signed_context
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint, client_ssl_context, server_ssl_context
from socklab.core.tls import TLSProtocol
from socklab.runtime.client import BlockingClient

from .test_tls_pause import _FakeTransport, tls_pair

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
REPLY = b"answer sent after the client's close_notify and FIN\n"


class _Peer:
    """One TLS connection on a thread: read to close_notify, check the FIN, then answer and close."""

    def __init__(self, version: ssl.TLSVersion) -> None:
        self.context, self.cert = self_signed_context()
        self.context.minimum_version = self.context.maximum_version = version
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.got = b""
        self.saw: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(20)
            with self.context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
                while chunk := tls.recv(65536):  # b"" only for close_notify (a bare FIN raises SSLEOFError)
                    self.got += chunk
                self.saw.append("close_notify")
                if socket.socket.recv(tls, 1, socket.MSG_PEEK) == b"":  # the TCP layer under TLS: FIN?
                    self.saw.append("FIN")
                tls.sendall(REPLY)
                tls.unwrap()  # our close_notify (theirs came already)
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.listener.close()
        self.thread.join(20)


class _HalfCloser(Protocol):
    """Sends a request, half-closes at once, and keeps what comes back."""

    def __init__(self) -> None:
        self.got = b""
        self.eof = False
        self.lost: list[BaseException | None] = []
        self.done = threading.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.can = transport.can_write_eof()
        transport.write(b"request\n")
        transport.write_eof()
        transport.write(b"dropped: written after write_eof\n")

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.done.set()


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("engine", ["epoll", "select", "threads", "iterative", "asyncio", "uvloop"])
def test_tls_write_eof_sends_close_notify_and_fin_and_keeps_reading(engine: str, version: str) -> None:
    peer = _Peer(VERSIONS[version])
    try:
        with BlockingClient(ClientSettings(pin=peer.cert.fingerprint), engine=engine) as client:
            handle = client.connect(Endpoint("127.0.0.1", peer.port), _HalfCloser)
            app = handle.protocol
            assert app is not None and app.done.wait(20), "the connection did not end"
        peer.thread.join(20)
        assert peer.error is None, peer.error
        assert app.can is True
        assert peer.got == b"request\n"
        assert peer.saw == ["close_notify", "FIN"]
        assert app.got == REPLY and app.eof and app.lost == [None]
    finally:
        peer.close()


class _HalfClosingFake(_FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.eof_at: int | None = None  # bytes written before write_eof

    def write_eof(self) -> None:
        self.eof_at = len(self.out)

    def can_write_eof(self) -> bool:
        return True


def _pair(tls_files: dict[str, str], app: Protocol) -> tuple[TLSProtocol, _HalfClosingFake, ssl.SSLObject,
                                                                ssl.MemoryBIO, ssl.MemoryBIO]:
    """A server-side TLSProtocol on a recording transport, and an ``ssl`` client on memory BIOs."""
    fake = _HalfClosingFake()
    server, client, cin, cout = tls_pair(tls_files, app, fake)
    return server, fake, client, cin, cout


def _client_reads(client: ssl.SSLObject, cin: ssl.MemoryBIO, fake: _HalfClosingFake) -> tuple[bytes, bool]:
    """What the client decrypts from what the server wrote, and whether close_notify ended it."""
    cin.write(bytes(fake.out))
    fake.out.clear()
    got = b""
    while True:
        try:
            chunk = client.read(65536)
        except ssl.SSLWantReadError:
            return got, False
        except ssl.SSLZeroReturnError:
            return got, True
        if not chunk:
            return got, True
        got += chunk


class _Collect(Protocol):
    def __init__(self, half_close_on: bytes | None = None, pause: bool = False) -> None:
        self.got: list[bytes] = []
        self.eof = False
        self.half_close_on, self.pause = half_close_on, pause

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got.append(data)
        if data == self.half_close_on:
            self.transport.write(b"bye\n")
            self.transport.write_eof()
        if self.pause:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        return True


def test_write_eof_inside_data_received_keeps_the_records_behind(tls_files: dict[str, str]) -> None:
    """Records still undecrypted when the app half-closes are delivered, not eaten by SSL_shutdown."""
    app = _Collect(half_close_on=b"first\n")
    server, fake, client, cin, cout = _pair(tls_files, app)
    client.write(b"first\n")
    client.write(b"second\n")  # a second record in the same chunk: unread when write_eof comes
    server.data_received(cout.read())
    assert app.got == [b"first\n", b"second\n"]
    assert fake.eof_at is not None and fake.eof_at == len(fake.out)  # close_notify went out before the FIN
    assert _client_reads(client, cin, fake) == (b"bye\n", True)
    client.write(b"after our close_notify\n")  # the peer may go on: we still read
    server.data_received(cout.read())
    assert app.got[-1] == b"after our close_notify\n"
    assert not fake.closed


def test_write_eof_after_the_peers_fin_waits_for_the_records_held_by_a_pause(tls_files: dict[str, str]) -> None:
    """A paused app half-closes while a record and the peer's EOF wait: our close_notify follows them."""
    app = _Collect(pause=True)
    server, fake, client, cin, cout = _pair(tls_files, app)
    client.write(b"one\n")
    client.write(b"two\n")
    try:
        client.unwrap()  # the peer half-closes first: its close_notify...
    except ssl.SSLWantReadError:
        pass
    server.data_received(cout.read())
    server.eof_received()  # ...and its FIN
    assert app.got == [b"one\n"] and not app.eof
    server.write_eof()
    assert fake.eof_at is None  # not yet: SSL_shutdown would read (and fail on) the held record
    app.pause = False
    server.resume_reading()
    fake.run_timers()
    assert app.got == [b"one\n", b"two\n"] and app.eof
    assert fake.eof_at is not None
    assert _client_reads(client, cin, fake) == (b"", True)


class _ResetOnWrite(_FakeTransport):
    """A peer that has gone: the next write fails and the engine reports the loss at once."""

    protocol: TLSProtocol
    armed = False

    def write(self, data: Any) -> None:
        if self.armed:
            self.armed = False
            self.protocol.connection_lost(ConnectionResetError("reset by peer"))
            return
        super().write(data)


def test_a_reset_during_the_handshakes_last_flight_never_reaches_the_app(tls_files: dict[str, str]) -> None:
    """The server's last flight (TLS 1.3: its session tickets) meets a reset: the app is never
    started, so it is never left with a connection_made and no connection_lost."""
    app = _Collect()
    lost: list[BaseException | None] = []
    app.connection_lost = lost.append  # type: ignore[method-assign]
    server = TLSProtocol(app, server_ssl_context(tls_files["cert"], tls_files["key"]), server_side=True)
    fake = _ResetOnWrite()
    fake.protocol = server
    server.connection_made(fake)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ssl_context(tls_files["ca"]).wrap_bio(cin, cout, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()  # ClientHello
    server.data_received(cout.read())  # ServerHello ... Finished
    cin.write(bytes(fake.out))
    fake.out.clear()
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()  # the client's Finished
    fake.armed = True  # the server's answer to it (its tickets) finds the connection reset
    server.data_received(cout.read())
    assert not hasattr(app, "transport"), "connection_made on a connection already lost"
    assert lost == []
