"""socklab's MemoryBIO TLS layer (core/tls.py) record by record, without sockets (issue 19).

The read loop stops after a record when nothing is left (no ciphertext, no decrypted bytes, no
EOF) instead of calling ``read`` again for an ``SSLWantReadError``, and it calls the app's
``data_received`` bound once. These tests hold it to every way ciphertext can arrive: several
records in one chunk, a record cut anywhere, a record and close_notify together, a TCP EOF
without close_notify, the peer's EOF after a paused app resumed - and an app reached through a
``__getattr__`` wrapper (the echo server's access-log wrapper) is looked up once, not per record.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from socklab.core.protocol import Protocol
from socklab.core.selfsigned import pinned_client_context, self_signed_context
from socklab.core.tls import TLSProtocol

pytestmark = pytest.mark.timeout(60)


class _Wire:
    """A transport that keeps what the TLS layer writes (ciphertext) for the test to deliver."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = self.aborted = False
        self.later: list[Any] = []

    def write(self, data: Any) -> None:
        self.out += data

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append(callback)


class _App(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = 0

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof += 1
        return True


class _Wrapped:
    """Forwards everything to the app through __getattr__, counting the lookups of data_received."""

    def __init__(self, inner: _App) -> None:
        self._inner = inner
        self.lookups = 0

    def __getattr__(self, name: str) -> Any:
        if name == "data_received":
            self.lookups += 1
        return getattr(self._inner, name)


def _pair(server_app: Any) -> tuple[TLSProtocol, _Wire, TLSProtocol, _Wire]:
    server_ctx, _ = self_signed_context()
    server = TLSProtocol(server_app, server_ctx, server_side=True)
    client = TLSProtocol(_App(), pinned_client_context(), server_side=False, server_hostname="localhost")
    s_wire, c_wire = _Wire(), _Wire()
    server.connection_made(s_wire)  # type: ignore[arg-type]
    client.connection_made(c_wire)  # type: ignore[arg-type]
    for _ in range(10):  # the handshake, both ways
        if c_wire.out:
            server.data_received(c_wire.take())
        if s_wire.out:
            client.data_received(s_wire.take())
        if not server._handshaking and not client._handshaking and not c_wire.out and not s_wire.out:
            break
    assert not server._handshaking and not client._handshaking
    return server, s_wire, client, c_wire


def _records(client: TLSProtocol, wire: _Wire, messages: list[bytes]) -> bytes:
    for m in messages:
        client.write(m)  # one record each
    return wire.take()


def test_several_records_in_one_chunk_all_arrive() -> None:
    app = _App()
    server, _, client, c_wire = _pair(app)
    messages = [b"one", b"two" * 100, b"x" * 20000, b"four"]  # 20000 B: two records
    server.data_received(_records(client, c_wire, messages))
    assert b"".join(app.data) == b"".join(messages)


@pytest.mark.parametrize("cut", [1, 4, 5, 6, 30, -1])
def test_a_record_cut_anywhere_arrives_once_complete(cut: int) -> None:
    app = _App()
    server, _, client, c_wire = _pair(app)
    wire = _records(client, c_wire, [b"hello", b"world"])
    server.data_received(wire[:cut])
    server.data_received(wire[cut:])
    assert b"".join(app.data) == b"helloworld"


def test_a_record_and_close_notify_together() -> None:
    app = _App()
    server, _, client, c_wire = _pair(app)
    client.write(b"last")
    client.close()  # queues close_notify after the record
    server.data_received(c_wire.take())
    assert app.data == [b"last"] and app.eof == 1


def test_tcp_eof_without_close_notify_after_data() -> None:
    app = _App()
    server, _, client, c_wire = _pair(app)
    server.data_received(_records(client, c_wire, [b"data"]))
    assert server.eof_received() is True  # the app kept the connection open (returned True)
    assert app.data == [b"data"] and app.eof == 1


def test_held_records_and_eof_after_resume() -> None:
    app = _App()
    server, s_wire, client, c_wire = _pair(app)
    server.pause_reading()
    server.data_received(_records(client, c_wire, [b"a", b"b"]))
    server.eof_received()
    assert app.data == [] and app.eof == 0
    server.resume_reading()
    for callback in s_wire.later:
        callback()
    assert b"".join(app.data) == b"ab" and app.eof == 1


def test_the_apps_data_received_is_looked_up_once() -> None:
    app = _App()
    wrapped = _Wrapped(app)
    server, _, client, c_wire = _pair(wrapped)
    for i in range(20):
        server.data_received(_records(client, c_wire, [b"%d" % i]))
    assert len(app.data) == 20
    assert wrapped.lookups <= 1, f"data_received looked up {wrapped.lookups} times for 20 records"


def test_a_context_whose_object_class_changes_read_is_used() -> None:
    calls: list[int] = []

    class Counting(ssl.SSLObject):
        def read(self, len: int = 1024, buffer: Any = None) -> Any:  # ssl.SSLObject.read names it len
            calls.append(len)
            return super().read(len, buffer)

    server_ctx, _ = self_signed_context()
    server_ctx.sslobject_class = Counting
    app = _App()
    server = TLSProtocol(app, server_ctx, server_side=True)
    client = TLSProtocol(_App(), pinned_client_context(), server_side=False, server_hostname="localhost")
    s_wire, c_wire = _Wire(), _Wire()
    server.connection_made(s_wire)  # type: ignore[arg-type]
    client.connection_made(c_wire)  # type: ignore[arg-type]
    for _ in range(10):
        if c_wire.out:
            server.data_received(c_wire.take())
        if s_wire.out:
            client.data_received(s_wire.take())
    server.data_received(_records(client, c_wire, [b"counted"]))
    assert app.data == [b"counted"] and calls
