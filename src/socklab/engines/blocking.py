"""The blocking-socket engines: one client at a time, a thread per client, a pool of threads.

Why this exists: before event loops, servers were written with blocking calls - ``accept()``
waits for a client, ``recv()`` waits for its bytes - and that is still the easiest code to read.
These three engines are that style, behind the same interface as the reactor, so the same app can
be run on each and the difference seen:

- ``iterative`` serves one connection at a time on the engine thread. While it serves one, the
  next clients wait in the kernel's listen backlog: it shows *why* servers need concurrency.
- ``threads`` starts a thread per connection (named ``conn-<fd>``), each blocked in ``recv()``.
- ``pool`` keeps at most ``settings.workers`` worker threads and a bounded queue of at most
  ``settings.queue_size`` accepted connections waiting for a free worker. A connection holds its
  worker until it closes. **Overflow policy:** when the queue is full, a new connection is sent
  ``settings.overflow_message`` and closed at once; connections already served or queued are not
  affected. (``max_connections`` still applies, counting served and queued connections.)

How the pieces fit (all three engines share them):

1. The engine thread (``run``) waits in ``poll()`` on the listening sockets plus a wake-up
   socketpair, so ``stop()`` and ``close_listeners()`` interrupt it at once. On EMFILE/ENFILE it
   stops watching the listener for 0.05 s, doubling up to 0.4 s: no busy loop, and recovery
   within half a second once descriptors are free.
2. Each connection is read by one thread: ``recv`` at most 16 KiB (64 KiB for bulk senders; below
   glibc's 128 KiB mmap threshold), outside any lock; then, holding ``engine.lock``, the
   protocol's ``data_received`` runs. Protocol callbacks are therefore serialized, as on the reactor.
3. ``transport.write`` tries ``send(MSG_DONTWAIT)`` at once; the leftover goes to a per-connection
   buffer that one engine-wide *flusher* thread drains (epoll for writability), so a client that
   does not read never blocks the thread holding the lock. Above ``max_buffer`` the protocol's
   ``pause_writing`` is called and the connection's thread stops reading that peer.
4. Timers (``call_later``, the idle sweep) and ``call_soon_threadsafe`` callbacks run on one timer
   thread (a heap and a condition variable, no polling), under the same lock.
5. Only a connection's own thread closes its socket. Another thread that ends the connection
   (idle timeout, abort, shutdown) calls ``shutdown(SHUT_RD)``, which wakes the ``recv()``
   blocked in the owner thread - ``close()`` alone would not, and closing a descriptor another
   thread is using lets the number be reused under it.

UDP endpoints get a thread doing ``recvfrom`` and send inline; ``connect_stream`` uses a thread
that connects and then reads the connection. The flusher uses Linux epoll. The stream transport
lives in :mod:`socklab.engines._blocking_io`, the timer thread, the flusher and the UDP endpoint
in :mod:`socklab.engines._blocking_threads`; this module is the accept loop and the three engines.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from socklab.core.errors import SocklabError
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint, connect_tcp
from socklab.core.trace import format_addr
from socklab.engines._blocking_io import _DONTWAIT, RECV_SIZE, StreamTransport, Timer
from socklab.engines._blocking_threads import JOIN_TIMEOUT, Clock, DatagramEndpoint, Flusher
from socklab.engines._blocking_tls import ThreadTLSProtocol
from socklab.engines.base import Connection, DatagramFactory, Engine, EngineInfo, ProtocolFactory

__all__ = ["RECV_SIZE", "BlockingEngine", "IterativeEngine", "PoolEngine", "StreamTransport", "ThreadsEngine"]

log = logging.getLogger("socklab")  # the one logger every engine reports to

BACKOFF_FIRST = 0.05  # seconds without accept() after EMFILE; doubles up to BACKOFF_MAX
BACKOFF_MAX = 0.4
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


# ---- listening sockets ---------------------------------------------------------------------------
class _Listener:
    """One listening socket served by the engine thread."""

    def __init__(self, engine: BlockingEngine, sock: socket.socket, factory: ProtocolFactory,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.engine = engine
        self.sock = sock
        self.fd = sock.fileno()
        self.factory = factory
        self.ssl_context = ssl_context
        self.is_tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.closed = False
        self.released = False
        self.backoff = BACKOFF_FIRST
        self.resume_at = 0.0
        sock.setblocking(False)

    def close(self) -> None:
        """Stop accepting now (the kernel refuses new connections); the fd is released by its owner."""
        if self.closed:
            return
        self.closed = True
        if self.engine.tracer:
            self.engine.tracer.emit("close", self.sock, detail="listening socket: no more accepts")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # stops listening and wakes a poll() on it

    def release(self) -> None:
        """Close the descriptor (engine thread, or when the engine thread is not running)."""
        if not self.released:
            self.released = True
            self.sock.close()

    @property
    def sockname(self) -> Any:
        return self.sock.getsockname()


# ---- the engines ---------------------------------------------------------------------------------
class BlockingEngine(Engine):
    """What the iterative, threads and pool engines share: accept loop, timers, flusher, transports.

    Subclasses decide what happens to an accepted connection (:meth:`_handle_accepted`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = Clock(self)
        self._flusher = Flusher(self)
        self._listeners: list[_Listener] = []
        self._endpoints: list[DatagramEndpoint] = []
        self._threads: set[threading.Thread] = set()
        self._starting = 0  # admitted connections not yet opened (queued, or their thread starting)
        self._stopping = False
        self._running = False
        self._engine_thread = 0
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._closed = False

    # ---- scheduling ------------------------------------------------------------------------------
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._clock.schedule(0.0, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._clock.schedule(delay, callback)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):  # full (already woken) or closed (run returned)
                wake[1].send(b"\0")

    # ---- the accept loop -------------------------------------------------------------------------
    def run(self, ready: Callable[[], None] | None = None) -> None:
        self._stopping = False
        self._flusher.open()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = (wake_r, wake_w)
        poller = select.poll()
        poller.register(wake_r.fileno(), select.POLLIN)
        watched: dict[int, _Listener] = {}
        with self.lock:
            self._engine_thread = threading.get_ident()
            self._running = True
        if ready is not None:
            ready()
        try:
            while not self._stopping:
                timeout: float | None = None
                now = time.monotonic()
                for listener in list(self._listeners):
                    if listener.closed:
                        if watched.pop(listener.fd, None) is not None:
                            poller.unregister(listener.fd)
                        self._drop_listener(listener)
                    elif listener.resume_at > now:  # backing off after EMFILE: do not watch it
                        if watched.pop(listener.fd, None) is not None:
                            poller.unregister(listener.fd)
                        wait = listener.resume_at - now
                        timeout = wait if timeout is None else min(timeout, wait)
                    elif listener.fd not in watched:
                        watched[listener.fd] = listener
                        poller.register(listener.fd, select.POLLIN)
                try:
                    events = poller.poll(None if timeout is None else int(timeout * 1000) + 1)
                except InterruptedError:
                    continue
                for fd, _ in events:
                    if fd == wake_r.fileno():
                        with contextlib.suppress(OSError):
                            while wake_r.recv(4096):
                                pass
                    elif fd in watched and not self._stopping:
                        self._accept(watched[fd])
        finally:
            with self.lock:
                self._running = False
                self._wake = None
                for listener in list(self._listeners):
                    if listener.closed:
                        self._drop_listener(listener)
            wake_r.close()
            wake_w.close()

    def _drop_listener(self, listener: _Listener) -> None:
        listener.release()
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _accept(self, listener: _Listener) -> None:
        tracer = self.tracer
        for _ in range(64):  # a burst per wake-up
            try:
                conn, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if listener.closed:
                    return
                if exc.errno in _FD_EXHAUSTED:
                    self._back_off(listener, exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client gave up between SYN and accept(): try the next one
                raise
            listener.backoff = BACKOFF_FIRST
            if tracer:
                tracer.emit("accept", conn, peer=peer, detail=f"new fd from listening fd {listener.fd}")
            conn.setblocking(True)
            if listener.is_tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handle_accepted(listener, conn, peer)
            if self._stopping or listener.closed:
                return

    def _back_off(self, listener: _Listener, exc: OSError) -> None:
        """Out of file descriptors: stop accepting for a moment instead of spinning."""
        if self.tracer:
            self.tracer.note(f"accept failed with {errno.errorcode.get(exc.errno or 0, exc.errno)}: out of "
                             f"file descriptors; pausing accept for {listener.backoff:.2f} s")
        with self.lock:
            self.stats.extra["accept_backoffs"] = self.stats.extra.get("accept_backoffs", 0) + 1
        listener.resume_at = time.monotonic() + listener.backoff
        listener.backoff = min(listener.backoff * 2, BACKOFF_MAX)

    def _handle_accepted(self, listener: _Listener, conn: socket.socket, peer: Any) -> None:
        raise NotImplementedError

    def _refuse(self, conn: socket.socket, peer: Any, why: str, listener: _Listener) -> None:
        if self.tracer:
            self.tracer.note(f"refusing {format_addr(peer)}: {why}", conn)
        try:
            if not self.shutting_down and listener.ssl_context is None:  # no plaintext into a TLS stream
                conn.send(self.settings.overflow_message, _DONTWAIT)
        except OSError:
            pass
        conn.close()

    def admit(self) -> bool:
        """May one more connection be served? Counts connections admitted but not yet opened."""
        if self.shutting_down or len(self.connections) + self._starting >= self.settings.max_connections:
            self.stats.refused += 1
            return False
        self.stats.accepted += 1
        self._starting += 1
        return True

    def _start_thread(self, target: Callable[[], None], name: str) -> bool:
        """Start a tracked daemon thread (lock held); False if the system refused a new thread."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:
            self._threads.discard(thread)
            if self.tracer:
                self.tracer.note(f"cannot start a thread: {exc}")
            return False
        return True

    # ---- serving one connection on the current thread -------------------------------------------
    def _serve(self, sock: socket.socket, peer: Any, factory: ProtocolFactory,
               ssl_context: ssl.SSLContext | None, *, server_side: bool = True,
               server_hostname: str | None = None, admitted: bool = True,
               on_error: Callable[[BaseException], None] | None = None) -> None:
        """Open the connection (``connection_made``) and read it until it ends, on this thread.

        ``on_error``: a client's TLS handshake that fails reports its reason there.
        """
        with self.lock:
            if admitted:
                self._starting -= 1  # accepted before a shutdown began: it is served all the same
            try:
                protocol: Protocol = factory()
            except Exception as exc:
                self.report_error(exc, "the protocol factory")
                sock.close()
                self._check_drained()
                return
            if ssl_context is not None:
                protocol = ThreadTLSProtocol(protocol, ssl_context, server_side=server_side,
                                             server_hostname=server_hostname, on_failed=on_error)
            transport = StreamTransport(self, sock, protocol, peer)
            self.connection_opened(transport)
            try:
                protocol.connection_made(transport)
            except Exception as exc:
                transport._bug(exc, "connection_made")
        transport.read_loop()

    # ---- graceful shutdown -----------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Stop accepting and ask every protocol to finish (the base policy, counting the
        connections accepted but not yet started: they are served before the engine drains)."""
        with self.lock:
            self.shutting_down = True
            self.close_listeners()
            for conn in list(self.connections):
                hook = getattr(conn.protocol, "shutdown_requested", None)
                if hook is not None:
                    try:
                        hook()
                    except Exception as exc:
                        self.report_error(exc, f"{type(conn.protocol).__name__}.shutdown_requested")
            self._check_drained()

    def abort_all(self) -> None:
        """The grace period is over: close the waiting connections, then every open one."""
        with self.lock:
            self._drop_waiting()
            super().abort_all()
            self._check_drained()

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.stats.connections = len(self.connections)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.shutting_down and not self.connections and not self._starting:
            self._drained.set()

    def _drop_waiting(self) -> None:
        """Pool hook: close the connections still waiting for a worker (lock held)."""

    def _serve_thread(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            finally:
                with self.lock:
                    self._threads.discard(threading.current_thread())
        return run

    # ---- sockets ---------------------------------------------------------------------------------
    def serve_stream(self, sock: socket.socket, protocol_factory: ProtocolFactory,
                     ssl_context: ssl.SSLContext | None = None) -> _Listener:
        listener = _Listener(self, sock, protocol_factory, ssl_context)
        with self.lock:
            self._listeners.append(listener)
        self._wakeup()
        return listener

    def close_listeners(self) -> None:
        with self.lock:
            here = threading.get_ident() == self._engine_thread
            for listener in list(self._listeners):
                listener.close()
                if here or not self._running:
                    self._drop_listener(listener)
            for endpoint in list(self._endpoints):
                endpoint.close()
        self._wakeup()

    def serve_datagram(self, sock: socket.socket, protocol_factory: DatagramFactory) -> DatagramEndpoint:
        with self.lock:
            endpoint = DatagramEndpoint(self, sock, protocol_factory())
            self._endpoints.append(endpoint)
            endpoint.protocol.connection_made(endpoint)
            self._threads.add(endpoint.thread)
            endpoint.thread.start()
        return endpoint

    def connect_stream(self, endpoint: Endpoint, protocol_factory: ProtocolFactory, *,
                       ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                       timeout: float = 10.0,
                       on_error: Callable[[BaseException], None] | None = None,
                       source_address: tuple[str, int] | None = None) -> None:
        def body() -> None:
            try:
                sock = connect_tcp(endpoint, timeout=timeout, tracer=self.tracer, source=source_address)
            except SocklabError as exc:
                with self.lock:
                    if on_error is not None:
                        on_error(exc)
                    elif self.tracer:
                        self.tracer.note(f"connect failed: {exc}")
                return
            try:
                peer = sock.getpeername()
            except OSError:
                peer = str(endpoint)
            self._serve(sock, peer, protocol_factory, ssl_context, server_side=False,
                        server_hostname=server_hostname or endpoint.host, admitted=False, on_error=on_error)

        with self.lock:
            if not self._start_thread(self._serve_thread(body), f"connect-{endpoint}") and on_error is not None:
                on_error(SocklabError(f"cannot start a thread to connect to {endpoint}"))

    def close(self) -> None:
        """After run() returned: stop accepting, end what is left, join the threads."""
        with self.lock:
            self._closed = True
            self.close_listeners()
            for listener in list(self._listeners):
                self._drop_listener(listener)
            for conn in list(self.connections):
                conn.abort_with(None)
            self._close_workers()
            threads = list(self._threads)
        self._clock.close()
        self._flusher.close()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _close_workers(self) -> None:
        """Pool hook: let idle workers exit (lock held)."""


class IterativeEngine(BlockingEngine):
    """One client at a time, served on the engine thread; the others wait in the backlog."""

    info = EngineInfo(
        name="iterative", model="one client at a time on the engine thread, blocking sockets",
        concurrent=False, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="learning: see why servers need concurrency (the second client waits for the first)",
        limits="serves one connection at a time; the next ones wait in the listen backlog until it closes")

    def _handle_accepted(self, listener: _Listener, conn: socket.socket, peer: Any) -> None:
        with self.lock:
            admitted = self.admit()
        if not admitted:
            self._refuse(conn, peer, "shutting down", listener)
            return
        self._serve(conn, peer, listener.factory, listener.ssl_context)


class ThreadsEngine(BlockingEngine):
    """A thread per connection, each blocked in ``recv()`` on its own socket."""

    info = EngineInfo(
        name="threads", model="a thread per connection, blocking sockets",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="straightforward blocking code for tens to hundreds of clients",
        limits="one thread per connection (a stack each); Python code runs one thread at a time (GIL)")

    def _handle_accepted(self, listener: _Listener, conn: socket.socket, peer: Any) -> None:
        with self.lock:
            if not self.admit():
                why = "shutting down" if self.shutting_down else \
                    f"max_connections={self.settings.max_connections} reached"
                self._refuse(conn, peer, why, listener)
                return
            body = self._serve_thread(lambda: self._serve(conn, peer, listener.factory, listener.ssl_context))
            if not self._start_thread(body, f"conn-{conn.fileno()}"):
                self._starting -= 1
                self.stats.accepted -= 1
                self.stats.refused += 1
                self._refuse(conn, peer, "no more threads", listener)


class PoolEngine(BlockingEngine):
    """``workers`` threads serve connections taken from a queue of at most ``queue_size``.

    Overflow policy: when the queue is full a new connection gets ``overflow_message`` and is
    closed at once; served and queued connections are unaffected.
    """

    info = EngineInfo(
        name="pool", model="a fixed pool of worker threads (workers) fed by a bounded queue (queue_size)",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="bounding threads and memory: extra clients wait in a queue instead of costing a thread",
        limits="a connection holds its worker until it closes, so at most `workers` clients are served at "
               "once; overflow policy: when the queue of waiting connections is full, a new connection gets "
               "the overflow message and is closed at once")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: collections.deque[tuple[socket.socket, Any, _Listener]] = collections.deque()
        self._work = threading.Condition(self.lock)
        self._workers = 0
        self._idle = 0
        self._pool_closed = False
        self._warned_busy = False  # the "all workers busy" warning is given once

    def _handle_accepted(self, listener: _Listener, conn: socket.socket, peer: Any) -> None:
        s = self.settings
        with self.lock:
            if len(self._queue) >= s.queue_size:
                self.stats.refused += 1
                self.stats.extra["queue_full"] = self.stats.extra.get("queue_full", 0) + 1
                self._refuse(conn, peer, f"the pool's queue is full (queue_size={s.queue_size}, "
                                         f"workers={s.workers} busy)", listener)
                return
            if not self.admit():
                why = "shutting down" if self.shutting_down else f"max_connections={s.max_connections} reached"
                self._refuse(conn, peer, why, listener)
                return
            self._queue.append((conn, peer, listener))
            if self._idle:
                self._idle -= 1  # counted here so that a burst wakes as many workers as it needs
                self._work.notify()
            elif self._workers < s.workers and self._start_thread(self._serve_thread(self._worker),
                                                                  f"pool-worker-{self._workers + 1}"):
                self._workers += 1
            else:
                self._all_busy(conn, peer)

    def _all_busy(self, conn: socket.socket, peer: Any) -> None:
        """A connection waits in the queue: count it, and say once per server why (lock held).

        A client that stays connected (chat, peer, a terminal session) keeps its worker until it
        leaves, so worker number ``workers`` + 1 gets no answer at all until someone does - the
        most surprising thing this engine does, and the reason it is said in the log: once for
        the whole server (all its listeners), the address as ``host:port``. Under ``--trace``
        each queued connection also gets a note of its own (not the warning again).
        """
        self.stats.extra["queued"] = self.stats.extra.get("queued", 0) + 1
        where = format_addr(peer)
        if self.tracer:
            self.tracer.note(f"queued: {where} waits for a free worker ({len(self._queue)} waiting, "
                             f"queue_size={self.settings.queue_size})", conn, peer=peer)
        if not self._warned_busy:
            self._warned_busy = True
            log.warning("socklab: all %d pool workers are busy; new connections (first: %s) wait in the queue "
                        "(queue_size=%d) until a client leaves. A long-lived client holds its worker: raise "
                        "--workers, or use a concurrent engine (threads, epoll, asyncio)",
                        self.settings.workers, where, self.settings.queue_size)

    def _worker(self) -> None:
        while True:
            with self.lock:
                while not self._queue and not self._pool_closed:
                    self._idle += 1
                    self._work.wait()
                if self._pool_closed:
                    self._workers -= 1
                    return
                conn, peer, listener = self._queue.popleft()
            self._serve(conn, peer, listener.factory, listener.ssl_context)

    def _drop_waiting(self) -> None:
        self._drop_queue("the shutdown grace period is over")

    def _drop_queue(self, why: str) -> None:
        while self._queue:
            conn, peer, _ = self._queue.popleft()
            self._starting -= 1
            if self.tracer:
                self.tracer.note(f"closing queued connection from {format_addr(peer)}: {why}", conn)
            conn.close()

    def _close_workers(self) -> None:
        self._drop_queue("the engine is closing")
        self._pool_closed = True
        self._idle = 0
        self._work.notify_all()
