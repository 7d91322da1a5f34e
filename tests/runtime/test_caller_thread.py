"""A BlockingClient that turns a reactor engine on the caller's thread (``background=False``).

On select, poll and epoll no engine thread is started: the protocol's callbacks run on the
thread that waits, timers fire while it waits, waits end at their timeout, and
``call_soon_threadsafe`` from another thread wakes the waiting thread's poll(). Several threads
may wait at once (one turns the loop, the others are told when their condition holds). Engines
that cannot run on the caller keep their thread. Real sockets on loopback, port 0; every wait
is bounded.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.errors import ClosedError, OperationTimeout, UsageError
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint
from socklab.engines import make_engine
from socklab.runtime.client import BlockingClient, run_client
from tests.conftest import blocked_in_poll, running_server, wait_until

WAIT = 20.0  # only matters when something is broken
REACTORS = ["select", "poll", "epoll"]


class Echoed(Protocol):
    """Notes the thread of every callback; ``enough`` once ``want`` bytes came back."""

    def __init__(self, want: int = 0) -> None:
        self.want = want
        self.got = bytearray()
        self.threads: set[int] = set()
        self.enough = threading.Event()
        self.lost = threading.Event()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.threads.add(threading.get_ident())

    def data_received(self, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.got += data
        if len(self.got) >= self.want:
            self.enough.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.threads.add(threading.get_ident())
        self.lost.set()


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


@pytest.mark.parametrize("engine", REACTORS)
def test_callbacks_run_on_the_waiting_thread_and_no_thread_starts(engine: str) -> None:
    with running_server(EchoProtocol, engine) as srv:
        before = _threads()
        with BlockingClient(engine=engine, background=False) as client:
            assert client.runs_on_caller
            assert not any(n.startswith("socklab-client") for n in _threads() - before)
            handle = client.connect(Endpoint("127.0.0.1", srv.port), lambda: Echoed(100_000))
            proto = handle.protocol
            assert proto is not None
            client.call(lambda: handle.transport.write(b"y" * 100_000))
            assert client.wait(proto.enough, WAIT)
            client.call(handle.transport.close)
            handle.wait_closed(WAIT)
        assert bytes(proto.got) == b"y" * 100_000
        assert proto.threads == {threading.get_ident()}


@pytest.mark.parametrize("engine", REACTORS)
def test_waits_end_at_their_timeout(engine: str) -> None:
    with running_server(EchoProtocol, engine) as srv, BlockingClient(engine=engine, background=False) as client:
        handle = client.connect(Endpoint("127.0.0.1", srv.port), Echoed)
        never = threading.Event()
        start = time.monotonic()
        assert not client.wait(never, 0.3)
        assert not client.run_until(never.is_set, 0)
        with pytest.raises(OperationTimeout):
            handle.wait_closed(0.2)
        assert 0.45 <= time.monotonic() - start < 5.0


@pytest.mark.parametrize("engine", REACTORS)
def test_timers_fire_while_the_caller_waits(engine: str) -> None:
    with running_server(EchoProtocol, engine) as srv, BlockingClient(engine=engine, background=False) as client:
        handle = client.connect(Endpoint("127.0.0.1", srv.port), Echoed)
        fired: list[tuple[int, float]] = []
        done = threading.Event()
        start = time.monotonic()

        def tick() -> None:
            fired.append((threading.get_ident(), time.monotonic() - start))
            done.set()

        client.call(lambda: handle.transport.call_later(0.2, tick))
        time.sleep(0.3)  # nobody waits: the timer is due but the loop does not turn
        assert not fired
        assert client.wait(done, WAIT)
        assert fired[0][0] == threading.get_ident() and fired[0][1] >= 0.2


@pytest.mark.parametrize("engine", REACTORS)
def test_call_soon_threadsafe_from_another_thread_wakes_the_waiting_thread(engine: str) -> None:
    with running_server(EchoProtocol, engine) as srv, BlockingClient(engine=engine, background=False) as client:
        client.connect(Endpoint("127.0.0.1", srv.port), Echoed)
        ran: list[int] = []
        done = threading.Event()
        waiting = threading.Event()

        def note() -> None:
            ran.append(threading.get_ident())
            done.set()

        main = threading.get_native_id()

        def poster() -> None:
            waiting.wait(WAIT)
            # the main thread's wait has reached poll() (with no timer to end it): its wchan says so
            wait_until(lambda: blocked_in_poll(main), "the main thread to wait in poll()", WAIT)
            client.engine.call_soon_threadsafe(note)

        t = threading.Thread(target=poster)
        t.start()
        client.call(waiting.set)
        start = time.monotonic()
        assert client.wait(done, WAIT)
        t.join(WAIT)
        assert ran == [threading.get_ident()]
        assert time.monotonic() - start < WAIT / 2


@pytest.mark.parametrize("engine", REACTORS)
def test_many_threads_share_one_client(engine: str) -> None:
    """Leader and followers: each thread's own round trips complete, whoever turns the loop."""
    with running_server(EchoProtocol, engine) as srv, BlockingClient(engine=engine, background=False) as client:
        handles = [client.connect(Endpoint("127.0.0.1", srv.port), lambda: Echoed(50 * 1000)) for _ in range(4)]
        errors: list[BaseException] = []

        def worker(handle: Any) -> None:
            try:
                proto: Echoed = handle.protocol
                for i in range(50):
                    client.post(lambda: handle.transport.write(b"z" * 1000))
                    want = (i + 1) * 1000
                    assert client.run_until(lambda: len(proto.got) >= want, WAIT)  # noqa: B023 - called here
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(h,)) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 2)
        assert not errors
        assert all(h.protocol is not None and len(h.protocol.got) == 50 * 1000 for h in handles)


