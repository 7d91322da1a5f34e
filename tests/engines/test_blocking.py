"""The blocking engines' own promises: pool overflow, one client at a time, prompt stop, EMFILE, slow readers.

The shared contract is tests/engines/test_behaviour.py; these tests pin what only the iterative,
threads and pool engines do. Real sockets on 127.0.0.1, port 0, readiness from ``Server.start()``
or from a trace sink; no sleeps for readiness.
"""

from __future__ import annotations

import logging
import os
import resource
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.protocol import Protocol
from socklab.core.settings import ServerSettings
from socklab.core.sockets import Endpoint, open_tcp_listener
from socklab.core.trace import TraceEvent, Tracer
from socklab.core.transport import Transport
from socklab.engines import make_engine
from socklab.engines.blocking import BACKOFF_MAX, RECV_SIZE
from socklab.runtime import Server
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)

BLOCKING = ["iterative", "threads", "pool"]
OVERFLOW = ServerSettings().overflow_message


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = sock.recv(n - len(got))
        assert data, f"EOF after {len(got)} of {n} bytes"
        got += data
    return bytes(got)


def connect(srv: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


# ---- pool: the overflow policy -------------------------------------------------------------------
def test_pool_refuses_when_its_queue_is_full_and_serves_the_rest() -> None:
    with running_server(EchoProtocol, "pool", workers=1, queue_size=1) as srv:
        served = connect(srv)
        served.sendall(b"a")
        assert served.recv(10) == b"a"  # the only worker now holds this connection
        queued = connect(srv)  # accepted, waits in the queue (accept order is the backlog's order)
        queued.sendall(b"waiting")
        with connect(srv) as extra:  # the queue is full: the overflow message, then EOF at once
            assert recv_all(extra) == OVERFLOW
        served.sendall(b"still served")
        assert recv_exactly(served, 12) == b"still served"
        stats = srv.statistics()
        assert stats.refused == 1 and stats.extra["queue_full"] == 1 and stats.accepted == 2
        served.close()  # frees the worker: the queued client is served now, with its early bytes
        assert recv_exactly(queued, 7) == b"waiting"
        queued.close()
    assert "overflow policy" in make_engine("pool").info.limits


def test_pool_says_once_that_all_workers_are_busy(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="socklab"), \
            running_server(EchoProtocol, "pool", workers=1, queue_size=4) as srv:
        served = connect(srv)
        served.sendall(b"a")
        assert served.recv(10) == b"a"
        assert not [r for r in caplog.records if "workers are busy" in r.getMessage()]
        waiting = [connect(srv) for _ in range(2)]
        deadline = time.monotonic() + 10
        while srv.statistics().extra.get("queued", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.statistics().extra["queued"] == 2
        busy = [r.getMessage() for r in caplog.records if "workers are busy" in r.getMessage()]
        assert len(busy) == 1 and "raise --workers" in busy[0]  # said once, not per connection
        served.close()
        for s in waiting:
            s.sendall(b"b")
            assert recv_exactly(s, 1) == b"b"
            s.close()


def test_pool_serves_at_most_workers_clients_at_once() -> None:
    active: list[int] = [0, 0]  # now, most

    class Counting(EchoProtocol):
        def connection_made(self, transport: Transport) -> None:
            super().connection_made(transport)
            active[0] += 1
            active[1] = max(active)

        def connection_lost(self, exc: BaseException | None) -> None:
            active[0] -= 1

    with running_server(Counting, "pool", workers=3, queue_size=10) as srv:
        socks = [connect(srv) for _ in range(8)]
        for i, s in enumerate(socks):
            s.sendall(b"%d" % i)
        for i in range(3):  # three workers: the first three clients are served together...
            assert recv_exactly(socks[i], 1) == b"%d" % i
        assert active == [3, 3]  # ...and nobody else yet
        for i, s in enumerate(socks):  # clients leave one by one: each frees a worker for the next
            if i >= 3:
                assert recv_exactly(s, 1) == b"%d" % i
            s.close()
    assert active[1] == 3


# ---- iterative: one client at a time -------------------------------------------------------------
def test_iterative_serves_clients_strictly_one_after_another() -> None:
    log: list[str] = []

    class Logging(EchoProtocol):
        def connection_made(self, transport: Transport) -> None:
            super().connection_made(transport)
            log.append(f"made {transport.get_extra_info('peername')[1]}")

        def connection_lost(self, exc: BaseException | None) -> None:
            log.append(f"lost {self.transport.get_extra_info('peername')[1]}")

    with running_server(Logging, "iterative") as srv:
        clients = [connect(srv) for _ in range(3)]
        ports = [c.getsockname()[1] for c in clients]
        for c in clients:
            c.sendall(b"hi")  # all three are connected (in the backlog) and have sent
        for c in clients:
            assert recv_exactly(c, 2) == b"hi"
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b""  # served, then closed: only now is the next one accepted
            c.close()
        assert srv.statistics().accepted == 3
    assert log == [f"{what} {p}" for p in ports for what in ("made", "lost")]


def test_iterative_keeps_serving_its_client_after_close_listeners() -> None:
    with running_server(EchoProtocol, "iterative") as srv:
        c = connect(srv)
        c.sendall(b"one")
        assert c.recv(10) == b"one"
        done = threading.Event()
        srv.call_soon_threadsafe(lambda: (srv.engine.close_listeners(), done.set()))
        assert done.wait(5)
        with pytest.raises(ConnectionRefusedError):  # the kernel refuses at once: nobody listens
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
        c.sendall(b"two")
        assert c.recv(10) == b"two"
        c.close()


# ---- stop() and close_listeners() interrupt a waiting accept -------------------------------------
@pytest.mark.parametrize("name", BLOCKING)
def test_stop_unblocks_the_accept_loop(name: str) -> None:
    engine = make_engine(name, ServerSettings())
    sock = open_tcp_listener("127.0.0.1", 0)
    engine.serve_stream(sock, EchoProtocol)
    ready = threading.Event()
    runner = threading.Thread(target=engine.run, kwargs={"ready": ready.set}, name="test-engine")
    runner.start()
    try:
        assert ready.wait(5)
        engine.stop()
        runner.join(5)
        assert not runner.is_alive(), "stop() did not interrupt the engine thread waiting for connections"
    finally:
        engine.stop()
        runner.join(5)
        engine.close()
    assert sock.fileno() == -1  # the listening socket is closed


@pytest.mark.parametrize("name", BLOCKING)
def test_close_listeners_from_another_thread_refuses_new_clients(name: str) -> None:
    with running_server(EchoProtocol, name) as srv:
        port = srv.port
        srv.engine.close_listeners()  # from this (foreign) thread, while the engine waits in poll()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


# ---- EMFILE: back off, no busy loop, recover -----------------------------------------------------
def _fill_descriptor_table() -> tuple[list[int], int]:
    """Occupy every free descriptor number below the highest one in use; returns them and the limit
    that makes the next descriptor fail with EMFILE."""
    fillers = []
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    while True:
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd > highest:
            os.close(fd)
            return fillers, fd
        fillers.append(fd)


@pytest.mark.parametrize("name", BLOCKING)
def test_emfile_backs_off_then_recovers(name: str) -> None:
    backing_off = threading.Event()
    tracer = Tracer(name)

    def sink(event: TraceEvent) -> None:
        if event.op == "note" and "EMFILE" in (event.detail or ""):
            backing_off.set()

    tracer.add_sink(sink)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with running_server(EchoProtocol, name, tracer=tracer) as srv:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # its descriptor exists before the limit
        client.settimeout(10)
        fillers: list[int] = []
        try:
            fillers, limit = _fill_descriptor_table()
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            client.connect(("127.0.0.1", srv.port))  # completes in the kernel; accept() gets EMFILE
            client.sendall(b"are you there")
            assert backing_off.wait(10), "the server never hit EMFILE"
            since = time.monotonic()
            time.sleep(1.0)  # the subject: a second out of descriptors, count how often accept() was retried
            attempts = srv.statistics().extra["accept_backoffs"]
            elapsed = time.monotonic() - since  # a loaded machine may sleep longer than asked: 10 per second
            assert 1 <= attempts <= 10 * max(1.0, elapsed), f"{attempts} accept retries in {elapsed:.2f} s: a busy loop"
            for fd in fillers:  # descriptors free up...
                os.close(fd)
            fillers = []
            freed = time.monotonic()
            assert recv_exactly(client, 13) == b"are you there"  # ...and the waiting client is served
            assert time.monotonic() - freed < BACKOFF_MAX + 2.0  # by design within BACKOFF_MAX; slack for load
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.close()


# ---- slow readers --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["threads", "pool"])
def test_a_client_that_stops_reading_is_bounded_and_does_not_block_others(name: str) -> None:
    limit = 128 * 1024
    with running_server(EchoProtocol, name, max_buffer=limit) as srv:
        slow = connect(srv)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.setblocking(False)
        sent = bytearray()
        chunk = os.urandom(65536)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # push until the server stops reading us
            try:
                sent += chunk[: slow.send(chunk)]
            except BlockingIOError:  # wait for room (an event); none for 0.5 s: the server stopped reading
                if not select.select([], [slow], [], 0.5)[1]:
                    break
        assert len(sent) < 32 * 1024 * 1024, "the server kept reading a peer that does not read"
        conns: list[Any] = list(srv.engine.connections)
        assert len(conns) == 1 and conns[0].get_write_buffer_size() <= limit + RECV_SIZE
        with connect(srv) as other:  # the stuck connection holds no lock another client needs
            for i in range(20):
                other.sendall(b"ping %d" % i)
                assert recv_exactly(other, len(b"ping %d" % i)) == b"ping %d" % i
        slow.setblocking(True)
        slow.settimeout(10)
        slow.shutdown(socket.SHUT_WR)
        assert recv_all(slow) == bytes(sent)  # reading resumes: everything comes back, in order
        slow.close()


# ---- lifecycle -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BLOCKING)
def test_no_thread_or_socket_survives_shutdown(name: str) -> None:
    before = set(threading.enumerate())
    srv = Server(ServerSettings(engine=name))
    srv.listen(EchoProtocol)
    srv.start()
    idle = connect(srv)  # left open: the shutdown must close it
    busy = connect(srv)
    busy.sendall(b"x" * 10)
    if name == "iterative":
        idle.sendall(b"x")
        assert idle.recv(1) == b"x"
    srv.shutdown(timeout=0.5)
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leftover, f"threads still running after shutdown: {leftover}"
    assert not srv.engine.connections
    for s in (idle, busy):
        s.settimeout(5)
        try:
            assert s.recv(100) in (b"", b"x" * 10, b"x")
        except ConnectionResetError:
            pass
        s.close()


@pytest.mark.parametrize("name", BLOCKING)
def test_connection_threads_are_named_and_daemonic(name: str) -> None:
    seen: list[threading.Thread] = []

    class Spy(EchoProtocol):
        def data_received(self, data: bytes) -> None:
            seen.append(threading.current_thread())
            super().data_received(data)

    with running_server(Spy, name) as srv, connect(srv) as c:
        c.sendall(b"who")
        assert c.recv(10) == b"who"
    want = {"iterative": "socklab-iterative", "threads": "conn-", "pool": "pool-worker-"}[name]
    assert seen[0].name.startswith(want) and seen[0].daemon


# ---- clients and timers --------------------------------------------------------------------------
class _Client(Protocol):
    def __init__(self, result: list[Any], done: threading.Event) -> None:
        self.result, self.done = result, done

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(b"hello")
        transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.result.append(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.result.append(exc)
        self.done.set()


@pytest.mark.parametrize("name", BLOCKING)
def test_connect_stream_runs_a_client_protocol(name: str, tmp_path: Path) -> None:
    result: list[Any] = []
    done = threading.Event()
    with running_server(EchoProtocol, "epoll") as echo, running_server(EchoProtocol, name) as srv:
        srv.engine.connect_stream(Endpoint("127.0.0.1", echo.port), lambda: _Client(result, done))
        assert done.wait(10)
        assert b"".join(r for r in result if isinstance(r, bytes)) == b"hello" and result[-1] is None
        errors: list[BaseException] = []
        failed = threading.Event()
        srv.engine.connect_stream(Endpoint(unix=str(tmp_path / "nobody.sock")), EchoProtocol,
                                  on_error=lambda exc: (errors.append(exc), failed.set()))
        assert failed.wait(10) and "connecting" in str(errors[0])


@pytest.mark.parametrize("name", BLOCKING)
def test_timers_run_in_order_under_the_engine_lock(name: str) -> None:
    engine = make_engine(name, ServerSettings())
    ran: list[tuple[str, bool]] = []
    done = threading.Event()

    def note(tag: str) -> None:
        ran.append((tag, engine.lock._is_owned()))  # type: ignore[attr-defined]
        if tag == "last":
            done.set()

    try:
        cancelled = engine.call_later(0.3, lambda: note("cancelled"))
        cancelled.cancel()
        engine.call_later(0.6, lambda: note("last"))
        engine.call_later(0.1, lambda: note("second"))
        engine.call_soon_threadsafe(lambda: note("first"))
        assert done.wait(5)
    finally:
        engine.close()
    assert ran == [("first", True), ("second", True), ("last", True)]


# ---- writes from other threads keep each stream's order ------------------------------------------
class _Broadcast(Protocol):
    """Every complete line from any client is written to every client (a tiny chat hub)."""

    members: list[Transport]
    expected: int
    joined: threading.Event

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.members.append(transport)
        self.pending = b""
        if len(self.members) == self.expected:
            self.joined.set()

    def data_received(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            for member in self.members:
                member.write(line + b"\n")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.members.remove(self.transport)


@pytest.mark.parametrize("name", ["threads", "pool"])
@pytest.mark.parametrize("max_buffer", [256 * 1024, 2048], ids=["big-buffer", "tiny-buffer"])
def test_broadcast_from_many_threads_keeps_every_stream_in_order(name: str, max_buffer: int) -> None:
    clients, lines = 6, 300
    members: list[Transport] = []
    joined = threading.Event()
    factory = type("Hub", (_Broadcast,), {"members": members, "expected": clients, "joined": joined})
    with running_server(factory, name, max_buffer=max_buffer, workers=clients) as srv:
        socks = [connect(srv) for _ in range(clients)]
        assert joined.wait(10)

        def talk(i: int) -> None:
            for j in range(lines):
                socks[i].sendall(b"%d %d\n" % (i, j))

        talkers = [threading.Thread(target=talk, args=(i,)) for i in range(clients)]
        for t in talkers:
            t.start()
        for s in socks:
            want = sum(len(b"%d %d\n" % (i, j)) for i in range(clients) for j in range(lines))
            got = recv_exactly(s, want).split(b"\n")[:-1]
            for i in range(clients):
                assert [line for line in got if line.startswith(b"%d " % i)] == \
                    [b"%d %d" % (i, j) for j in range(lines)]
        for t in talkers:
            t.join(10)
        for s in socks:
            s.close()


# ---- the reply sent without the lock: what other threads do meanwhile stays in order -------------
@pytest.mark.parametrize("direct", [False, True], ids=["callback", "direct-echo"])
@pytest.mark.parametrize("partial", [False, True], ids=["whole-send", "partial-send"])
@pytest.mark.parametrize("meanwhile", ["write", "write_eof", "close"])
def test_output_queued_during_the_unlocked_reply_keeps_its_order(
        monkeypatch: pytest.MonkeyPatch, partial: bool, meanwhile: str, direct: bool) -> None:
    """direct-echo: data_received *is* transport.write, so the reading thread sends without ever
    taking the engine lock; what another thread does meanwhile must still queue behind it."""
    in_send, release = threading.Event(), threading.Event()
    real_send = socket.socket.send

    def send(self: socket.socket, data: Any, flags: int = 0) -> int:
        if bytes(data) == b"reply-1":  # the reading thread's reply, sent without the engine lock
            in_send.set()
            assert release.wait(10)
            if partial:
                return real_send(self, bytes(data)[:3], flags)
        return real_send(self, data, flags)

    monkeypatch.setattr(socket.socket, "send", send)
    transports: list[Transport] = []

    class Replier(Protocol):
        def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
            self.transport = transport
            transports.append(transport)
            if direct:
                self.data_received = transport.write  # type: ignore[method-assign]

        def data_received(self, data: bytes) -> None:
            self.transport.write(b"reply-1")

        def eof_received(self) -> bool:
            return True

    with running_server(Replier, "threads") as srv, connect(srv) as c:
        c.sendall(b"reply-1" if direct else b"go")
        assert in_send.wait(10)
        done = threading.Event()

        def other_thread() -> None:  # runs on the timer thread while the reply is in flight
            t = transports[0]
            if meanwhile == "write":
                t.write(b"other-2")
            elif meanwhile == "write_eof":
                t.write_eof()
            else:
                t.close()
            done.set()

        srv.call_soon_threadsafe(other_thread)
        assert done.wait(10)
        release.set()
        expected = b"reply-1other-2" if meanwhile == "write" else b"reply-1"
        assert recv_exactly(c, len(expected)) == expected
        if meanwhile != "write":
            assert c.recv(10) == b""  # the FIN comes after the reply, never before


# ---- the untraced echo shortcut: data_received *is* transport.write ------------------------------
@pytest.mark.parametrize("name", BLOCKING)
def test_untraced_echo_shortcut_returns_every_byte_in_order_then_half_closes(name: str) -> None:
    """Untraced EchoProtocol makes data_received the transport's write; the reading thread then
    sends each message itself. Sizes cross the 16 KiB first buffer and RECV_SIZE, several are
    in flight at once, and the client's FIN must come back after the last byte."""
    payload = b"".join(bytes([i % 251]) * size for i, size in
                       enumerate([1, 100, 16 * 1024, 16 * 1024 + 1, RECV_SIZE, 3 * RECV_SIZE + 7, 5]))
    with running_server(EchoProtocol, name) as srv, connect(srv) as sock:
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(recv_all(sock)))
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(30)
        assert not reader.is_alive()
        assert got == [payload]
