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
2. Each connection is read by one thread: ``recv_into`` a reused 64 KiB buffer (below glibc's
   128 KiB mmap threshold), outside any lock; then, holding ``engine.lock``, the protocol's
   ``data_received`` runs. Protocol callbacks are therefore serialized, as on the reactor.
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
that connects and then reads the connection. Everything uses Linux epoll for the flusher.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import itertools
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from socklab.core.errors import SocklabError, translate_oserror
from socklab.core.protocol import BufferedProtocol, DatagramProtocol, Protocol
from socklab.core.sockets import Endpoint, connect_tcp
from socklab.core.tls import TLSProtocol
from socklab.core.transport import DatagramTransport, Transport
from socklab.engines.base import Connection, DatagramFactory, Engine, EngineInfo, ProtocolFactory

__all__ = ["BlockingEngine", "IterativeEngine", "PoolEngine", "ThreadsEngine"]

RECV_SIZE = 64 * 1024  # below glibc's 128 KiB mmap threshold (see PERF_NOTES)
BACKOFF_FIRST = 0.05  # seconds without accept() after EMFILE; doubles up to BACKOFF_MAX
BACKOFF_MAX = 0.4
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_DONTWAIT = socket.MSG_DONTWAIT
_LINGER_RST = struct.pack("ii", 1, 0)
_JOIN_TIMEOUT = 5.0


# ---- the timer thread ----------------------------------------------------------------------------
class _Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Clock:
    """One thread running due callbacks under the engine lock; waits on a condition, never polls."""

    def __init__(self, engine: BlockingEngine) -> None:
        self.engine = engine
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(time.monotonic() + max(0.0, delay), callback)
        with self._cond:
            if self._closed:
                timer.cancelled = True
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
                    due.append(heapq.heappop(heap)[2])
            with engine.lock:
                for timer in due:
                    if timer.cancelled:
                        continue
                    try:
                        timer.callback()
                    except Exception as exc:
                        engine.report_error(exc, f"timer callback {timer.callback!r}")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)


# ---- the flusher thread --------------------------------------------------------------------------
class _Writable:
    """What the flusher drives: something with buffered output and an ``_on_writable`` method."""

    def _on_writable(self) -> None:
        raise NotImplementedError


class _Flusher:
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
        if self._ep is None:
            self._ep = select.epoll()
            self._wake = socket.socketpair()
            self._ep.register(self._wake[0].fileno(), select.EPOLLIN)
            self._thread = threading.Thread(target=self._run, name=f"{self.engine.name}-flusher", daemon=True)
            self._thread.start()
        if fd in self._watched:
            self._watched[fd] = target
            return
        self._watched[fd] = target
        self._ep.register(fd, select.EPOLLOUT)

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
            thread.join(_JOIN_TIMEOUT)
        with self.engine.lock:
            if self._ep is not None:
                self._ep.close()
            if self._wake is not None:
                self._wake[0].close()
                self._wake[1].close()
            self._watched.clear()


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


