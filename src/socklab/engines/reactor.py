"""socklab's own reactor: non-blocking sockets, one thread, select(), poll() or epoll.

Why this exists: this is the pattern under every event loop (nginx, Redis, asyncio, uvloop),
written out in a few hundred lines of Python so it can be read. One thread waits for readiness
on many sockets at once, then does the work each ready socket allows without ever blocking:

1. ``poll`` asks the kernel which file descriptors are readable or writable (waiting at most
   until the next timer is due);
2. each ready descriptor's handler runs: accept new connections, ``recv`` what arrived and hand
   it to the protocol, ``send`` what is buffered;
3. timers whose time came run (``call_later``), then callbacks queued from other threads
   (``call_soon_threadsafe``, which wakes the loop through a socketpair - never by polling).

The loop runs on one thread at a time, and it need not be its own: ``run()`` turns it until
``stop()`` (a server's thread), ``run_until(predicate, timeout)`` on the caller's thread until
``predicate()`` holds - a blocking client waits that way, with no second thread and no hand-off
per message (:class:`socklab.runtime.client.BlockingClient`; asyncio's ``run_until_complete``).

Writes are tried at once and only the leftover is buffered (the writable event is watched only
while something is buffered). A connection whose buffer passes ``max_buffer`` stops being read
until the peer catches up, so a client that never reads cannot make the server's memory grow.
On EMFILE at accept the listener backs off (no busy loop) and retries shortly after.

The three engines ``select``, ``poll`` and ``epoll`` are this reactor with a different
:class:`Poller`; ``socklab engines`` says when each fits (select is capped at FD_SETSIZE=1024).
The objects the loop drives - listeners, connections, connectors, UDP endpoints - are in
:mod:`socklab.engines._reactor_io`.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint
from socklab.core.tls import TLSProtocol
from socklab.engines._reactor_io import (
    RECV_SIZE,
    StreamTransport,
    _Connector,
    _DatagramEndpoint,
    _Listener,
)
from socklab.engines.base import (
    DatagramFactory,
    Engine,
    EngineInfo,
    ProtocolFactory,
    Timer,
)

__all__ = ["RECV_SIZE", "EpollEngine", "PollEngine", "Reactor", "SelectEngine", "StreamTransport"]

READ, WRITE = 1, 4  # the same bits as POLLIN/EPOLLIN and POLLOUT/EPOLLOUT
_READ_LIKE = select.POLLIN | select.POLLERR | select.POLLHUP
_IN = select.POLLIN  # == select.EPOLLIN; the pollers report READ as this bit


# ---- pollers: the one part that differs between select, poll and epoll ---------------------------
class Poller:
    """Readiness notification over one OS mechanism. ``mask`` is a combination of READ and WRITE."""

    def register(self, fd: int, mask: int) -> None: raise NotImplementedError
    def modify(self, fd: int, mask: int) -> None: raise NotImplementedError
    def unregister(self, fd: int) -> None: raise NotImplementedError
    def poll(self, timeout: float | None) -> list[tuple[int, int]]: raise NotImplementedError
    def close(self) -> None: pass


class EpollPoller(Poller):
    """Linux epoll: the kernel keeps the interest list; each wait costs O(ready), not O(watched)."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        # epoll_wait's event array is allocated per call (by CPython's epoll.poll): sized to the
        # interest list, like selectors does, it is a few hundred bytes from Python's allocator
        # instead of a 12 KiB malloc and free on every loop iteration.
        self._watched = 0
        self._max_events = 1

    def register(self, fd: int, mask: int) -> None:
        self._ep.register(fd, mask)
        self._watched += 1
        self._max_events = max(1, min(self._watched, 1024))

    def modify(self, fd: int, mask: int) -> None:
        self._ep.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self._ep.unregister(fd)
        self._watched -= 1
        self._max_events = max(1, min(self._watched, 1024))

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._ep.poll(-1 if timeout is None else timeout, self._max_events)

    def close(self) -> None:
        self._ep.close()


class PollPoller(Poller):
    """POSIX poll(): no descriptor limit, but the whole interest list is passed on every call."""

    def __init__(self) -> None:
        self._p = select.poll()

    def register(self, fd: int, mask: int) -> None:
        self._p.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._p.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self._p.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._p.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))


