"""The blocking engines' other threads: the clock (timers), the flusher (partial sends), UDP readers.

Why this exists: on the blocking engines every connection has a thread blocked in ``recv()``, so
the other jobs need threads of their own:

- :class:`Clock`: one thread running ``call_later``/``call_soon_threadsafe`` callbacks under the
  engine lock (a heap and a condition variable; no polling). A cancelled timer drops its
  callback at once, and dead entries are compacted out of the heap once they are most of it.
- :class:`Flusher`: one thread finishing partial sends for every connection (epoll for
  writability), so a client that does not read never blocks the thread holding the lock.
- :class:`DatagramEndpoint`: a UDP socket read by its own thread, sending inline.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from socklab.core.protocol import DatagramProtocol
from socklab.engines._datagram import DatagramEndpointBase
from socklab.engines._stream import RECV_SIZE
from socklab.engines.base import Timer

if TYPE_CHECKING:
    from socklab.engines.blocking import BlockingEngine

__all__ = ["JOIN_TIMEOUT", "Clock", "DatagramEndpoint", "Flusher"]

_DONTWAIT = socket.MSG_DONTWAIT

JOIN_TIMEOUT = 5.0  # seconds close() waits for the engine's threads


# ---- the timer thread ----------------------------------------------------------------------------
class Clock:
    """One thread running due callbacks under the engine lock; waits on a condition, never polls."""

    def __init__(self, engine: BlockingEngine) -> None:
        self.engine = engine
        self._heap: list[tuple[float, int, Timer]] = []
        self._cancelled = 0  # cancelled entries still in the heap (see _timer_cancelled)
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback, self)
        with self._cond:
            if self._closed:
                timer.popped()
                timer.cancel()
                return timer
            heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.engine.name}-timers", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def _run(self) -> None:
        heap, cond, engine = self._heap, self._cond, self.engine
        while True:
            with cond:
                while True:
                    if self._closed:
                        return
                    if not heap:
                        cond.wait()
                        continue
                    delay = heap[0][0] - time.monotonic()
                    if delay <= 0:
                        break
                    cond.wait(delay)
                now = time.monotonic()
                due = []
                while heap and heap[0][0] <= now:
                    timer = heapq.heappop(heap)[2]
                    if timer.cancelled:
                        self._cancelled -= 1
                    else:
                        timer.popped()
                        due.append(timer)
            with engine.lock:
                for timer in due:
                    if timer.cancelled:
                        continue
                    try:
                        timer.callback()
                    except Exception as exc:
                        engine.report_error(exc, f"timer callback {timer.callback!r}")

    def _timer_cancelled(self) -> None:
        """A timer in the heap was cancelled (any thread): once most entries are dead, rebuild
        the heap without them, as asyncio does, so churn leaves no trail behind."""
        with self._cond:
            self._cancelled += 1
            heap = self._heap
            if self._cancelled > 64 and self._cancelled * 2 > len(heap):
                heap[:] = [entry for entry in heap if not entry[2].cancelled]
                heapq.heapify(heap)
                self._cancelled = 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cancelled = 0
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)


# ---- the flusher thread --------------------------------------------------------------------------
class _Writable:
    """What the flusher drives: something with buffered output and an ``_on_writable`` method."""

    def _on_writable(self) -> None:
        raise NotImplementedError


class Flusher:
    """One thread that finishes partial sends for every connection of the engine.

    ``watch``/``unwatch`` run under the engine lock on any thread (epoll_ctl is thread-safe and
    takes effect during a wait); the thread waits in ``epoll_wait`` and sends under the lock.
    """

    def __init__(self, engine: BlockingEngine) -> None:
        self.engine = engine
        self._ep: select.epoll | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._watched: dict[int, _Writable] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, fd: int, target: _Writable) -> None:
        """Call ``target._on_writable()`` (under the lock) while ``fd`` is writable. Hold the lock."""
        if self._closed:
            return
        self.open()
        assert self._ep is not None
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"{self.engine.name}-flusher", daemon=True)
            self._thread.start()
        if fd in self._watched:
            self._watched[fd] = target
            return
        self._watched[fd] = target
        self._ep.register(fd, select.EPOLLOUT)

    def open(self) -> None:
        """Create the epoll and wake-up descriptors now (the engine does it before serving, so a
        partial send never needs a new descriptor while the process may be out of them)."""
        if self._ep is None and not self._closed:
            self._ep = select.epoll()
            self._wake = socket.socketpair()
            self._ep.register(self._wake[0].fileno(), select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed). Hold the lock."""
        if self._watched.pop(fd, None) is not None and self._ep is not None:
            with contextlib.suppress(OSError):
                self._ep.unregister(fd)

    def _run(self) -> None:
        assert self._ep is not None
        poll, lock, watched = self._ep.poll, self.engine.lock, self._watched
        while True:
            try:
                events = poll()
            except InterruptedError:
                continue
            with lock:
                if self._closed:
                    return
                for fd, _ in events:
                    target = watched.get(fd)
                    if target is not None:
                        target._on_writable()

    def close(self) -> None:
        with self.engine.lock:
            self._closed = True
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    self._wake[1].send(b"\0")
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)
        with self.engine.lock:
            if self._ep is not None:
                self._ep.close()
            if self._wake is not None:
                self._wake[0].close()
                self._wake[1].close()
            self._watched.clear()