# ---- stream connections --------------------------------------------------------------------------
class StreamTransport(Transport, Connection, _Writable):
    """One connected blocking socket, read by one thread; see the module docstring.

    Every method except :meth:`read_loop` runs with ``engine.lock`` held (protocol callbacks,
    timers and the flusher all hold it), so protocols need no locks.
    """

    protocol: Protocol

    def __init__(self, engine: BlockingEngine, sock: socket.socket, protocol: Protocol, peer: Any) -> None:
        self.engine = engine
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol = protocol
        self.peer = peer
        self.tracer = engine.tracer
        self.last_activity = time.monotonic()  # refreshed by the idle sweep from bytes_in
        self._seen_in = 0
        self._reader = threading.get_ident()  # the thread that reads - and alone closes - the socket
        self._cond = threading.Condition(engine.lock)
        self._waiting = False  # the reading thread waits on _cond (not in recv())
        self._defer = False  # inside the reading thread's data_received: the first write may wait
        self._out: bytes | None = None  # ... here, to be sent once the lock is released
        self._sending = False  # the reading thread is sending ``_out`` without the lock
        self._wbuf = bytearray()
        self._hold = False  # True when any of the flags below may stop reading (re-checked slowly)
        self._closing = False
        self._lost = False
        self._released = False
        self._eof_pending = False
        self._eof_sent = False
        self._eof_received = False
        self._app_paused = False
        self._backpressure = False
        self._protocol_paused = False
        self._high = engine.settings.max_buffer
        self._low = self._high // 4
        self._buffered = isinstance(protocol, BufferedProtocol)
        self.bytes_in = 0
        self.bytes_out = 0

    # ---- reading (the connection's own thread) ---------------------------------------------------
    def read_loop(self) -> None:
        """Receive until the connection ends, then close the socket. Runs on the reading thread.

        The hot path, per message: ``recv_into`` (no lock) -> lock -> ``data_received`` (its
        first write is kept) -> unlock -> ``send`` of that reply (no lock).
        """
        lock = self.engine.lock
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        recv_into, send = self.sock.recv_into, self.sock.send
        tracer = self.tracer
        deliver = self._feed_buffered if self._buffered else None
        data_received = self.protocol.data_received
        try:
            with lock:
                if self._hold and not self._wait_readable():
                    return
            while True:
                try:
                    n = recv_into(buf)
                except OSError as exc:
                    with lock:
                        if not self._hold or self._wait_readable():
                            self._fatal(exc, "receiving")
                        return
                with lock:
                    if self._hold and not self._wait_readable():
                        return
                    if tracer:
                        tracer.emit("recv", self.sock, peer=self.peer, nbytes=n, requested=RECV_SIZE)
                    if not n:
                        self._on_eof()
                        if self._hold and not self._wait_readable():
                            return
                        continue
                    self.bytes_in += n
                    self._defer = not (self._wbuf or self._eof_sent or self._eof_pending)
                    try:
                        if deliver is None:
                            data_received(view[:n].tobytes())
                        else:
                            deliver(view, n)
                    except Exception as exc:
                        self._defer = False
                        self._out = None
                        self._bug(exc, "data_received")
                        return
                    self._defer = False
                    out = self._out
                    if out is not None:
                        self._out = None
                        if self._hold:  # closing or paused meanwhile: the ordinary path keeps the order
                            self._write_now(out)
                            out = None
                        else:
                            self._sending = True
                    elif self._hold and not self._wait_readable():
                        return
                if out is None:
                    continue
                # Send the reply without the lock (other connections' threads go on meanwhile).
                try:
                    sent = send(out, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    with lock:
                        self._sending = False
                        self._fatal(exc, "sending")
                    return
                if tracer:
                    tracer.emit("send", self.sock, peer=self.peer, nbytes=sent, requested=len(out))
                self.bytes_out += sent
                if sent == len(out):
                    self._sending = False
                    if not (self._wbuf or self._eof_pending):
                        continue  # the common case: all sent, nothing else queued meanwhile
                with lock:
                    self._sending = False
                    if sent < len(out) and not self._lost:
                        self._wbuf[:0] = memoryview(out)[sent:]  # the leftover goes first
                    self._resume_output()
                    if self._hold and not self._wait_readable():
                        return
        finally:
            with lock:
                if not self._lost:  # only on a bug in this module: never leave a connection behind
                    self.abort_with(None)
                self._release()

    def _resume_output(self) -> None:
        """After the reading thread's own send: hand what others queued to the flusher (lock held)."""
        if self._lost or self._sending:
            return
        if self._wbuf:
            self.engine._flusher.watch(self.fd, self)
            self._check_high_water()
        elif self._eof_pending:
            self._shutdown_write()
        elif self._closing:
            self._wake_reader()

    def _feed_buffered(self, view: memoryview, n: int) -> None:
        protocol: Any = self.protocol
        off = 0
        while off < n and not self._lost:
            target = protocol.get_buffer(n - off)
            m = min(len(target), n - off)
            target[:m] = view[off:off + m]
            protocol.buffer_updated(m)
            off += m

    def _wait_readable(self) -> bool:
        """With the lock held: wait until reading may go on; False when the connection is over."""
        while True:
            if self._lost:
                return False
            if self._closing:
                if not self._wbuf:
                    self._finalize(None)  # close() was called: nothing left to flush
                    return False
            elif not (self._eof_received or self._app_paused or self._backpressure):
                self._hold = False
                return True
            self._waiting = True
            try:
                self._cond.wait()
            finally:
                self._waiting = False

    def _on_eof(self) -> None:
        self._eof_received = True
        self._hold = True
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            self._bug(exc, "eof_received")
            return
        if self._eof_sent or not keep_open:
            self.close()

    def _release(self) -> None:
        """Close the descriptor; only the reading thread does it, once nothing else uses it."""
        if not self._released:
            self._released = True
            self.engine._flusher.unwatch(self.fd)
            self.sock.close()

    def _wake_reader(self) -> None:
        """Wake the reading thread from ``recv()`` (shutdown SHUT_RD) or from its condition wait."""
        if threading.get_ident() == self._reader:
            return
        if self._waiting:
            self._cond.notify()
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
            if self.tracer:
                self.tracer.emit("shutdown", self.sock, peer=self.peer,
                                 detail="SHUT_RD: wakes the thread blocked in recv() on this socket")
        self._cond.notify()

    # ---- writing ---------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._defer:
            # The reading thread's callback (not closing, no EOF sent, nothing buffered): keep one
            # immutable reply to send without the lock, so other threads are not held up by it.
            if self._out is None and type(data) is bytes and len(data) <= RECV_SIZE:
                self._out = data
                return
            self._undefer()
        if self._closing or self._eof_pending or self._eof_sent or not data:
            return  # writes after close are dropped, as in asyncio
        self._write_now(data)

    def _undefer(self) -> None:
        """Send the kept reply now, in order, before anything else is done to the connection."""
        self._defer = False
        out = self._out
        if out is not None:
            self._out = None
            self._write_now(out)

    def _write_now(self, data: bytes | bytearray | memoryview) -> None:
        if not self._wbuf and not self._sending:
            try:
                n = self.sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc, "sending")
                return
            if self.tracer:
                self.tracer.emit("send", self.sock, peer=self.peer, nbytes=n, requested=len(data))
            self.bytes_out += n
            if n == len(data):
                return
            self._wbuf += memoryview(data)[n:]
            self.engine._flusher.watch(self.fd, self)
        else:
            self._wbuf += data
            if self._sending:  # the reading thread is mid-send: the flusher picks this up after it
                self.engine._flusher.watch(self.fd, self)
        self._check_high_water()

    def _check_high_water(self) -> None:
        if len(self._wbuf) > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._backpressure = True
            self._hold = True
            if self.tracer:
                self.tracer.note(f"write buffer {len(self._wbuf)} B > high-water {self._high} B: the peer is not "
                                 "reading; pausing the protocol and no longer reading this peer", self.sock)
            try:
                self.protocol.pause_writing()
            except Exception as exc:
                self._bug(exc, "pause_writing")

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _on_writable(self) -> None:
        """The flusher says the socket can take more (lock held)."""
        if self._lost or self._sending or not (self._wbuf or self._eof_pending):
            self.engine._flusher.unwatch(self.fd)  # (after its send the reading thread re-checks)
            return
        try:
            n = self.sock.send(self._wbuf, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc, "sending")
            return
        if self.tracer:
            self.tracer.emit("send", self.sock, peer=self.peer, nbytes=n, requested=len(self._wbuf))
        self.bytes_out += n
        del self._wbuf[:n]
        if self._protocol_paused and len(self._wbuf) <= self._low:
            self._protocol_paused = False
            self._backpressure = False
            self._cond.notify()
            try:
                self.protocol.resume_writing()
            except Exception as exc:
                self._bug(exc, "resume_writing")
                return
        if self._wbuf:
            return
        self.engine._flusher.unwatch(self.fd)
        if self._eof_pending:
            self._shutdown_write()
        if self._closing:
            self._finalize(None)

    def write_eof(self) -> None:
        if self._eof_sent or self._eof_pending or self._closing:
            return
        if self._defer:
            self._undefer()
        if self._wbuf or self._sending:
            self._eof_pending = True
            if self._sending:
                self.engine._flusher.watch(self.fd, self)
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self._eof_pending = False
        self._eof_sent = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc, "shutting down")
            return
        if self.tracer:
            self.tracer.emit("shutdown", self.sock, peer=self.peer, detail="SHUT_WR: FIN sent, still reading")
        if self._eof_received:
            self.close()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf) + (len(self._out) if self._out is not None else 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = high if high is not None else self.engine.settings.max_buffer
        self._low = low if low is not None else self._high // 4

    # ---- flow control ----------------------------------------------------------------------------
    def pause_reading(self) -> None:
        self._app_paused = True
        self._hold = True

    def resume_reading(self) -> None:
        if self._app_paused:
            self._app_paused = False
            self._cond.notify()

    def is_reading(self) -> bool:
        return not (self._app_paused or self._backpressure or self._closing or self._eof_received)

    # ---- closing ---------------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        if self._closing:
            return
        if self._defer:
            self._undefer()
        self._closing = True
        self._hold = True
        if not self._wbuf:
            self._wake_reader()  # the reading thread finalizes (after the current callback, if it is us)

    def abort(self) -> None:
        self.abort_with(None)

    def abort_with(self, exc: BaseException | None, reset: bool = True) -> None:
        if self._lost:
            return
        if reset:  # SO_LINGER 0: close() sends RST instead of FIN and drops unsent data
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self._closing = True
        self._wbuf.clear()
        self._out = None
        self._finalize(exc, how="abort (SO_LINGER 0: RST)" if reset else str(exc or ""))

    def _fatal(self, exc: BaseException, action: str) -> None:
        if self._lost:
            return
        err = exc if not isinstance(exc, OSError) else translate_oserror(exc, f"{action} ({self.peer})")
        if self.tracer:
            self.tracer.emit("error", self.sock, peer=self.peer, detail=str(err))
        self._closing = True
        self._wbuf.clear()
        self._out = None
        self._finalize(err)

    def _bug(self, exc: Exception, where: str) -> None:
        """A protocol callback raised: report it, close this connection, serve the others."""
        self.engine.report_error(exc, f"{type(self.protocol).__name__}.{where}")
        self._fatal(exc, where)

    def _finalize(self, exc: BaseException | None, how: str = "") -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._hold = True
        self._defer = False
        self._out = None
        self.engine._flusher.unwatch(self.fd)
        if self.tracer:
            self.tracer.emit("close", self.sock, peer=self.peer, detail=how or None)
        if threading.get_ident() == self._reader:
            self._release()
        else:
            self._wake_reader()
        self.engine.connection_closed(self)
        try:
            self.protocol.connection_lost(exc)
        except Exception as bug:
            self.engine.report_error(bug, f"{type(self.protocol).__name__}.connection_lost")

    # ---- information -----------------------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "sockname":
            try:
                return self.sock.getsockname()
            except OSError:
                return default
        if name == "socket":
            return self.sock
        if name == "fd":
            return self.fd
        if name == "engine":
            return self.engine.name
        if name == "tracer":
            return self.tracer
        return default

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        return self.engine.call_later(delay, callback)


# ---- datagrams -----------------------------------------------------------------------------------
class _DatagramEndpoint(DatagramTransport, _Writable):
    """A bound UDP socket read by its own thread (``udp-<fd>``); sends are tried inline."""

    def __init__(self, engine: BlockingEngine, sock: socket.socket, protocol: DatagramProtocol) -> None:
        self.engine, self.sock, self.protocol = engine, sock, protocol
        self.tracer = engine.tracer
        self.fd = sock.fileno()
        self._closed = False
        self._pending: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._pending_bytes = 0
        self._reader = 0
        sock.setblocking(True)
        self.thread = threading.Thread(target=self._run, name=f"udp-{self.fd}", daemon=True)

    def _run(self) -> None:
        self._reader = threading.get_ident()
        lock, engine = self.engine.lock, self.engine
        buf = bytearray(65536)
        view = memoryview(buf)
        try:
            while True:
                err: OSError | None = None
                try:
                    n, addr = self.sock.recvfrom_into(buf)
                except OSError as exc:
                    n, addr, err = 0, None, exc
                with lock:
                    if self._closed:
                        return
                    if err is not None:  # ICMP errors (port unreachable) surface here
                        self._error(err, "receiving a datagram")
                        continue
                    engine.stats.datagrams_in += 1
                    if self.tracer:
                        self.tracer.emit("recvfrom", self.sock, peer=addr, nbytes=n)
                    try:
                        self.protocol.datagram_received(view[:n].tobytes(), addr)
                    except Exception as exc:
                        engine.report_error(exc, f"{type(self.protocol).__name__}.datagram_received")
        finally:
            with lock:
                engine._flusher.unwatch(self.fd)
                self.sock.close()
                engine._threads.discard(threading.current_thread())

    def _error(self, exc: OSError, action: str) -> None:
        try:
            self.protocol.error_received(translate_oserror(exc, action))
        except Exception as bug:
            self.engine.report_error(bug, f"{type(self.protocol).__name__}.error_received")

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closed:
            return
        if not self._pending:
            try:
                n = self.sock.sendto(data, _DONTWAIT, addr) if addr is not None else self.sock.send(data, _DONTWAIT)
                if self.tracer:
                    self.tracer.emit("sendto", self.sock, peer=addr, nbytes=n, requested=len(data))
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._error(exc, "sending a datagram")
                return
        if self._pending_bytes > self.engine.settings.max_buffer:
            if self.tracer:
                self.tracer.note("UDP send buffer full: datagram dropped (UDP gives no delivery guarantee)")
            return
        self._pending.append((bytes(data), addr))
        self._pending_bytes += len(data)
        self.engine._flusher.watch(self.fd, self)

    def _on_writable(self) -> None:
        while self._pending and not self._closed:
            data, addr = self._pending[0]
            try:
                if addr is not None:
                    self.sock.sendto(data, _DONTWAIT, addr)
                else:
                    self.sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._error(exc, "sending a datagram")
            self._pending.popleft()
            self._pending_bytes -= len(data)
        self.engine._flusher.unwatch(self.fd)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.sock.getsockname()
        if name == "socket":
            return self.sock
        if name == "engine":
            return self.engine.name
        if name == "fd":
            return self.fd
        if name == "tracer":
            return self.tracer
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop serving; the reading thread closes the socket (woken by shutdown())."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self.engine._flusher.unwatch(self.fd)
        if self.tracer:
            self.tracer.emit("close", self.sock)
        if self.thread.is_alive():
            with contextlib.suppress(OSError):  # ENOTCONN on UDP, but it wakes recvfrom() all the same
                self.sock.shutdown(socket.SHUT_RDWR)
        else:
            self.sock.close()
        if self in self.engine._endpoints:
            self.engine._endpoints.remove(self)
        try:
            self.protocol.connection_lost(None)
        except Exception as bug:
            self.engine.report_error(bug, f"{type(self.protocol).__name__}.connection_lost")

    def abort(self) -> None:
        self.close()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        return self.engine.call_later(delay, callback)


# ---- the engines ---------------------------------------------------------------------------------
class BlockingEngine(Engine):
    """What the iterative, threads and pool engines share: accept loop, timers, flusher, transports.

    Subclasses decide what happens to an accepted connection (:meth:`_handle_accepted`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = _Clock(self)
        self._flusher = _Flusher(self)
        self._listeners: list[_Listener] = []
        self._endpoints: list[_DatagramEndpoint] = []
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

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
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

    def _refuse(self, conn: socket.socket, peer: Any, why: str) -> None:
        if self.tracer:
            self.tracer.note(f"refusing {peer}: {why}", conn)
        try:
            if not self.shutting_down:
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
               server_hostname: str | None = None, admitted: bool = True) -> None:
        """Open the connection (``connection_made``) and read it until it ends, on this thread."""
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
                protocol = TLSProtocol(protocol, ssl_context, server_side=server_side,
                                       server_hostname=server_hostname)
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

    def _sweep_idle(self) -> None:
        # The reading threads only count bytes; the sweep turns "bytes_in moved" into a timestamp
        # (one clock read per sweep instead of one per recv; precision: one sweep interval).
        now = time.monotonic()
        for conn in self.connections:
            if isinstance(conn, StreamTransport) and conn.bytes_in != conn._seen_in:
                conn._seen_in = conn.bytes_in
                conn.last_activity = now
        super()._sweep_idle()

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

    def serve_datagram(self, sock: socket.socket, protocol_factory: DatagramFactory) -> _DatagramEndpoint:
        with self.lock:
            endpoint = _DatagramEndpoint(self, sock, protocol_factory())
            self._endpoints.append(endpoint)
            endpoint.protocol.connection_made(endpoint)
            self._threads.add(endpoint.thread)
            endpoint.thread.start()
        return endpoint

    def connect_stream(self, endpoint: Endpoint, protocol_factory: ProtocolFactory, *,
                       ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                       timeout: float = 10.0,
                       on_error: Callable[[BaseException], None] | None = None) -> None:
        def body() -> None:
            try:
                sock = connect_tcp(endpoint, timeout=timeout, tracer=self.tracer)
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
                        server_hostname=server_hostname or endpoint.host, admitted=False)

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
        deadline = time.monotonic() + _JOIN_TIMEOUT
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
            self._refuse(conn, peer, "shutting down")
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
                self._refuse(conn, peer, why)
                return
            body = self._serve_thread(lambda: self._serve(conn, peer, listener.factory, listener.ssl_context))
            if not self._start_thread(body, f"conn-{conn.fileno()}"):
                self._starting -= 1
                self.stats.accepted -= 1
                self.stats.refused += 1
                self._refuse(conn, peer, "no more threads")


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

    def _handle_accepted(self, listener: _Listener, conn: socket.socket, peer: Any) -> None:
        s = self.settings
        with self.lock:
            if len(self._queue) >= s.queue_size:
                self.stats.refused += 1
                self.stats.extra["queue_full"] = self.stats.extra.get("queue_full", 0) + 1
                self._refuse(conn, peer, f"the pool's queue is full (queue_size={s.queue_size}, "
                                         f"workers={s.workers} busy)")
                return
            if not self.admit():
                why = "shutting down" if self.shutting_down else f"max_connections={s.max_connections} reached"
                self._refuse(conn, peer, why)
                return
            self._queue.append((conn, peer, listener))
            if self._idle:
                self._idle -= 1  # counted here so that a burst wakes as many workers as it needs
                self._work.notify()
            elif self._workers < s.workers and self._start_thread(self._serve_thread(self._worker),
                                                                  f"pool-worker-{self._workers + 1}"):
                self._workers += 1

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
                self.tracer.note(f"closing queued connection from {peer}: {why}", conn)
            conn.close()

    def _close_workers(self) -> None:
        self._drop_queue("the engine is closing")
        self._pool_closed = True
        self._idle = 0
        self._work.notify_all()
