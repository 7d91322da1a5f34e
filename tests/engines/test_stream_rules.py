"""One set of stream rules on every engine, the asyncio/uvloop bridge included (issue 18, step 2).

The reactor and blocking engines took their rules from ``engines/_stream.py`` (StreamCore); the
asyncio/uvloop bridge had its own copy, and where the two differed the loop's rules won. Each test
here held on the reactor and blocking engines and failed on asyncio and uvloop before the bridge
stood on StreamCore too. Real sockets on 127.0.0.1, port 0; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from socklab.core.errors import SocklabError
from socklab.core.protocol import Protocol
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)

WRITTEN = 16 << 20  # far more than the kernel's buffers take from a peer that does not read


@contextlib.contextmanager
def _tolerate_reset() -> Iterator[None]:
    with contextlib.suppress(ConnectionResetError):
        yield


def _read_until_closed(c: socket.socket) -> int:
    got = 0
    with _tolerate_reset():
        while chunk := c.recv(1 << 20):
            got += len(chunk)
    return got


class _PauseBug(Protocol):
    """Writes 16 MiB at once to a peer that does not read yet, then closes; ``pause_writing`` raises."""

    def __init__(self, written: threading.Event) -> None:
        self.written = written

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=64 * 1024)
        chunk = b"x" * 65536
        for _ in range(WRITTEN // len(chunk)):
            self.transport.write(chunk)
        self.transport.close()
        self.written.set()

    def pause_writing(self) -> None:
        raise RuntimeError("a bug in pause_writing")


def test_a_failing_pause_writing_closes_that_connection_and_is_reported(engine: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """StreamCore: a protocol callback that raises is reported and aborts its connection (asyncio's
    loop only logged it and went on writing, so the peer got all 16 MiB)."""
    written = threading.Event()
    with running_server(lambda: _PauseBug(written), engine) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the kernel holds far less than 16 MiB
        c.settimeout(20)
        c.connect(("127.0.0.1", srv.port))
        assert written.wait(20), "the server never finished writing"  # not read meanwhile: it had to queue
        assert _read_until_closed(c) < WRITTEN
    assert any("_PauseBug.pause_writing raised RuntimeError" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


class _AbortOnData(Protocol):
    """Aborts on its first bytes and notes how often ``connection_lost`` had run when abort() returned."""

    def __init__(self, seen: list[int], done: threading.Event) -> None:
        self.seen, self.done, self.lost = seen, done, 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.abort()
        self.seen.append(self.lost)
        self.transport.abort()  # a second abort changes nothing
        self.transport.close()
        self.seen.append(self.lost)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost += 1
        self.seen.append(-1 if exc is not None else 0)
        self.done.set()


def test_abort_calls_connection_lost_once_before_it_returns(engine: str) -> None:
    """StreamCore: ``abort`` lets go of the socket and calls ``connection_lost(None)`` at once, exactly
    once (the bridge used to leave it to the loop's next turn)."""
    seen: list[int] = []
    done = threading.Event()
    with running_server(lambda: _AbortOnData(seen, done), engine) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        c.sendall(b"bye")
        assert _read_until_closed(c) == 0
        assert done.wait(10)
    # connection_lost(None) ran inside the first abort(); the later calls added nothing
    assert seen == [0, 1, 1], seen


class _HalfCloser(Protocol):
    """Reads only when told; answers the peer's FIN with its own (``write_eof``)."""

    def __init__(self, made: threading.Event, lost: threading.Event, box: list[Any]) -> None:
        self.made, self.lost, self.box = made, lost, box

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.pause_reading()
        self.box.append(self)
        self.made.set()

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.box.append(exc)
        self.lost.set()


def test_a_write_eof_that_meets_a_reset_is_the_connections_error_not_a_bug(engine: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The peer sent FIN and then RST before the server read either: the server reads the EOF, its
    ``write_eof`` meets ENOTCONN. That is the connection's end (``connection_lost`` gets the
    translated error), not a bug in ``eof_received`` to report - on every engine. (Found under
    callgrind, where the server is slow enough for the benchmark's closing clients to do this.)"""
    made, lost = threading.Event(), threading.Event()
    box: list[Any] = []
    with running_server(lambda: _HalfCloser(made, lost, box), engine) as srv:
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        assert made.wait(10)
        proto = box[0]
        c.shutdown(socket.SHUT_WR)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST: the server's socket is closed by the kernel, its FIN still unread
        deadline = time.monotonic() + 10
        while proto.transport.tcp_state() not in ("CLOSE", None) and time.monotonic() < deadline:
            time.sleep(0.01)  # (loopback: the RST is normally processed before close() returns)
        srv.engine.call_soon_threadsafe(proto.transport.resume_reading)
        assert lost.wait(10), "connection_lost never came"
    # the translated error (uvloop's shutdown() is asynchronous: its loop ends the connection as closed)
    assert len(box) == 2 and (isinstance(box[1], SocklabError) or (engine == "uvloop" and box[1] is None)), box
    assert not [r.getMessage() for r in caplog.records if "raised" in r.getMessage()]


class _PausedFromTheStart(Protocol):
    def __init__(self, box: list[Any], made: threading.Event) -> None:
        self.box, self.made, self.got = box, made, b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.pause_reading()
        self.box.append(self)
        self.made.set()

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool:
        self.got += b"<EOF>"
        return False


def test_pause_reading_in_connection_made_holds_the_peers_bytes(engine: str) -> None:
    """uvloop starts reading only after ``connection_made`` returned, so a pause made there was lost
    and the bytes (and the FIN) came anyway; now what uvloop reads before the pause takes is held
    and handed over, in order, on ``resume_reading``. The barrier: a round trip on a second
    connection of the same loop (its readable event cannot come before the first's)."""
    from socklab.apps.echo.protocol import EchoProtocol

    box: list[Any] = []
    made = threading.Event()
    first = True

    def factory() -> Protocol:
        nonlocal first
        if first:
            first = False
            return _PausedFromTheStart(box, made)
        return EchoProtocol()

    with running_server(factory, engine) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as paused:
        assert made.wait(10)
        paused.sendall(b"held")
        paused.shutdown(socket.SHUT_WR)
        if engine != "iterative":  # (it serves one connection at a time: no second one to ask)
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as other:
                other.sendall(b"barrier")
                assert other.recv(100) == b"barrier"
        proto = box[0]
        assert proto.got == b"", "bytes arrived while reading was paused"
        srv.engine.call_soon_threadsafe(proto.transport.resume_reading)
        deadline = time.monotonic() + 10
        while proto.got != b"held<EOF>" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proto.got == b"held<EOF>"
        assert paused.recv(10) == b""  # and the server closed, as eof_received asked