class SelectPoller(Poller):
    """select(): the oldest and most portable; three bitmaps rebuilt on every call, fds < 1024."""

    def __init__(self) -> None:
        self._r: set[int] = set()
        self._w: set[int] = set()

    def register(self, fd: int, mask: int) -> None:
        if fd >= 1024:
            raise OSError(errno.EMFILE, f"select() cannot watch fd {fd} (FD_SETSIZE is 1024): use poll or epoll")
        self.modify(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        (self._r.add if mask & READ else self._r.discard)(fd)
        (self._w.add if mask & WRITE else self._w.discard)(fd)

    def unregister(self, fd: int) -> None:
        self._r.discard(fd)
        self._w.discard(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        r, w, _ = select.select(self._r, self._w, [], timeout)
        ready: dict[int, int] = dict.fromkeys(r, READ)
        for fd in w:
            ready[fd] = ready.get(fd, 0) | WRITE
        return list(ready.items())


def _never() -> bool:
    return False


# ---- the reactor ---------------------------------------------------------------------------------
class Reactor(Engine):
    """The loop shared by the select, poll and epoll engines."""

    one_thread = True
    runs_on_caller = True

    poller_class: type[Poller] = EpollPoller

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._poller = self.poller_class()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled_timers = 0  # cancelled entries still in the heap (see _timer_cancelled)
        self._seq = itertools.count()
        self._ready: collections.deque[Callable[[], None]] = collections.deque()
        self._stopping = False
        self._loop_thread: int | None = None  # the thread turning the loop now (run or run_until)
        self._listeners: list[_Listener] = []
        self._endpoints: list[_DatagramEndpoint] = []
        self.now = time.monotonic()
        self._registered: set[int] = set()
        # One receive buffer for the whole loop (one thread): the echo path reads into it and
        # sends straight from it, so no bytes object is allocated per message.
        self.recv_view = memoryview(bytearray(RECV_SIZE))
        # The self-pipe trick: other threads wake poll() by writing one byte.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add_reader(self._wake_r.fileno(), self._drain_wakeup)

    # ---- interest --------------------------------------------------------------------------------
    def _update(self, fd: int) -> None:
        mask = (READ if fd in self._readers else 0) | (WRITE if fd in self._writers else 0)
        registered = fd in self._registered
        if mask and registered:
            self._poller.modify(fd, mask)
        elif mask:
            self._poller.register(fd, mask)
            self._registered.add(fd)
        elif registered:
            self._poller.unregister(fd)
            self._registered.discard(fd)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        new = fd not in self._readers
        self._readers[fd] = callback
        if new:
            self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        new = fd not in self._writers
        self._writers[fd] = callback
        if new:
            self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    # ---- scheduling ------------------------------------------------------------------------------
    def call_soon(self, callback: Callable[[], None]) -> None:
        self._ready.append(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._ready.append(callback)
        loop_thread = self._loop_thread
        if loop_thread is None or loop_thread == threading.get_ident():
            # Nobody waits in poll(): whoever turns the loop next sees the queue before it waits
            # (the thread is noted before the queue is looked at). On the loop's own thread the
            # queue is run before the next wait. No byte to write, none to drain.
            return
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full: the loop is already going to wake up
        except OSError:
            pass  # closed during shutdown

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback, self)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def _timer_cancelled(self) -> None:
        """A timer in the heap was cancelled: once most entries are dead, rebuild the heap without
        them (asyncio's rule), so that churn - a long timer per connection, cancelled at close -
        leaves no trail of dead entries behind."""
        self._cancelled_timers += 1
        timers = self._timers
        if self._cancelled_timers > 64 and self._cancelled_timers * 2 > len(timers):
            live = [entry for entry in timers if not entry[2].cancelled]
            heapq.heapify(live)
            timers[:] = live  # in place: run() holds a reference to this list
            self._cancelled_timers = 0

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def stop(self) -> None:
        self._stopping = True
        self.call_soon_threadsafe(lambda: None)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, ready: Callable[[], None] | None = None) -> None:
        self._stopping = False
        if ready is not None:
            self._ready.append(ready)
        self._enter()
        try:
            self._loop(None, None)
        finally:
            self._loop_thread = None

    def run_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Turn the loop on the calling thread until ``predicate()`` is true; ``False`` after ``timeout`` s.

        ``predicate`` is checked after each turn (at least one turn runs - check it first if it may
        hold already; ``timeout=0``: one turn that does not wait); a turn waits at most until the
        next timer or the deadline, and a ``call_soon_threadsafe`` from another thread wakes it.
        Callbacks run on the calling thread. One thread at a time: the caller keeps others out.

        Raises:
            RuntimeError: the loop is running already (``run`` on another thread, or a callback
            of this loop calling ``run_until``).
        """
        self._enter()
        try:
            self.now = time.monotonic()  # the loop may have stood still since its last turn
            return self._loop(predicate, None if timeout is None else self.now + max(0.0, timeout))
        finally:
            self._loop_thread = None

    def run_once(self, timeout: float | None = 0.0) -> None:
        """One turn on the calling thread: wait up to ``timeout`` s for events, run what is due."""
        self.run_until(_never, timeout)

    def _enter(self) -> None:
        if self._loop_thread is not None:
            raise RuntimeError(f"the {self.name} loop is already running (thread {self._loop_thread})")
        self._loop_thread = threading.get_ident()

    def _loop(self, done: Callable[[], bool] | None, deadline: float | None) -> bool:
        """Turn until ``stop()`` (``done`` is None) or ``done()``; ``False`` once ``deadline`` passed."""
        poll = self._poller.poll
        readers, writers = self._readers, self._writers
        timers, ready_q = self._timers, self._ready
        # The last handler, timer and callback run stay in these locals until overwritten; they
        # are cleared before each wait, so an idle loop holds no closed connection alive.
        cb: Callable[[], None] | None = None
        maybe: Callable[[], None] | None = None
        callback: Callable[[], None] | None = None
        timer: Timer | None = None
        turned = False
        while True:
            if done is None:
                if self._stopping:
                    return True
            elif turned and done():
                return True
            if ready_q:
                timeout: float | None = 0.0
            else:
                cb = maybe = callback = timer = None
                # self.now is at most one loop iteration old: good enough for a timeout
                timeout = max(0.0, timers[0][0] - self.now) if timers else None
            if deadline is not None:
                left = deadline - self.now
                if left <= 0.0 and turned:
                    return False
                timeout = max(0.0, left) if timeout is None else min(timeout, max(0.0, left))
            turned = True
            try:
                events = poll(timeout)
            except InterruptedError:
                events = []
            self.now = time.monotonic()
            for fd, ev in events:
                if ev == _IN:  # the common case, readable and nothing else: one test, one lookup
                    try:
                        cb = readers[fd]
                    except KeyError:  # removed by an earlier callback of this batch
                        continue
                    cb()
                    continue
                if ev & _READ_LIKE:
                    maybe = readers.get(fd)
                    if maybe is not None:
                        maybe()
                if ev & WRITE:
                    maybe = writers.get(fd)
                    if maybe is not None:
                        maybe()
            while timers and timers[0][0] <= self.now:
                timer = heapq.heappop(timers)[2]
                if timer.cancelled:
                    self._cancelled_timers -= 1
                    continue
                timer.popped()
                try:
                    timer.callback()
                except Exception as exc:
                    self.report_error(exc, f"timer callback {timer.callback!r}")
            for _ in range(len(ready_q)):
                callback = ready_q.popleft()
                try:
                    callback()
                except Exception as exc:
                    self.report_error(exc, f"callback {callback!r}")

    def close(self) -> None:
        self.close_listeners()
        self.remove_reader(self._wake_r.fileno())
        self._wake_r.close()
        self._wake_w.close()
        self._poller.close()

    # ---- sockets ---------------------------------------------------------------------------------
    def serve_stream(self, sock: socket.socket, protocol_factory: ProtocolFactory,
                     ssl_context: ssl.SSLContext | None = None) -> _Listener:
        listener = _Listener(self, sock, protocol_factory, ssl_context)
        self._listeners.append(listener)
        return listener

    def close_listeners(self) -> None:
        for listener in list(self._listeners):
            listener.close()
        for endpoint in list(self._endpoints):
            endpoint.close()

    def serve_datagram(self, sock: socket.socket, protocol_factory: DatagramFactory) -> _DatagramEndpoint:
        endpoint = _DatagramEndpoint(self, sock, protocol_factory())
        self._endpoints.append(endpoint)
        return endpoint

    def connect_stream(self, endpoint: Endpoint, protocol_factory: ProtocolFactory, *,
                       ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                       timeout: float = 10.0,
                       on_error: Callable[[BaseException], None] | None = None,
                       source_address: tuple[str, int] | None = None) -> None:
        _Connector(self, endpoint, protocol_factory, ssl_context, server_hostname, timeout, on_error,
                   source_address)

    def start_stream(self, sock: socket.socket, protocol: Protocol, *, peer: Any,
                     ssl_context: ssl.SSLContext | None = None, server_side: bool = True,
                     server_hostname: str | None = None,
                     on_error: Callable[[BaseException], None] | None = None) -> StreamTransport:
        """Adopt a connected non-blocking socket: build the transport and call ``connection_made``.

        ``on_error``: a client's TLS handshake that fails reports its reason there.
        """
        if ssl_context is not None:
            protocol = TLSProtocol(protocol, ssl_context, server_side=server_side,
                                   server_hostname=server_hostname, on_failed=on_error)
        transport = StreamTransport(self, sock, protocol, peer)
        self.connection_opened(transport)
        try:
            protocol.connection_made(transport)
        except Exception as exc:
            transport._protocol_failed(exc, "connection_made")
            return transport
        try:
            transport.start_reading()
        except OSError as exc:  # select() cannot watch fds >= 1024: refuse this one, serve the rest
            transport._fatal(exc, "watching the new connection")
        return transport


class EpollEngine(Reactor):
    info = EngineInfo(
        name="epoll", model="one thread, non-blocking sockets, Linux epoll",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="many connections on Linux: cost grows with the ready sockets, not the watched ones",
        limits="Linux only")
    poller_class = EpollPoller


class PollEngine(Reactor):
    info = EngineInfo(
        name="poll", model="one thread, non-blocking sockets, poll()",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="portable event loop without select's 1024-descriptor cap",
        limits="each wait passes the whole interest list: slower with thousands of idle connections")
    poller_class = PollPoller


class SelectEngine(Reactor):
    info = EngineInfo(
        name="select", model="one thread, non-blocking sockets, select()",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="learning the classic API, or the most portable code",
        limits="file descriptors must be below FD_SETSIZE (1024)")
    poller_class = SelectPoller
