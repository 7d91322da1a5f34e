"""A reactor engine turned by the threads that wait for it: ``BlockingClient(background=False)``.

Why this exists: a blocking client that runs its engine on a thread of its own pays a thread
hand-off for every message - the caller wakes the engine to send, the engine wakes the caller
with the answer (the RPC client measured 0.79-0.94x the client it replaced). A blocking client
over a reactor should do what asyncio's ``run_until_complete`` does: turn the loop on the
caller's thread while the caller waits (``Reactor.run_until``), so the request is written and
the answer read on the thread that wants it. (A portal to a loop on another thread - trio's
``from_thread``, Twisted's ``blockingCallFromThread`` - is the hand-off this avoids.)

The engine is shared by every thread that uses the client, so one thread turns the loop at a
time (it holds ``_driving``): the leader. Another thread that waits is a follower: it sleeps on
a condition until the leader finished a turn (its own condition may hold now: the leader read its
answer) or let go of the loop (then it takes it). A follower counts itself and wakes the leader
once, so the leader reads the count without a lock after each turn and cannot miss it.
``call_soon_threadsafe`` from any thread wakes whichever thread is inside ``poll()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from socklab.core.errors import UsageError
from socklab.engines import Engine

__all__ = ["CallerLoop"]


def _nothing() -> None:
    """Wakes the thread turning the loop (its next turn reads the followers and the closing flag)."""


def _never() -> bool:
    return False


class CallerLoop:
    """``engine`` (``runs_on_caller``) turned by whichever thread waits; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._driving = threading.Lock()  # held by the thread turning the loop (or running fn on it)
        self._turn_lock = threading.Lock()
        self._turn = threading.Condition(self._turn_lock)  # followers wait here for a turn's end
        self._followers = 0
        self._driver: int | None = None
        self.closing = False  # close() was asked: the engine closes as the loop is let go
        self.closed = False  # the engine is closed

    def on_loop_thread(self) -> bool:
        """Is the calling thread the one turning the loop (a callback, or a function run on it)?"""
        return self._driver == threading.get_ident()

    # ---- waiting -----------------------------------------------------------------------------------
    def run_until(self, predicate: Callable[[], bool], timeout: float | None = None,
                  start: Callable[[], None] | None = None) -> bool:
        """Turn the loop (or follow the thread that does) until ``predicate()``; ``False`` after ``timeout`` s.

        ``start``: run on the engine first - in the same hold of the loop when this thread takes
        it, else queued for the thread turning it. A close ends the wait at once.

        Raises:
            UsageError: called from the thread turning the loop (a callback waiting for its own engine).
        """
        if start is None and predicate():
            return True
        if self._driver == threading.get_ident():
            raise UsageError(f"a callback of the {self.engine.name} engine cannot wait for it: the engine "
                             "runs on this very thread")
        deadline = None if timeout is None else time.monotonic() + timeout
        if start is not None and self._driving.acquire(blocking=False):  # ours: start, then turn
            if not self._took():
                return predicate()
            try:
                start()
            except Exception as exc:
                self.engine.report_error(exc, f"callback {start!r}")
            except BaseException:
                self.let_go()
                raise
        else:
            if start is not None:
                self.engine.call_soon_threadsafe(start)  # for the thread turning the loop
            if not self._take(predicate, deadline):
                return predicate()

        def turned() -> bool:  # after each turn: the followers look at their own conditions; ours decides
            if self._followers:
                with self._turn_lock:
                    self._turn.notify_all()
            return self.closing or predicate()

        try:
            held = self.engine.run_until(turned, None if deadline is None else max(0.0, deadline - time.monotonic()))
        finally:
            self.let_go()
        return (held and not self.closing) or predicate()

    def _take(self, predicate: Callable[[], bool], deadline: float | None) -> bool:
        """Become the thread that turns the loop; ``False`` when ``predicate()`` held or time ran out first."""
        if self._driving.acquire(blocking=False):  # nobody turns it: the common case
            return self._took()
        with self._turn_lock:
            self._followers += 1
            try:
                self.engine.call_soon_threadsafe(_nothing)  # one more turn, after we were counted
                while not predicate() and not self.closed:
                    if self._driving.acquire(blocking=False):
                        return self._took()
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._turn.wait(left)
            finally:
                self._followers -= 1
        return False

    def _took(self) -> bool:
        if self.closed:
            self._driving.release()
            return False
        self._driver = threading.get_ident()
        return True

    def let_go(self) -> None:
        """Leave the loop to the next thread that waits (and close the engine when close() asked)."""
        try:
            if self.closing and not self.closed:
                self.closed = True
                try:
                    self.engine.abort_all()
                finally:
                    self.engine.close()
        finally:
            self._driver = None
            self._driving.release()
            # Read without the lock: a follower counts itself before it tries _driving, so it either
            # takes the loop now or is counted here (and in wait() before the notify takes the lock).
            if self._followers:
                with self._turn_lock:
                    self._turn.notify_all()

    # ---- running functions on it -------------------------------------------------------------------
    def try_hold(self) -> bool:
        """Hold the loop now if no thread turns it - use the engine on this thread, then :meth:`let_go`.

        Never waits: ``False`` when another thread turns the loop (then :meth:`post`). A sender's
        fast path: one message written at once, no queue, no call.
        """
        if not self._driving.acquire(blocking=False):
            return False
        if self.closed:
            self._driving.release()
            return False
        self._driver = threading.get_ident()
        return True

    def try_call(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``fn()`` now if no other thread turns the loop: ``(True, result)``; else ``(False, None)``."""
        if self._driver == threading.get_ident():
            return True, fn()
        if not self._driving.acquire(blocking=False):
            return False, None
        if not self._took():
            return False, None
        try:
            return True, fn()
        finally:
            self.let_go()

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` at once if no other thread turns the loop, else queue it for that thread."""
        if self.closed:
            return  # as a stopped engine thread would: nothing runs any more
        if self._driver != threading.get_ident() and self._driving.acquire(blocking=False):
            if not self._took():
                return
            try:
                fn()
            except Exception as exc:
                self.engine.report_error(exc, f"callback {fn!r}")
            finally:
                self.let_go()
            return
        self.engine.call_soon_threadsafe(fn)

    def close(self) -> None:
        """Close the engine as the loop is let go: at once when free, after the current turn otherwise."""
        self.closing = True
        if self._driver == threading.get_ident():
            return  # a callback: no connection is torn down under it
        self.engine.call_soon_threadsafe(_nothing)  # a thread waiting in poll() looks at the flag
        if self._take(_never, time.monotonic() + 10.0):
            self.let_go()  # closes the engine