# ---- datagrams -----------------------------------------------------------------------------------
class DatagramEndpoint(DatagramEndpointBase, _Writable):
    """A bound UDP socket read by its own thread (``udp-<fd>``); sends are tried inline.

    The socket stays blocking for the reading thread; sends use ``MSG_DONTWAIT`` and the engine's
    flusher finishes what the kernel would not take at once.
    """

    send_flags = _DONTWAIT
    engine: BlockingEngine

    def __init__(self, engine: BlockingEngine, sock: socket.socket, protocol: DatagramProtocol) -> None:
        super().__init__(engine, sock, protocol)
        self._reader = 0
        sock.setblocking(True)
        self.thread = threading.Thread(target=self._run, name=f"udp-{self.fd}", daemon=True)

    def _run(self) -> None:
        self._reader = threading.get_ident()
        engine = self.engine
        try:
            if self._echo_declared():
                self._run_echo()
            elif self.tracer:
                self._run_traced()
            else:
                # The first recvfrom waits outside the lock; then, holding it, the protocol gets
                # that datagram and up to 63 more already queued (MSG_DONTWAIT): one lock per run.
                while not self._closed:
                    try:
                        data, addr = self.sock.recvfrom(RECV_SIZE)
                    except OSError as exc:
                        with engine.lock:
                            if self._closed:
                                return
                            self._error(exc, "receiving a datagram")  # ICMP errors surface here
                        continue
                    with engine.lock:
                        if self._closed:
                            return
                        self._deliver(data, addr)
                        if not self._closed:
                            engine.stats.datagrams_in += self._read_burst(63, _DONTWAIT)
        finally:
            with engine.lock:
                engine._flusher.unwatch(self.fd)
                self.sock.close()
                engine._threads.discard(threading.current_thread())

    def _run_traced(self) -> None:
        engine = self.engine
        while True:
            err: OSError | None = None
            try:
                data, addr = self.sock.recvfrom(RECV_SIZE)
            except OSError as exc:
                data, addr, err = b"", None, exc
            with engine.lock:
                if self._closed:
                    return
                if err is not None:  # ICMP errors (port unreachable) surface here
                    self._error(err, "receiving a datagram")
                    continue
                self._deliver(data, addr)

    def _run_echo(self) -> None:
        """The declared echo: no protocol code runs, so no lock per datagram - only to count a run
        (a blocking read, then what is queued), to queue a reply and to report an error."""
        engine, recv_into = self.engine, self.sock.recvfrom_into
        buf = self._echo_buf
        assert buf is not None
        while True:
            if self._mmsg is not None and not self._pending:
                # One recvmmsg waits for the first datagram and takes what else is queued.
                count = self._echo_batches(self._mmsg.slots, self._mmsg.WAITFORONE)
                if self._closed:
                    return
                if count:
                    with engine.lock:
                        engine.stats.datagrams_in += count
                continue
            try:
                first = recv_into(buf)  # waits, outside the lock
            except OSError as exc:
                self._error(exc, "receiving a datagram")  # ICMP errors surface here
                if self._closed:
                    return
                continue
            if self._closed:  # shutdown() woke the read
                return
            count = self._echo_burst(64, _DONTWAIT, first)
            with engine.lock:
                engine.stats.datagrams_in += count

    def _queue(self, data: bytes, addr: object) -> None:
        with self.engine.lock:  # the echo path queues from the reading thread, outside the lock
            if not self._closed:
                super()._queue(data, addr)

    def _error(self, exc: OSError, action: str) -> None:
        with self.engine.lock:
            if not self._closed:
                super()._error(exc, action)

    def _watch_writable(self) -> None:
        self.engine._flusher.watch(self.fd, self)

    def _unwatch_writable(self) -> None:
        self.engine._flusher.unwatch(self.fd)

    def close(self) -> None:
        """Stop serving; the reading thread closes the socket (woken by shutdown())."""
        if self._closed:
            return
        self._closed = True
        self._unwatch_writable()
        if self.tracer:
            self.tracer.emit("close", self.sock)
        if self.thread.is_alive():
            with contextlib.suppress(OSError):  # ENOTCONN on UDP, but it wakes recvfrom() all the same
                self.sock.shutdown(socket.SHUT_RDWR)
        else:
            self.sock.close()
        if self in self.engine._endpoints:
            self.engine._endpoints.remove(self)
        self._closed_now()
