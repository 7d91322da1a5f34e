"""The dial's rules (socklab.core.dial), with real sockets on loopback, on each kind of waiter.

Targets are given as addresses here (one port each), so every rule can be shown without a name:
a refused first address, a silent one (a listener whose accept queue is full: the kernel drops
later SYNs, so that connect can only time out - no traffic leaves loopback), the timeout as the
budget of the whole connect, the error line naming every address, the source bound per attempt.
The same Dial runs on the blocking engines' selector, an asyncio loop and the epoll reactor. The
engines' wiring with a real name (``localhost`` -> ``::1``, ``127.0.0.1``) is
tests/runtime/test_connect_fallback.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from socklab.core.dial import ATTEMPT_DELAY, Dial, Target, _SelectorLoop, interleave
from socklab.core.errors import AddressInUse, ConnectionRefused, ConnectTimeout, SocklabError
from socklab.core.settings import ServerSettings
from socklab.core.sockets import Endpoint, connect_tcp
from socklab.core.trace import TraceEvent, Tracer
from socklab.engines import make_engine
from tests.conftest import silent_listener

WAIT = 20.0  # only matters when something is broken
V4, V6 = int(socket.AF_INET), int(socket.AF_INET6)


def test_interleave_alternates_families_from_the_first() -> None:
    a6, b6, c6 = (V6, ("::1", 1), None), (V6, ("::1", 2), None), (V6, ("::1", 3), None)
    a4, b4 = (V4, ("127.0.0.1", 1), None), (V4, ("127.0.0.1", 2), None)
    assert interleave([a6, b6, c6, a4, b4]) == [a6, a4, b6, b4, c6]
    assert interleave([a4, a6, b6]) == [a4, a6, b6]
    assert interleave([a6, b6]) == [a6, b6]
    assert interleave([]) == []


# ---- the places a dial runs --------------------------------------------------------------------------
class Run:
    """One dial's outcome: ``sock`` or ``error``, how long it took, and its trace."""

    def __init__(self, outcome: Any, elapsed: float, events: list[TraceEvent]) -> None:
        self.sock: socket.socket | None = outcome[0] if isinstance(outcome, tuple) else None
        self.error: SocklabError | None = outcome if isinstance(outcome, SocklabError) else None
        self.elapsed, self.events = elapsed, events

    def trace(self, op: str) -> list[str]:
        return [f"{e.peer} {e.detail}" for e in self.events if e.op == op]

    def fd_story(self, fd: int) -> list[str]:
        """The socket/bind/connect/close lines of one fd number, in order (``op detail``)."""
        return [f"{e.op} {e.detail}" for e in self.events if e.fd == fd and e.op in ("socket", "bind", "connect", "close")]


def assert_every_socket_closed(run: Run) -> None:
    """The trace never shows an fd opened twice: each ``socket`` line's fd gets a ``close`` line before the
    next ``socket`` line with that number, and every socket but the winner's is closed by the end."""
    open_fds: set[int] = set()
    for e in run.events:
        if e.op == "socket":
            assert e.fd not in open_fds, f"fd {e.fd} opened again without a close: {lines(run)}"
            open_fds.add(e.fd)  # type: ignore[arg-type]
        elif e.op == "close":
            assert e.fd in open_fds, f"fd {e.fd} closed but not open: {lines(run)}"
            open_fds.discard(e.fd)  # type: ignore[arg-type]
    assert open_fds == ({run.sock.fileno()} if run.sock is not None else set()), lines(run)


def lines(run: Run) -> list[str]:
    return [f"fd={e.fd} {e.op} {e.peer} {e.detail}" for e in run.events]


