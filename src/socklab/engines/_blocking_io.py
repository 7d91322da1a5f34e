"""The moving parts under the blocking engines: the stream transport.

Why this exists: :mod:`socklab.engines.blocking` reads as the three engines (accept, then serve
one client / a thread per client / a pool); this module holds what they share underneath:

- :class:`StreamTransport`: one connected blocking socket read by one thread (``recv`` of at
  most 16-64 KiB: a fresh bytes object, no copy), then the protocol's callback under
  ``engine.lock``; ``write`` never blocks (``send(MSG_DONTWAIT)``, the leftover buffered for the
  flusher); only the reading thread closes the socket - other threads wake it with ``shutdown(SHUT_RD)``.
- the timer thread, the thread that finishes partial sends and the UDP endpoints (a reading
  thread each) are in :mod:`socklab.engines._blocking_threads`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from socklab.core.errors import LocalProtocolError
from socklab.core.protocol import BufferedProtocol, Protocol
from socklab.core.transport import Transport
from socklab.engines._blocking_threads import _Writable
from socklab.engines._blocking_tls import ThreadTLSProtocol
from socklab.engines._stream import RECV_SIZE, ConnState, Event, StreamCore
from socklab.engines.base import Connection, Timer, socket_extra_info

if TYPE_CHECKING:
    from socklab.engines.blocking import BlockingEngine

__all__ = ["RECV_SIZE", "StreamTransport", "Timer"]

RECV_START = 16 * 1024  # a connection's first buffer; it grows to RECV_SIZE once a recv fills it
_DONTWAIT = socket.MSG_DONTWAIT
_OPEN, _READ_SHUT, _CLOSING = ConnState.OPEN, ConnState.READ_SHUT, ConnState.CLOSING


# ---- stream connections --------------------------------------------------------------------------
class StreamTransport(StreamCore, Transport, Connection, _Writable):
    """One connected blocking socket, read by one thread; see the module docstring.

    The rules (state, water marks, abort, connection_lost once) are :class:`StreamCore`'s; this
    class is how the bytes move with a thread per connection.

    Every method except :meth:`read_loop` runs with ``engine.lock`` held (protocol callbacks,
    timers and the flusher all hold it), so protocols need no locks.
    """

    protocol: Protocol
    engine: BlockingEngine

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
        self._init_core(engine.settings.max_buffer)
        # True when the reading thread must take the locked path: a flag below may stop reading,
        # or output is queued (_wbuf) or the write side is shut (_eof_*). Set by whoever makes it
        # so; recomputed only by _wait_readable, under the lock.
        self._hold = False
        self._released = False
        self._eof_pending = False  # write_eof() with output queued: the FIN follows the flush
        self._buffered = isinstance(protocol, BufferedProtocol)
        self._active = False  # set by the reading thread on each message; the idle sweep clears it

    # ---- reading (the connection's own thread) ---------------------------------------------------
    def read_loop(self) -> None:
        """Receive until the connection ends, then close the socket. Runs on the reading thread.

        The hot path, per message: ``recv`` (no lock) -> lock -> ``data_received`` (its
        first write is kept) -> unlock -> ``send`` of that reply (no lock). When
        the protocol declared ``zero_copy_echo`` (untraced echo: no protocol code runs)
        the lock is skipped too, unless another thread is at work on this connection.
        """
        lock = self.engine.lock
        size = RECV_START  # 10,000 chatty connections need 160 MB of buffers, not 640
        buffered = self._buffered
        tracer = self.tracer
        deliver = self._feed_buffered if self._buffered else None
        data_received = self.protocol.data_received
        # A protocol that declared itself an echo (core.protocol.zero_copy_echo), untraced, runs
        # no protocol code: the reply is the message itself, sent without taking the engine lock -
        # and sent from the buffer it was read into (no bytes object, no malloc per message).
        direct = deliver is None and not tracer and getattr(self.protocol, "zero_copy_echo", False)
        into = buffered or direct  # read with recv_into this connection's buffer
        # The same declaration under TLS (engines._blocking_tls): once the handshake is done the
        # reply is decrypted and encrypted back here, without the engine lock.
        tls = self.protocol if isinstance(self.protocol, ThreadTLSProtocol) else None
        claimed = False  # the TLS echo left its loop with the socket claimed (_sending)
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
                            self._unlocked_send_failed(exc)
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
                elif tls is not None and tls.echoing:
                    # The TLS echo: as the plain one above, with the records decrypted and
                    # encrypted back by tls.echo() (None: it declined, the locked path takes the
                    # message). A close_notify or a bad record ends it: tls.end_echo() says so.
                    while True:
                        try:
                            data = recv(size)
                        except OSError as exc:
                            rerr = exc
                            break
                        n = len(data)
                        if not n:
                            break
                        self._sending = True  # claimed first, then look (see the plain echo above)
                        if self._busy or self._hold:
                            claimed = True
                            break
                        out = tls.echo(data, self)
                        if out is None:
                            claimed = True
                            break
                        self._active = True
                        try:
                            sent = send(out, _DONTWAIT) if out else 0
                        except (BlockingIOError, InterruptedError):
                            sent = 0
                        except OSError as exc:
                            self._unlocked_send_failed(exc)
                            return
                        if n == size < RECV_SIZE:  # a bulk sender: read in bigger bites from now on
                            size = RECV_SIZE
                        if sent != len(out):
                            if not self._after_send(memoryview(out)[sent:]):
                                return
                        else:
                            self._sending = False
                            if self._hold and not self._after_send(None):
                                return
                        if not tls.echoing:  # the locked path says why it stopped, then reads on
                            data = b""
                            data_received = tls.end_echo
                            break
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
                    elif claimed:  # (the TLS echo's)
                        claimed = self._sending = False
                        self._resume_output()
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
                    self._defer = not (self._wbuf or self._eof_pending) and self._state is _OPEN
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
                    self._unlocked_send_failed(exc)
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
                self._close_fd()

    def _unlocked_send_failed(self, exc: OSError) -> None:
        """The reading thread's send without the lock failed: release its claim, end the connection."""
        with self.engine.lock:
            self._sending = False
            self._fatal(exc, "sending")

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
        elif self._state is _CLOSING:
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
            state = self._state
            if state is ConnState.CLOSED:
                return False
            if state is _CLOSING:
                if not self._wbuf:
                    self._finalize(None)  # close() was called: nothing left to flush
                    return False
            elif self._read_wanted():
                self._hold = bool(self._wbuf) or self._eof_pending or state is not _OPEN
                return True
            self._waiting = True
            try:
                self._cond.wait()
            finally:
                self._waiting = False

    def _on_eof(self) -> None:
        both = self._to(Event.PEER_EOF) is _CLOSING  # our FIN was sent already
        self._hold = True
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            self._bug(exc, "eof_received")
            return
        if both or not keep_open:
            self._close_now()

    def _close_fd(self) -> None:
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
        if not (self._state is _OPEN or self._state is _READ_SHUT) or self._eof_pending or not data:
            return  # writes after close or write_eof are dropped, as in asyncio
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
        if not self._check_low_water() or self._wbuf:
            return
        self.engine._flusher.unwatch(self.fd)
        if self._eof_pending:
            self._shutdown_write()
        if self._state is _CLOSING:
            self._finalize(None)

    def write_eof(self) -> None:
        if not (self._state is _OPEN or self._state is _READ_SHUT) or self._eof_pending:
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

    def _shutdown_write(self) -> None:
        """The FIN, once the buffer drained; when the peer's FIN came already, the connection closes."""
        self._eof_pending = False
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc, "shutting down")
            return
        if self.tracer:
            self.tracer.emit("shutdown", self.sock, peer=self.peer, detail="SHUT_WR: FIN sent, still reading")
        if self._to(Event.WRITE_EOF) is _CLOSING:
            self._close_now()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf) + (len(self._out) if self._out is not None else 0)

    # ---- flow control and closing: the rules are StreamCore's; these are the hooks -----------------
    def _reading_changed(self) -> None:
        self._hold = True  # the reading thread takes the locked path and re-decides (_wait_readable)
        self._cond.notify()

    def is_reading(self) -> bool:
        return self._read_wanted()

    def close(self) -> None:
        if self._state is _CLOSING or self._state is ConnState.CLOSED:
            return
        self._close_now()

    def _close_now(self) -> None:
        if self._defer:
            self._undefer()
        self._to(Event.CLOSE)
        self._hold = True
        if not self._wbuf:
            self._wake_reader()  # the reading thread finalizes (after the current callback, if it is us)

    def _drop_output(self) -> None:
        self._wbuf.clear()
        self._out = None

    def detach(self) -> socket.socket:
        """As :meth:`StreamCore.detach`, from the connection's own callbacks only: another thread
        could wake the reading thread from ``recv()`` only with ``shutdown``, which would end the
        connection for the new owner too."""
        if threading.get_ident() != self._reader:
            raise LocalProtocolError("on the blocking engines detach() is called from the connection's callbacks")
        if self._defer:
            self._undefer()
        return StreamCore.detach(self)

    def _bug(self, exc: Exception, where: str) -> None:
        """A protocol callback raised: report it, close this connection, serve the others."""
        self._protocol_failed(exc, where)

    def _let_go(self, how: str) -> None:
        self._hold = True
        self._defer = False
        self._out = None
        self.engine._flusher.unwatch(self.fd)
        if self.tracer:
            self.tracer.emit("close", self.sock, peer=self.peer, detail=how or None)
        if threading.get_ident() == self._reader:
            self._close_fd()
        else:
            self._wake_reader()

    # ---- information -----------------------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return socket_extra_info(name, default, sock=self.sock, fd=self.fd, engine=self.engine.name,
                                 tracer=self.tracer, peer=self.peer)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.engine.call_later(delay, callback)
