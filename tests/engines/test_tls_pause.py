"""core/tls.py honours pause_reading(): decrypted data waits until resume_reading().

The defect (found with the tap): TLSProtocol decrypted every record in a ciphertext chunk and
handed each to the app, even after the app called ``pause_reading()`` in its first
``data_received`` - so a protocol that pauses to handle one request at a time got the next one
anyway, and dropped it. The engine under TLS is replaced by a recording fake; the peer is an
``ssl`` client on memory BIOs, so the two requests arrive in one ciphertext chunk, deterministically.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from socklab.core.protocol import Protocol
from socklab.core.sockets import client_ssl_context, server_ssl_context
from socklab.core.tls import TLSProtocol
from socklab.core.transport import Transport


class _FakeTransport(Transport):
    def __init__(self) -> None:
        self.out = bytearray()
        self.reading = True
        self.timers: list[Callable[[], None]] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        self.timers.append(callback)
        return None

    def run_timers(self) -> None:
        while self.timers:
            self.timers.pop(0)()


class _OneAtATime(Protocol):
    """Pauses reading after each message, as a request/response server does."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got.append(data)
        self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        return None


def tls_pair(tls_files: dict[str, str], app: Protocol, fake: _FakeTransport) -> tuple[
        TLSProtocol, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A server-side TLSProtocol for ``app`` on ``fake``, and an ``ssl`` client on memory BIOs
    (``cin`` feeds it, ``cout`` is what it sent): the handshake done, the server's leftover output delivered."""
    server = TLSProtocol(app, server_ssl_context(tls_files["cert"], tls_files["key"]), server_side=True)
    server.connection_made(fake)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ssl_context(tls_files["ca"]).wrap_bio(cin, cout, server_hostname="localhost")
    for _ in range(10):  # the handshake, flight by flight
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        finally:
            if cout.pending:
                server.data_received(cout.read())
            if fake.out:
                cin.write(bytes(fake.out))
                fake.out.clear()
    else:
        raise AssertionError("no TLS handshake")
    if fake.out:
        cin.write(bytes(fake.out))
        fake.out.clear()
    return server, client, cin, cout


def _pair(tls_files: dict[str, str]) -> tuple[TLSProtocol, _OneAtATime, _FakeTransport, ssl.SSLObject,
                                                  ssl.MemoryBIO, ssl.MemoryBIO]:
    app, fake = _OneAtATime(), _FakeTransport()
    server, client, cin, cout = tls_pair(tls_files, app, fake)
    return server, app, fake, client, cin, cout


def test_tls_holds_plaintext_while_paused(tls_files: dict[str, str]) -> None:
    server, app, fake, client, _cin, cout = _pair(tls_files)
    client.write(b"first request\n")
    client.write(b"second request\n")  # a second TLS record, in the same ciphertext chunk
    server.data_received(cout.read())
    assert app.got == [b"first request\n"]  # the old code delivered both, after pause_reading()
    assert not fake.reading
    fake.run_timers()
    assert app.got == [b"first request\n"]  # still paused: nothing more
    server.resume_reading()
    fake.run_timers()
    assert app.got == [b"first request\n", b"second request\n"]
    assert fake.reading is False  # the app paused again after the second one


def test_tls_eof_waits_behind_held_plaintext(tls_files: dict[str, str]) -> None:
    server, app, fake, client, _cin, cout = _pair(tls_files)
    client.write(b"only request\n")
    client.write(b"tail\n")
    server.data_received(cout.read())
    keep = server.eof_received()  # the TCP FIN arrives while the app is paused
    assert not app.eof and keep  # EOF must not overtake the held data, nor close under it
    server.resume_reading()
    fake.run_timers()
    assert app.got == [b"only request\n", b"tail\n"]
    server.resume_reading()
    fake.run_timers()
    assert app.eof and fake.closed