@pytest.fixture(params=["selector", "asyncio", "epoll"])
def dial(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``dial(targets, timeout=, **kw) -> Run`` on the blocking engines' selector, asyncio, or the reactor."""
    kind = str(request.param)
    opened: list[socket.socket] = []
    stops: list[Any] = []

    def run(targets: list[Target], *, timeout: float | None, **kw: Any) -> Run:
        tracer = Tracer()
        events = tracer.record()
        done: queue.Queue[Any] = queue.Queue()

        def make(waiter: Any) -> Dial:
            return Dial(waiter, targets, timeout=timeout, what="name.test:7", tracer=tracer,
                        on_connected=lambda sock, addr: done.put((sock, addr)), on_failed=done.put, **kw)

        start = time.monotonic()
        if kind == "selector":
            loop = _SelectorLoop()
            d = make(loop)
            d.start()
            loop.run(lambda: d.done)
            loop.close()
        elif kind == "asyncio":
            aloop = asyncio.new_event_loop()
            thread = threading.Thread(target=aloop.run_forever, daemon=True)
            thread.start()
            stops.append(lambda: (aloop.call_soon_threadsafe(aloop.stop), thread.join(WAIT), aloop.close()))
            aloop.call_soon_threadsafe(lambda: make(aloop).start())
        else:
            engine = make_engine("epoll", ServerSettings(idle_timeout=0))
            ready = threading.Event()
            thread = threading.Thread(target=engine.run, kwargs={"ready": ready.set}, daemon=True)
            thread.start()
            assert ready.wait(WAIT)
            stops.append(lambda: (engine.stop(), thread.join(WAIT), engine.close()))
            engine.call_soon_threadsafe(lambda: make(engine).start())
        outcome = done.get(timeout=WAIT)
        if isinstance(outcome, tuple):
            opened.append(outcome[0])
        return Run(outcome, time.monotonic() - start, events)

    yield run
    for sock in opened:
        sock.close()
    for stop in stops:
        stop()


# ---- peers on loopback --------------------------------------------------------------------------------
@contextlib.contextmanager
def listening(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as lst:
        lst.bind((host, 0))
        lst.listen(8)
        yield lst.getsockname()[:2]


@contextlib.contextmanager
def nobody(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """An address nothing listens on (a bound, not listening, socket holds the port meanwhile)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as holder:
        holder.bind((host, 0))
        yield holder.getsockname()[:2]


def silent(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[tuple[str, int]]:
    """A listener that never accepts, its accept queue full: later SYNs are dropped, a connect times out."""
    return silent_listener(host, case="the silent-address case")


def target(addr: tuple[str, int], local: Any = None) -> Target:
    return (V6 if ":" in addr[0] else V4, addr, local)


# ---- the rules ----------------------------------------------------------------------------------------
def test_a_refused_first_address_falls_back_to_the_next(dial: Any) -> None:
    with nobody("::1") as first, listening("127.0.0.1") as second:
        run = dial([target(first), target(second)], timeout=10)
        assert run.error is None and run.sock is not None
        assert run.sock.getpeername()[:2] == second
        assert run.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    connects = run.trace("connect")
    assert any(c.startswith(f"[::1]:{first[1]} failed: Connection refused") for c in connects), connects
    assert connects[-1].startswith(f"127.0.0.1:{second[1]} three-way handshake done"), connects
    assert any(f"trying 127.0.0.1:{second[1]}, the next address" in str(n) for n in run.trace("note"))
    assert_every_socket_closed(run)


def test_a_refused_attempt_is_closed_in_the_trace_before_the_next_one(dial: Any) -> None:
    """The refused socket's fd is free again when the next attempt opens one, often the same number: the trace
    shows socket, connect (refused), close for it - never the same fd opened twice without a close."""
    with nobody("::1") as first, listening("127.0.0.1") as second:
        run = dial([target(first), target(second)], timeout=10)
        assert run.error is None and run.sock is not None
    ops = [e.op for e in run.events if e.op in ("socket", "connect", "close")]
    first_fd = run.events[0].fd
    assert run.events[0].op == "socket" and first_fd is not None
    story = run.fd_story(first_fd)
    if first_fd == run.sock.fileno():  # the number came back for the second socket (it usually does)
        story = story[:story.index("socket AF_INET, SOCK_STREAM")]
    assert story[0] == "socket AF_INET6, SOCK_STREAM", story
    assert story[-2:] == ["connect failed: Connection refused",
                          "close connect failed: ECONNREFUSED - this attempt's socket is closed"], story
    assert ops.index("close") < ops.index("socket", 1), ops  # closed before the second attempt's socket
    close = next(e for e in run.events if e.op == "close")
    assert close.peer == f"[::1]:{first[1]}" and close.level == "syscall"
    assert_every_socket_closed(run)


def test_every_address_refused_is_one_line_naming_them_all(dial: Any) -> None:
    with nobody("::1") as first, nobody("127.0.0.1") as second:
        run = dial([target(first), target(second)], timeout=10)
    assert isinstance(run.error, ConnectionRefused)
    assert str(run.error) == (f"connection refused while connecting to name.test:7 "
                              f"(tried [::1]:{first[1]} and 127.0.0.1:{second[1]})")
    assert "\n" not in str(run.error)
    assert_every_socket_closed(run)
    assert run.trace("close") == [f"[::1]:{first[1]} connect failed: ECONNREFUSED - this attempt's socket is closed",
                                  f"127.0.0.1:{second[1]} connect failed: ECONNREFUSED - this attempt's socket is closed"]


def test_one_address_keeps_the_plain_message(dial: Any) -> None:
    with nobody() as only:
        run = dial([target(only)], timeout=10)
    assert isinstance(run.error, ConnectionRefused)
    assert str(run.error) == "connection refused while connecting to name.test:7"


def test_a_silent_first_address_costs_the_attempt_delay_not_the_timeout(dial: Any) -> None:
    with silent() as first, listening() as second:
        run = dial([target(first), target(second)], timeout=10)
        assert run.error is None and run.sock is not None
        assert run.sock.getpeername()[:2] == second
    assert run.elapsed < ATTEMPT_DELAY + 2.0, run.elapsed  # the budget was 10 s
    notes = run.trace("note")
    assert any("within 250 ms: trying 127.0.0.1" in n for n in notes), notes
    closes = run.trace("close")
    assert run.sock is not None
    assert closes == [f"127.0.0.1:{first[1]} lost the race to fd {run.sock.fileno()}: 127.0.0.1:{second[1]} "
                      "connected first"]
    ops = [e.op for e in run.events]  # the winner's handshake line, then the loser's close
    assert ops.index("close") > max(i for i, op in enumerate(ops) if op == "connect"), lines(run)
    assert_every_socket_closed(run)


def test_the_timeout_is_the_budget_of_the_whole_connect(dial: Any) -> None:
    with silent() as first, silent() as second:
        run = dial([target(first), target(second)], timeout=1.0)
    assert isinstance(run.error, ConnectTimeout)
    assert 0.9 < run.elapsed < 1.8, run.elapsed  # not one timeout per address (2 s)
    assert str(run.error) == (f"timed out while connecting to name.test:7 "
                              f"(tried 127.0.0.1:{first[1]} and 127.0.0.1:{second[1]})")
    assert_every_socket_closed(run)
    assert set(run.trace("close")) == {f"127.0.0.1:{port} the connect is abandoned: no answer within the 1 s "
                                       "connect timeout" for port in (first[1], second[1])}


def test_addresses_the_budget_did_not_reach_are_counted(dial: Any) -> None:
    with silent() as a, silent() as b, nobody() as c, nobody() as d:
        run = dial([target(a), target(b), target(c), target(d)], timeout=0.15, attempt_delay=0.1)
    assert isinstance(run.error, ConnectTimeout), run.error
    m = re.fullmatch(r"timed out while connecting to name\.test:7 \(tried (.*); (\d) more not tried "
                     r"within the 0\.15 s connect timeout\)", str(run.error))
    assert m, run.error
    assert m.group(2) in ("1", "2") and f":{d[1]}" not in m.group(1)
    assert_every_socket_closed(run)


def test_the_most_telling_failure_names_the_error(dial: Any) -> None:
    """A refusal says more than a timeout: the error is ConnectionRefused, each address says what it met."""
    with nobody() as refused, silent() as quiet:
        run = dial([target(quiet), target(refused)], timeout=1.0)
    assert isinstance(run.error, ConnectionRefused), run.error
    assert str(run.error) == (f"connection refused while connecting to name.test:7 (tried 127.0.0.1:{quiet[1]}: "
                              f"timed out, 127.0.0.1:{refused[1]}: connection refused)")
    assert_every_socket_closed(run)


def test_the_source_is_bound_per_attempt_and_a_failed_bind_is_one_failed_attempt(dial: Any) -> None:
    with listening() as server, listening() as taken, nobody("::1") as v6:
        run = dial([target(v6, ("::1", 0)), target(server, ("127.0.0.1", taken[1])),
                    target(server, ("127.0.0.1", 0))], timeout=10)
        assert run.error is None and run.sock is not None
        assert run.sock.getsockname()[0] == "127.0.0.1"
    binds = [e.detail or "" for e in run.events if e.op == "bind"]
    assert len(binds) == 3, binds
    assert binds[0].startswith("source address [::1]:") and "failed" not in binds[0]
    assert binds[1].startswith(f"source address 127.0.0.1:{taken[1]} failed: Address already in use")
    assert binds[2].startswith(f"source address 127.0.0.1:{run.sock.getsockname()[1]}, before connect()")
    assert_every_socket_closed(run)  # the refused [::1] attempt's and the failed bind's sockets too
    assert run.trace("close")[1] == "None bind failed: EADDRINUSE - this socket is closed"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_a_socket_that_connects_to_itself_is_a_refused_attempt(dial: Any) -> None:
    # Found by CI: `--source localhost` bound ::1 to a port the kernel picked - the very port a
    # server listened on at 127.0.0.1 only - and connect([::1]:that port) met its own SYN (a TCP
    # simultaneous open). The dial called that a connection: every byte came back, like an echo.
    # Here the source port is the destination port on purpose, which makes it happen every time.
    port = free_port()
    with listening() as server:
        run = dial([target(("127.0.0.1", port), ("127.0.0.1", port)), target(server)], timeout=10)
        assert run.error is None and run.sock is not None
        assert run.sock.getpeername()[:2] == server  # the next address, not itself
    connects = run.trace("connect")
    assert any(c.startswith(f"127.0.0.1:{port} connected to itself") for c in connects), connects
    assert f"127.0.0.1:{port} connected to itself - this attempt's socket is closed" in run.trace("close")
    assert_every_socket_closed(run)


def test_a_dial_whose_only_address_is_itself_says_so(dial: Any) -> None:
    port = free_port()
    run = dial([target(("127.0.0.1", port), ("127.0.0.1", port))], timeout=10)
    assert isinstance(run.error, ConnectionRefused), run.error
    assert str(run.error) == ("connection refused while connecting to name.test:7: the socket connected to "
                              f"itself (its own address and port were 127.0.0.1:{port}, where nothing listens)")
    assert_every_socket_closed(run)


def test_every_attempt_failing_to_bind_is_the_bind_error(dial: Any) -> None:
    with listening() as server, listening() as taken:
        run = dial([target(server, ("127.0.0.1", taken[1]))], timeout=10)
    assert isinstance(run.error, AddressInUse), run.error
    assert_every_socket_closed(run)


def test_a_cancelled_dial_closes_its_pending_attempt_in_the_trace() -> None:
    with silent() as quiet:
        tracer = Tracer()
        events = tracer.record()
        loop = _SelectorLoop()
        outcome: list[Any] = []
        d = Dial(loop, [target(quiet)], timeout=10, what="name.test:7", tracer=tracer,
                 on_connected=lambda sock, addr: outcome.append(sock), on_failed=outcome.append)
        try:
            d.start()  # the SYN is dropped: pending
            d.cancel()
        finally:
            loop.close()
    assert outcome == []
    fd = events[0].fd
    assert [f"{e.op} {e.detail}" for e in events if e.fd == fd][-1] == \
        "close the connect is abandoned: the dial was cancelled"
    assert_every_socket_closed(Run((None,), 0.0, events))


def test_connect_tcp_uses_the_same_rules() -> None:
    """The blocking helper (the blocking engines, nc): a blocking socket, the budget for the whole connect."""
    with silent() as quiet:
        start = time.monotonic()
        with pytest.raises(ConnectTimeout, match=r"^timed out while connecting to 127\.0\.0\.1:\d+$"):
            connect_tcp(Endpoint(*quiet), timeout=0.5)
        assert time.monotonic() - start < 1.5
    with listening() as server:
        sock = connect_tcp(Endpoint(*server), timeout=5)
        with sock:
            assert sock.getblocking() and sock.gettimeout() is None
            assert sock.getpeername()[:2] == server
