"""The thread engines' TLS echo: answered on the reading thread, outside the engine lock.

An app that declared itself an echo (``zero_copy_echo``, untraced) is answered by the blocking
engines without the engine lock or a call into the app - under TLS too since
``engines/_blocking_tls.py``: the reading thread decrypts and encrypts back under the TLS layer's
own exclusion. These tests pin what that must keep: an echo while another thread holds the engine
lock (the new behaviour), whole records in order when other threads write to the same connection
meanwhile, and the ordinary path taking over at the peer's close_notify or a broken record.
Real sockets on 127.0.0.1, port 0; the peer is Python's ``ssl``.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.engines._blocking_tls import ThreadTLSProtocol
from tests.conftest import roundtrip, running_server, wait_until

pytestmark = pytest.mark.timeout(60)

BLOCKING = ["threads", "pool", "iterative"]
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _client_context(tls_files: dict[str, str], version: str = "1.3") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=tls_files["ca"])
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    return ctx


def _tls_layers(srv: Any) -> list[ThreadTLSProtocol]:
    return [conn.protocol for conn in list(srv.engine.connections) if isinstance(conn.protocol, ThreadTLSProtocol)]


@pytest.mark.parametrize("engine", BLOCKING)
def test_the_tls_echo_answers_while_another_thread_holds_the_engine_lock(engine: str,
                                                                         tls_files: dict[str, str]) -> None:
    # Before, the TLS layer decrypted and encrypted in data_received under the engine lock: this
    # echo waited for the lock (the client's recv timed out).
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv, \
            _client_context(tls_files).wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                                                   server_hostname="localhost") as c:
        assert roundtrip(c, b"handshake done, first message\n") == b"handshake done, first message\n"
        [layer] = _tls_layers(srv)
        assert layer.echoing
        with srv.engine.lock:
            assert roundtrip(c, b"x" * 5000) == b"x" * 5000


class _EchoAndMarks(EchoProtocol):
    """The declared echo, and ``MARKS`` numbered marks written from the timer thread meanwhile."""

    MARKS = 1500
    started = threading.Event()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.sent = 0
        transport.call_later(0, self._mark)

    def _mark(self) -> None:  # on the engine's timer thread, under the engine lock
        self.transport.write(b"<%05d>" % self.sent)
        self.sent += 1
        type(self).started.set()
        if self.sent < self.MARKS:
            self.transport.call_later(0, self._mark)


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("engine", ["threads", "pool"])
def test_writes_from_another_thread_during_the_tls_echo_keep_every_record_whole_and_in_order(
        engine: str, version: str, tls_files: dict[str, str]) -> None:
    # A record encrypted out of order, or the TLS object used by two threads at once, fails the
    # client's decryption (bad record MAC) or tears a mark.
    _EchoAndMarks.started = threading.Event()
    messages = [bytes([97 + i % 26]) * (1 + (i * 37) % 3000) for i in range(600)]
    with running_server(_EchoAndMarks, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv, \
            _client_context(tls_files, version).wrap_socket(
                socket.create_connection(("127.0.0.1", srv.port), timeout=10), server_hostname="localhost") as c:
        assert _EchoAndMarks.started.wait(10)
        got = bytearray()
        echoed = 0
        for message in messages:  # one at a time: the echo runs while the marks are written
            c.sendall(message)
            echoed += len(message)
            while len(re.sub(rb"<\d{5}>", b"", bytes(got))) < echoed:
                chunk = c.recv(65536)
                assert chunk, "the server closed the connection"
                got += chunk
        total = echoed + 7 * _EchoAndMarks.MARKS
        while len(got) < total:
            chunk = c.recv(65536)
            assert chunk, "the server closed the connection"
            got += chunk
        [layer] = _tls_layers(srv)
        assert layer.echoing
    marks = re.findall(rb"<(\d{5})>", bytes(got))
    assert [int(m) for m in marks] == list(range(_EchoAndMarks.MARKS))
    assert re.sub(rb"<\d{5}>", b"", bytes(got)) == b"".join(messages)


def _raw_client(tls_files: dict[str, str], port: int) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO,
                                                               ssl.MemoryBIO]:
    """A TLS client on memory BIOs over a plain socket, handshake done: the test decides what goes in one send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _client_context(tls_files).wrap_bio(cin, cout, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(cout.read())
            data = sock.recv(65536)
            assert data, "the server closed during the handshake"
            cin.write(data)
    sock.sendall(cout.read())
    return sock, tls, cin, cout


def _read_plain(sock: socket.socket, tls: ssl.SSLObject, cin: ssl.MemoryBIO, n: int) -> bytes:
    """At least ``n`` bytes of plaintext; fails if the server ends the stream first."""
    got = b""
    while len(got) < n:
        try:
            got += tls.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            assert data, f"the server closed after {len(got)} of {n} bytes"
            cin.write(data)
    return got


def _read_to_the_end(sock: socket.socket, tls: ssl.SSLObject, cin: ssl.MemoryBIO) -> tuple[bytes, str]:
    """Plaintext until the stream ends, and how: 'close_notify', 'FIN' (without one) or 'reset'."""
    got = b""
    while True:
        try:
            chunk = tls.read(65536)
        except ssl.SSLWantReadError:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return got, "reset"
            if not data:
                return got, "FIN"
            cin.write(data)
            continue
        except ssl.SSLZeroReturnError:
            return got, "close_notify"
        if not chunk:
            return got, "close_notify"
        got += chunk


@pytest.mark.parametrize("engine", BLOCKING)
def test_the_peers_close_notify_behind_a_message_ends_the_tls_echo_on_the_ordinary_path(
        engine: str, tls_files: dict[str, str]) -> None:
    # The message and the close_notify come in one segment: echo() answers the message, stops at
    # the close_notify, and data_received meets it - the echo app half-closes back (write_eof).
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        sock, tls, cin, cout = _raw_client(tls_files, srv.port)
        with sock:
            tls.write(b"first\n")
            sock.sendall(cout.read())
            got = _read_plain(sock, tls, cin, 6)  # the echo path is on once this came back
            assert got == b"first\n"
            [layer] = _tls_layers(srv)
            assert layer.echoing
            tls.write(b"last words\n")
            with pytest.raises(ssl.SSLWantReadError):
                tls.unwrap()  # our close_notify goes into cout; theirs is awaited
            sock.sendall(cout.read())  # the last record and the close_notify: one send
            assert _read_to_the_end(sock, tls, cin) == (b"last words\n", "close_notify")
            assert sock.recv(1) == b""  # then the FIN: the echo app half-closed back
            assert not layer.echoing
        wait_until(lambda: not srv.engine.connections, "the server to close the connection")


@pytest.mark.parametrize("engine", BLOCKING)
def test_a_broken_record_during_the_tls_echo_ends_the_connection(engine: str, tls_files: dict[str, str]) -> None:
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        sock, tls, cin, cout = _raw_client(tls_files, srv.port)
        with sock:
            tls.write(b"fine\n")
            sock.sendall(cout.read())
            got = _read_plain(sock, tls, cin, 5)
            assert got == b"fine\n"
            tls.write(b"good record\n")
            good = cout.read()
            tls.write(b"this record is damaged on the way\n")
            bad = bytearray(cout.read())
            bad[-3] ^= 0x55  # inside the authentication tag
            sock.sendall(good + bytes(bad))
            try:  # the good record's echo may be lost to the reset: only the end is checked
                how = _read_to_the_end(sock, tls, cin)[1]
            except ssl.SSLError as exc:  # the server's alert reached us before the reset
                how = f"alert: {exc}"
            assert how != "close_notify"
            wait_until(lambda: not srv.engine.connections, "the server to drop the connection")
