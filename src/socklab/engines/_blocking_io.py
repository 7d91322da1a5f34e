"""The moving parts under the blocking engines: connection transports, the timer and flusher threads.

Why this exists: :mod:`socklab.engines.blocking` reads as the three engines (accept, then serve
one client / a thread per client / a pool); this module holds what they share underneath:

- :class:`StreamTransport`: one connected blocking socket read by one thread (``recv`` of at
  most 16-64 KiB: a fresh bytes object, no copy), then the protocol's callback under
  ``engine.lock``; ``write`` never blocks (``send(MSG_DONTWAIT)``, the leftover buffered for the
  flusher); only the reading thread closes the socket - other threads wake it with ``shutdown(SHUT_RD)``.
- :class:`DatagramEndpoint`: a UDP socket read by its own thread, sending inline.
- :class:`Clock`: one thread running ``call_later``/``call_soon_threadsafe`` callbacks under the
  engine lock (a heap and a condition variable; no polling).
- :class:`Flusher`: one thread finishing partial sends for every connection (epoll for
  writability), so a client that does not read never blocks the thread holding the lock.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from socklab.core.errors import translate_oserror
from socklab.core.protocol import BufferedProtocol, DatagramProtocol, Protocol
from socklab.core.transport import Transport
from socklab.engines._datagram import DatagramEndpointBase
from socklab.engines.base import Connection, HalfCloseMixin, Timer, socket_extra_info

if TYPE_CHECKING:
    from socklab.engines.blocking import BlockingEngine

__all__ = ["RECV_SIZE", "Clock", "DatagramEndpoint", "Flusher", "StreamTransport", "Timer"]

RECV_SIZE = 64 * 1024  # below glibc's 128 KiB mmap threshold (see PERF_NOTES)
RECV_START = 16 * 1024  # a connection's first buffer; it grows to RECV_SIZE once a recv fills it
JOIN_TIMEOUT = 5.0  # seconds close() waits for the engine's threads
_DONTWAIT = socket.MSG_DONTWAIT
_LINGER_RST = struct.pack("ii", 1, 0)


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


# ---- stream connections --------------------------------------------------------------------------
class StreamTransport(HalfCloseMixin, Transport, Connection, _Writable):
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
        self.last_activity = time.monotonic()  # refreshed by the idle sweep from _active
        self._reader = threading.get_ident()  # the thread that reads - and alone closes - the socket
        self._cond = threading.Condition(engine.lock)
        self._waiting = False  # the reading thread waits on _cond (not in recv())
        self._defer = False  # inside the reading thread's data_received: the first write may wait
        self._out: bytes | None = None  # ... here, to be sent once the lock is released
        self._sending = False  # the reading thread is sending ``_out`` without the lock
        self._busy = False  # another thread is in write/write_eof (see read_loop's unlocked claim)
        self._wbuf = bytearray()
        # True when the reading thread must take the locked path: a flag below may stop reading,
        # or output is queued (_wbuf) or the write side is shut (_eof_*). Set by whoever makes it
        # so; recomputed only by _wait_readable, under the lock.
        self._hold = False
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
        self._active = False  # set by the reading thread on each message; the idle sweep clears it

    # ---- reading (the connection's own thread) ---------------------------------------------------
    def read_loop(self) -> None:
        """Receive until the connection ends, then close the socket. Runs on the reading thread.

        The hot path, per message: ``recv`` (no lock) -> lock -> ``data_received`` (its
        first write is kept) -> unlock -> ``send`` of that reply (no lock). When
        ``data_received`` *is* this transport's ``write`` (untraced echo: no protocol code runs)
        the lock is skipped too, unless another thread is at work on this connection.
        """
        lock = self.engine.lock
        size = RECV_START  # 10,000 chatty connections need 160 MB of buffers, not 640
        buffered = self._buffered
        tracer = self.tracer
        deliver = self._feed_buffered if self._buffered else None
        data_received = self.protocol.data_received
        # A protocol whose data_received *is* this transport's write (untraced echo) runs no
        # protocol code: the reply is the message itself, sent without taking the engine lock -
        # and sent from the buffer it was read into (no bytes object, no malloc per message).
        direct = deliver is None and not tracer and data_received == self.write
        into = buffered or direct  # read with recv_into this connection's buffer
        buf = bytearray(size if into else 0)  # otherwise recv() makes a fresh bytes object: cheaper than a copy
        view = memoryview(buf)
        recv, recv_into, send = self.sock.recv, self.sock.recv_into, self.sock.send
        data = b""
        out: bytes | memoryview | None
        try:
            with lock:
                if self._hold and not self._wait_readable():
                    return
            rerr: OSError | None = None
            while True:
                n = -1  # nothing read yet
                if direct:
                    # The untraced echo, in as few steps as the plain server it is measured against:
                    # no lock, no protocol call, no copy. Anything else leaves this inner loop for
                    # the general path below, with the message just read (n) or the error.
                    while True:
                        try:
                            n = recv_into(buf)
                        except OSError as exc:
                            rerr = exc
                            break
                        if not n:
                            break
                        # Claim the socket first, then look (Dekker's handshake with _busy, set by
                        # write/write_eof on other threads before they look at _sending): either
                        # they see _sending and queue behind this reply, or this thread sees _busy
                        # and takes the locked path - as it does for anything pending (_hold).
                        self._sending = True
                        if self._busy or self._hold:
                            break
                        self._active = True
                        try:
                            sent = send(view[:n], _DONTWAIT)
                        except (BlockingIOError, InterruptedError):
                            sent = 0
                        except OSError as exc:
                            with lock:
                                self._sending = False
                                self._fatal(exc, "sending")
                            return
                        if sent != n:  # the kernel took part of it: the rest goes first in the queue
                            if not self._after_send(view[sent:n]):
                                return
                            continue
                        self._sending = False
                        if n == size and size < RECV_SIZE:  # a bulk sender: read in bigger bites from now on
                            size = RECV_SIZE
                            buf = bytearray(size)
                            view = memoryview(buf)
                        if self._hold and not self._after_send(None):  # queued meanwhile: hand it on
                            return
                try:
                    if rerr is not None:
                        raise rerr
                    if n < 0:
                        if into:
                            n = recv_into(buf)
                        else:  # a fresh bytes object: cheaper than recv_into + a copy out of the buffer
                            data = recv(size)
                            n = len(data)
                except OSError as exc:
                    with lock:
                        if not self._hold or self._wait_readable():
                            self._fatal(exc, "receiving")
                        return
                with lock:
                    if direct and n:  # the claim failed: give the socket back; hand on what others queued
                        self._sending = False
                        self._resume_output()
                        data = bytes(view[:n])  # data_received (write) may keep it: copy out of the buffer
                    if self._hold and not self._wait_readable():
                        return
                    if tracer:
                        tracer.emit("recv", self.sock, peer=self.peer, nbytes=n, requested=size,
                                    notes=self.boundary_notes(view[:n] if into else data) if n else None)
                    if not n:
                        self._on_eof()
                        if self._hold and not self._wait_readable():
                            return
                        continue
                    self._active = True
                    self._defer = not (self._wbuf or self._eof_sent or self._eof_pending)
                    try:
                        if deliver is None:
                            data_received(data)
                            data = b""  # an idle connection keeps no 64 KiB message alive
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
                if n == size < RECV_SIZE:  # a bulk sender: read in bigger bites from now on
                    size = RECV_SIZE
                    if into:  # (a view of the old buffer in ``out`` keeps that one alive until sent)
                        buf = bytearray(size)
                        view = memoryview(buf)
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
                if sent == len(out):
                    self._sending = False
                    if not self._hold:
                        continue  # the common case: all sent, nothing else queued meanwhile
                if not self._after_send(memoryview(out)[sent:] if sent < len(out) else None):
                    return
        finally:
            with lock:
                if not self._lost:  # only on a bug in this module: never leave a connection behind
                    self.abort_with(None)
                self._release()

    def _after_send(self, leftover: memoryview | None) -> bool:
        """After a reply sent without the lock: queue its leftover first, hand on what others queued.

        Returns False when the connection is over (the reading thread returns).
        """
        with self.engine.lock:
            self._sending = False
            if leftover is not None and not self._lost:
                self._wbuf[:0] = leftover  # (a copy: the reading buffer is reused)
                self._hold = True
            self._resume_output()
            return not self._hold or self._wait_readable()

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
                self._hold = bool(self._wbuf) or self._eof_pending or self._eof_sent
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
        # _busy first, _sending read after it: the other half of read_loop's unlocked claim.
        self._busy = True
        try:
            self._write_now_busy(data)
        finally:
            self._busy = False

    def _write_now_busy(self, data: bytes | bytearray | memoryview) -> None:
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
            if n == len(data):
                return
            self._wbuf += memoryview(data)[n:]
            self._hold = True
            self.engine._flusher.watch(self.fd, self)
        else:
            self._wbuf += data
            self._hold = True
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
                                 "reading; pausing the protocol and no longer reading this peer", self.sock,
                                 peer=self.peer)
            try:
                self.protocol.pause_writing()
            except Exception as exc:
                self._bug(exc, "pause_writing")

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _on_writable(self) -> None:
        """The flusher says the socket can take more (lock held)."""
        self._busy = True  # (as in _write_now: it sends, or sends the FIN)
        try:
            self._on_writable_busy()
        finally:
            self._busy = False

    def _on_writable_busy(self) -> None:
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
        del self._wbuf[:n]
        if self._protocol_paused and len(self._wbuf) <= self._low:
            self._protocol_paused = False
            self._backpressure = False
            self._cond.notify()
            if self.tracer:
                self.tracer.note(f"write buffer {len(self._wbuf)} B <= low-water {self._low} B: the peer caught "
                                 "up; resuming the protocol and reading this peer again", self.sock,
                                 peer=self.peer)
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
        self._busy = True  # (as in _write_now)
        self._hold = True  # the reading thread's replies now take the locked path (and are dropped)
        try:
            if self._wbuf or self._sending:
                self._eof_pending = True
                if self._sending:
                    self.engine._flusher.watch(self.fd, self)
            else:
                self._shutdown_write()
        finally:
            self._busy = False

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
        return socket_extra_info(name, default, sock=self.sock, fd=self.fd, engine=self.engine.name,
                                 tracer=self.tracer, peer=self.peer)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.engine.call_later(delay, callback)


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
        buf = bytearray(65536)
        view = memoryview(buf)
        try:
            while True:
                err: OSError | None = None
                try:
                    n, addr = self.sock.recvfrom_into(buf)
                except OSError as exc:
                    n, addr, err = 0, None, exc
                with engine.lock:
                    if self._closed:
                        return
                    if err is not None:  # ICMP errors (port unreachable) surface here
                        self._error(err, "receiving a datagram")
                        continue
                    self._deliver(view[:n].tobytes(), addr)
        finally:
            with engine.lock:
                engine._flusher.unwatch(self.fd)
                self.sock.close()
                engine._threads.discard(threading.current_thread())

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
