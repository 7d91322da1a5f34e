"""A closed connection leaves nothing behind: cancelled timers release their callbacks (issue 14).

Before the fix, socklab's own timers (reactor and blocking engines) kept the callback of a
cancelled timer until its deadline: a protocol that armed a 60 s timer and cancelled it in
``connection_lost`` stayed in memory for 60 s after its connection closed - under churn, every
closed connection at once (chat 70 -> 212 MB, the tap 23 -> 178 MB after 10,000 connections).
"""

from __future__ import annotations

import gc
import socket
import threading
import time
import weakref
from typing import Any

import pytest

from socklab.core.protocol import Protocol
from socklab.core.trace import Tracer
from socklab.core.transport import TimerHandle, Transport
from socklab.engines import make_engine
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)

N = 40


class _ArmsALongTimer(Protocol):
    """Arms a 60 s timer per connection (a keep-alive, a registration deadline) and cancels it on close."""

    made: list[weakref.ref[_ArmsALongTimer]] = []
    lock = threading.Lock()

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.timer: TimerHandle = transport.call_later(60.0, self._expired)
        self.payload = bytearray(64 * 1024)  # what a leak would cost, per connection
        with self.lock:
            self.made.append(weakref.ref(self))

    def _expired(self) -> None:
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.cancel()


def _wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def _alive(refs: list[weakref.ref[Any]]) -> int:
    gc.collect()
    return sum(1 for r in refs if r() is not None)


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "traced+idle_timeout"])
def test_closed_connections_are_freed_although_they_armed_a_long_timer(engine: str, traced: bool) -> None:
    _ArmsALongTimer.made = []
    extra: dict[str, Any] = {}
    if traced:  # the trace and the idle sweep must not keep closed connections either
        extra = {"tracer": Tracer(engine=engine), "idle_timeout": 30.0}
    with running_server(_ArmsALongTimer, engine, **extra) as srv:
        for i in range(N):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
                c.sendall(b"%d\n" % i)
                assert c.recv(100)
        refs = _ArmsALongTimer.made
        assert _wait_until(lambda: len(refs) == N and srv.statistics().connections == 0, 20), \
            f"{srv.statistics().connections} connections still open"
        # Every connection is closed: none of their protocols may still be reachable (the old
        # code kept each one in a cancelled timer for 60 s). The threaded engines' reading
        # threads end just after the close: a short wait for them, far below the 60 s timers.
        assert _wait_until(lambda: _alive(refs) == 0, 20), \
            f"{_alive(refs)} of {N} closed connections are still in memory on {engine}"


class _Target:
    def callback(self) -> None:
        pass


@pytest.mark.parametrize("name", ["epoll", "threads", "asyncio", "uvloop"])
def test_a_cancelled_timer_drops_its_callback_at_once(name: str) -> None:
    eng = make_engine(name)
    try:
        target = _Target()
        ref = weakref.ref(target)
        handle = eng.call_later(3600.0, target.callback)
        del target
        handle.cancel()
        gc.collect()
        assert ref() is None, "a cancelled timer still holds its callback"
        handle.cancel()  # twice is harmless
    finally:
        eng.close()


@pytest.mark.parametrize("name", ["epoll", "threads"])
def test_cancelled_timers_do_not_pile_up_in_the_heap(name: str) -> None:
    eng: Any = make_engine(name)
    try:
        keep = [eng.call_later(3600.0, _Target().callback) for _ in range(10)]
        for _ in range(5000):
            eng.call_later(3600.0, _Target().callback).cancel()
        heap = eng._timers if name == "epoll" else eng._clock._heap
        # cancelled entries are compacted away, as asyncio does, rather than kept for an hour
        assert len(heap) < 1000
        assert sum(1 for entry in heap if not entry[2].cancelled) == len(keep)
    finally:
        eng.close()