@pytest.mark.parametrize("engine", REACTORS)
def test_close_from_another_thread_ends_the_wait(engine: str) -> None:
    with running_server(EchoProtocol, engine) as srv:
        client = BlockingClient(engine=engine, background=False)
        handle = client.connect(Endpoint("127.0.0.1", srv.port), Echoed)
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(client.wait(threading.Event(), WAIT)))
        t.start()
        assert t.native_id is not None
        native_id = t.native_id
        wait_until(lambda: blocked_in_poll(native_id), "the thread to wait in poll()", WAIT)
        start = time.monotonic()
        client.close()
        t.join(WAIT)
        assert result == [False] and time.monotonic() - start < WAIT / 2
        assert handle.protocol is not None and handle.protocol.lost.is_set()
        with pytest.raises(ClosedError):
            client.call(lambda: None)


@pytest.mark.parametrize("engine", REACTORS)
def test_a_callback_may_close_but_not_wait(engine: str) -> None:
    seen: list[BaseException] = []

    class Closer(Echoed):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            try:
                client.wait(threading.Event(), 1)
            except UsageError as exc:
                seen.append(exc)
            client.close()

    with running_server(EchoProtocol, engine) as srv:
        client = BlockingClient(engine=engine, background=False)
        handle = client.connect(Endpoint("127.0.0.1", srv.port), Closer)
        client.call(lambda: handle.transport.write(b"bye"))
        assert not client.wait(threading.Event(), WAIT)  # ends once the callback closed the client
        assert handle.closed.is_set() and [type(e) for e in seen] == [UsageError]


def test_engines_on_their_own_thread_keep_it() -> None:
    for name in ("threads", "asyncio"):
        with BlockingClient(engine=name, background=False) as client:
            assert not client.runs_on_caller
            with pytest.raises(UsageError):
                client.run_until(lambda: False, 0.1)


def test_run_client_starts_no_thread() -> None:
    with running_server(EchoProtocol) as srv:
        names: list[set[str]] = []

        class Once(Echoed):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                names.append(_threads())
                transport.write(b"x")

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                self.transport.close()

        proto = run_client(Endpoint("127.0.0.1", srv.port), Once, timeout=WAIT)
        assert proto.threads == {threading.get_ident()}
        assert not any(n.startswith("socklab-client") for n in names[0])


@pytest.mark.parametrize("engine", REACTORS)
def test_reactor_run_until(engine: str) -> None:
    """The engine's own API: predicate first, a turn at least, the deadline, and one thread at a time."""
    reactor = make_engine(engine)
    try:
        assert reactor.runs_on_caller
        assert reactor.run_until(lambda: True, 0)
        hits: list[int] = []
        reactor.call_later(0.05, lambda: hits.append(1))
        assert reactor.run_until(lambda: bool(hits), WAIT)
        start = time.monotonic()
        assert not reactor.run_until(lambda: False, 0.1)
        assert time.monotonic() - start >= 0.1
        nested: list[BaseException] = []

        def inner() -> None:
            try:
                reactor.run_until(lambda: True is False, 0)
            except RuntimeError as exc:
                nested.append(exc)

        reactor.call_soon_threadsafe(inner)
        reactor.run_until(lambda: bool(nested), WAIT)
        assert len(nested) == 1
    finally:
        reactor.close()


@pytest.mark.parametrize("background", [False, True])
def test_wait_with_start_runs_it_on_the_engine_first(background: bool) -> None:
    """``wait(event, start=fn)``: a request and the wait for its answer, in one hold of the loop."""
    with running_server(EchoProtocol) as srv, BlockingClient(background=background) as client:
        handle = client.connect(Endpoint("127.0.0.1", srv.port), lambda: Echoed(5))
        proto = handle.protocol
        assert proto is not None
        ran: list[int] = []

        def request() -> None:
            ran.append(threading.get_ident())
            handle.transport.write(b"hello")

        assert client.wait(proto.enough, WAIT, start=request)
        assert bytes(proto.got) == b"hello"
        assert (ran == [threading.get_ident()]) is not background
