"""The asyncio/uvloop bridge for one stream connection: an asyncio protocol to the loop, a socklab
transport to the app.

Why this exists: :mod:`socklab.engines.aio` is the two engines (the loop, listeners, UDP, the
shared policies); this module is the per-connection adapter they hand to the loop, in four
variants chosen once per connection: plain (``_Stream``), traced (``_TracedStream``), and for
asyncio the ``recv_into`` read path (``_BufferedStream``, ``_TracedBufferedStream``). See the
engines' module docstring for why each exists and what it costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, cast

from socklab.core.errors import LocalProtocolError, translate_oserror
from socklab.core.protocol import BufferedProtocol, Protocol
from socklab.core.trace import format_addr, tcp_state
from socklab.core.transport import TimerHandle, Transport
from socklab.engines._stream import RECV_SIZE, ConnState, ConnStateMachine, Event
from socklab.engines.base import Connection, ProtocolFactory, ReadPauseMixin, grow_socket_buffers

if TYPE_CHECKING:
    from socklab.engines.aio import _AioEngine

__all__ = ["RECV_SIZE"]

_LINGER_RST = struct.pack("ii", 1, 0)
_SENDFILE_MAX = 1 << 30
# struct tcp_info (linux/tcp.h): 8 one-byte fields, 9 u32s, then tcpi_last_data_sent, _last_ack_sent,
# tcpi_last_data_recv (milliseconds since the last data segment arrived).
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_LAST_DATA_RECV = 52
_TCP_INFO_LEN = 56
_HIDDEN_NOTE = ("the {loop} event loop makes the system calls itself and hides them: this trace shows "
                "transport callbacks instead (level=transport)")


def _drop(data: Any) -> None:
    """What ``write`` becomes after ``close``/``write_eof``: the bytes are dropped."""


def _last_data_recv(sock: Any) -> float | None:
    """Seconds since data last arrived on a TCP socket (Linux ``TCP_INFO``), or ``None``."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    return float(struct.unpack_from("I", raw, _LAST_DATA_RECV)[0]) / 1000.0


def _shrink_tls_read_buffer(t: asyncio.BaseTransport) -> None:
    """asyncio's TLS layer reads ciphertext with ``recv_into`` a 256 KiB buffer: make it 64 KiB.

    (Its buffer is allocated once, so this is not the per-read mmap, but socklab's rule is one:
    no receive of 128 KiB or more anywhere.) CPython's ``SSLProtocol`` keeps the buffer and its
    cap in ``_ssl_buffer``/``max_size``; uvloop's are C fields and are left alone (it reads into
    one preallocated buffer). Runs in ``connection_made``, after the handshake bytes were copied out:
    the handshake's own first reads (one or two per connection) still use the loop's buffer.
    """
    sp = getattr(t, "_ssl_protocol", None)
    if sp is None or not isinstance(getattr(sp, "_ssl_buffer", None), bytearray) or \
            getattr(sp, "max_size", 0) <= RECV_SIZE:
        return
    sp.max_size = RECV_SIZE
    sp._ssl_buffer = bytearray(RECV_SIZE)
    sp._ssl_buffer_view = memoryview(sp._ssl_buffer)


def _error(exc: BaseException | None, action: str) -> BaseException | None:
    return translate_oserror(exc, action) if isinstance(exc, OSError) else exc


# ---- one stream connection: an asyncio protocol to the loop, a socklab transport to the app -------
class _Stream(ConnStateMachine, ReadPauseMixin, asyncio.BaseProtocol, Transport, Connection):
    """Bridges one loop connection to one socklab protocol.

    It has ``asyncio.Protocol``'s methods without being an ``asyncio.Protocol`` instance: uvloop's
    TLS layer gives a protocol that *is* one the copying read path (``SSLObject.read(256 KiB)``, a
    fresh object above glibc's mmap threshold per record) even when it has ``get_buffer``.

    Server side (``factory`` given): admission is decided in ``connection_made`` - after the TLS
    handshake on TLS listeners - and only an admitted connection gets an app protocol.
    """

    protocol: Protocol

    def __init__(self, engine: _AioEngine, factory: ProtocolFactory, server_side: bool) -> None:
        self.engine = engine
        self.tracer = engine.tracer
        self._factory = factory
        self._server_side = server_side
        self._t: asyncio.Transport | None = None
        self._app_data_received: Callable[[bytes], None] = _drop
        self._peer: Any = None
        self._fdno: int | None = None
        self.active = False
        self.kernel_clock: Any = None  # a socket whose TCP_INFO tells the last receive (see _read_directly)
        self.last_activity = time.monotonic()
        self._refused = False
        self._made = False
        self._state = ConnState.OPEN  # changed only through engines/_stream.py's TRANSITIONS
        self._aborted = False
        self._abort_exc: BaseException | None = None
        self._app_paused = False
        self._backpressure = False
        self._read_when_full = False  # keep_reading_when_full(): back-pressure does not stop reading
        self._reading = True
        self._tls = False

    # ---- loop side -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self._t = t
        engine = self.engine
        self._peer = t.get_extra_info("peername")
        self._fdno = self._fd()
        self._tls = t.get_extra_info("sslcontext") is not None
        if self._tls:
            _shrink_tls_read_buffer(t)
        if self._server_side:
            if self.tracer:
                self.tracer.emit("accept", fd=self._fdno, peer=self._peer, level="transport",
                                 detail="connection_made (the loop accepted it)")
            if not engine.admit():
                self._refuse(t)
                return
        elif self.tracer:
            self.tracer.emit("connect", fd=self._fdno, peer=self._peer, level="transport",
                             detail="connection_made (connected)")
        try:
            app = self._factory()
        except Exception as exc:  # a bug in the app's factory: refuse this one, serve the others
            engine.report_error(exc, "the protocol factory")
            t.abort()
            return
        self.protocol = app
        self._bind(t, app)
        t.set_write_buffer_limits(high=engine.settings.max_buffer)
        self._made = True
        self.last_activity = time.monotonic()
        engine.connection_opened(self)
        try:
            app.connection_made(self)
        except Exception as exc:  # a bug in the app: close this connection, serve the others
            engine.report_error(exc, f"{type(app).__name__}.connection_made")
            self.abort_with(exc)

    def _bind(self, t: asyncio.Transport, app: Protocol) -> None:
        if isinstance(app, BufferedProtocol):
            self._app_data_received = self._feed_buffered
        else:
            self._app_data_received = app.data_received
        if self.tracer is None:  # the hot path: the app calls the loop's methods directly
            self.write = t.write  # type: ignore[method-assign]
            self.get_write_buffer_size = t.get_write_buffer_size  # type: ignore[method-assign]
            if self.engine.direct_reads and not isinstance(app, BufferedProtocol):
                self._read_directly(t, app)

    def _read_directly(self, t: asyncio.Transport, app: Protocol) -> None:
        """Let the loop call the app's ``data_received`` itself: no adapter frame per read.

        Only for plain TCP, where the idle sweep can ask the kernel instead of a per-read flag:
        TCP_INFO's ``tcpi_last_data_recv`` is the milliseconds since data last arrived.
        """
        sock = t.get_extra_info("socket")
        if self._tls or sock is None or \
                sock.family not in (socket.AF_INET, socket.AF_INET6) or _last_data_recv(sock) is None:
            return
        self.data_received = app.data_received  # type: ignore[method-assign]
        self.kernel_clock = sock
        t.set_protocol(self)  # uvloop caches protocol.data_received: make it cache the app's

    def _feed_buffered(self, data: bytes) -> None:
        """Hand bytes to a socklab BufferedProtocol through its own buffer."""
        app = cast(BufferedProtocol, self.protocol)
        view = memoryview(data)
        while view:
            buf = app.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            app.buffer_updated(n)
            view = view[n:]

    def _refuse(self, t: asyncio.Transport) -> None:
        self._refused = True
        engine = self.engine
        if self.tracer:
            self.tracer.note(f"refusing {format_addr(self._peer)}: max_connections={engine.settings.max_connections} "
                             "reached (or shutting down)", fd=self._fd(), level="transport")
        if not engine.shutting_down:
            t.write(engine.settings.overflow_message)
        t.close()

    def data_received(self, data: bytes) -> None:
        self.active = True
        self._app_data_received(data)

    def eof_received(self) -> bool | None:
        self.active = True
        both = self._to(Event.PEER_EOF) is ConnState.CLOSING  # our FIN went first
        if not self._made:
            return None
        keep_open = self.protocol.eof_received()
        if keep_open and (both or self._tls):
            # both directions are finished: close (as socklab's reactor does); TLS cannot stay
            # half-open here (and the loop would log a warning for trying)
            return None
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._made or self._state is ConnState.CLOSED:
            return
        self._to(Event.LOST)
        self.write = _drop  # type: ignore[method-assign]
        err = self._abort_exc if self._aborted else _error(exc, f"talking to {self._peer}")
        if self.tracer:
            self.tracer.emit("close", fd=self._fdno, peer=self._peer, level="transport",
                             detail=f"connection_lost({err or ''})")
        self.engine.connection_closed(self)
        self.protocol.connection_lost(err)

    def pause_writing(self) -> None:
        self._backpressure = not self._read_when_full
        self._sync_reading()
        if self.tracer:
            self.tracer.note(f"write buffer above the high-water mark ({self.engine.settings.max_buffer} B): "
                             "the peer is not reading; pausing the protocol" + ("" if self._read_when_full else
                                                                              " and no longer reading this peer"),
                             fd=self._fdno, peer=self._peer, level="transport")
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self._backpressure = False
        self._sync_reading()
        if self.tracer:
            self.tracer.note("write buffer below the low-water mark: the peer caught up; resuming the protocol "
                             "and reading this peer again", fd=self._fdno, peer=self._peer, level="transport")
        self.protocol.resume_writing()

    def _sync_reading(self) -> None:
        t = self._t
        want = not (self._app_paused or self._backpressure)
        if t is None or want == self._reading or t.is_closing():
            return
        self._reading = want
        if want:
            t.resume_reading()
        else:
            t.pause_reading()

    # ---- app side (socklab Transport) ------------------------------------------------------------
    def _transport(self) -> asyncio.Transport:
        assert self._t is not None, "the transport is used before connection_made"
        return self._t

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport().write(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        if self._state is not ConnState.OPEN and self._state is not ConnState.READ_SHUT:
            return
        t = self._transport()
        if self._tls:
            raise LocalProtocolError("TLS connections cannot half-close here (can_write_eof() is False)")
        if self.tracer:
            self.tracer.emit("shutdown", fd=self._fdno, peer=self._peer, level="transport",
                             detail="write_eof: FIN after the buffered data, still reading")
        t.write_eof()
        self.write = _drop  # type: ignore[method-assign]
        if self._to(Event.WRITE_EOF) is ConnState.CLOSING:  # the peer's FIN came first: both done
            t.close()

    def can_write_eof(self) -> bool:
        return self._transport().can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport().get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport().set_write_buffer_limits(high, low)

    def is_reading(self) -> bool:
        return self._reading and not self.is_closing()

    def is_closing(self) -> bool:
        return self._state is ConnState.CLOSED or self._t is None or self._t.is_closing()

    def close(self) -> None:
        self.write = _drop  # type: ignore[method-assign]
        self._to(Event.CLOSE)
        if self._t is not None:
            self._t.close()

    def abort(self) -> None:
        self.abort_with(None)

    def abort_with(self, exc: BaseException | None, reset: bool = True) -> None:
        t = self._t
        if t is None or self._state is ConnState.CLOSED:
            return
        self._aborted = True
        self._abort_exc = exc
        self.write = _drop  # type: ignore[method-assign]
        if reset:  # SO_LINGER 0: close() sends RST instead of FIN and drops unsent data
            sock = t.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        t.abort()

    def _fd(self) -> int | None:
        sock = self._t.get_extra_info("socket") if self._t is not None else None
        try:
            return int(sock.fileno()) if sock is not None else None
        except (OSError, ValueError):
            return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "engine":
            return self.engine.name
        if name == "tracer":
            return self.tracer
        if name == "fd":
            fd = self._fd()
            return default if fd is None else fd
        return self._transport().get_extra_info(name, default)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.engine.loop.call_later(delay, callback)

    # ---- capabilities (socklab.core.transport); sendfile and splice use the fallbacks ---------------
    def _setsockopt(self, level: int, name: int, value: int) -> bool:
        sock = None if self._t is None else self._t.get_extra_info("socket")
        if sock is None:
            return False
        try:
            sock.setsockopt(level, name, value)
        except OSError:
            return False
        return True

    def set_cork(self, on: bool) -> bool:
        cork = getattr(socket, "TCP_CORK", 0)
        if not cork or self._tls or not isinstance(self._peer, tuple):
            return False
        return self._setsockopt(socket.IPPROTO_TCP, cork, 1 if on else 0)

    def set_recv_lowat(self, nbytes: int) -> bool:
        if self._tls:  # the loop reads ciphertext: a byte count of plaintext means nothing there
            return False
        return self._setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, nbytes))

    def set_buffer_sizes(self, rcvbuf: int | None = None, sndbuf: int | None = None) -> tuple[int, int] | None:
        t = self._t
        if t is None or t.is_closing():
            return None
        return grow_socket_buffers(t.get_extra_info("socket"), rcvbuf, sndbuf, self.tracer)

    def keep_reading_when_full(self) -> bool:
        self._read_when_full = True
        self._backpressure = False
        self._sync_reading()
        return True

    def tcp_state(self) -> str | None:
        t = self._t
        sock = None if t is None or t.is_closing() else t.get_extra_info("socket")
        return None if sock is None else tcp_state(sock)

    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        """``os.sendfile`` on the loop's non-blocking socket when the loop has nothing queued."""
        t = self._t
        if t is None or t.is_closing() or self._state is ConnState.CLOSED:
            return max(count, 0)  # dropped, as writes after close are
        sock = None if self._tls else t.get_extra_info("socket")
        if sock is None or count <= 0 or t.get_write_buffer_size():
            return Transport.sendfile(self, file, offset, count)
        try:
            n = os.sendfile(sock.fileno(), file.fileno(), offset, min(count, _SENDFILE_MAX))
        except BlockingIOError:
            n = -1
        except (AttributeError, ValueError, io.UnsupportedOperation):
            return Transport.sendfile(self, file, offset, count)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.ESPIPE, errno.EOPNOTSUPP):
                return Transport.sendfile(self, file, offset, count)
            self.abort_with(translate_oserror(exc, f"sending a file to {format_addr(self._peer)}"))
            return 0
        if self.tracer:
            self.tracer.emit("sendfile", fd=self._fdno, peer=self._peer, nbytes=max(n, 0), requested=count,
                             detail=f"from file offset {offset}" + (" - EAGAIN: socket full" if n < 0 else ""))
        if n == 0:
            raise EOFError(f"the file ended at offset {offset}, {count} bytes short")
        return max(n, 0)

    def detach(self) -> socket.socket:
        """A blocking duplicate of the socket; the loop's transport is then aborted (no FIN: the dup holds it)."""
        t = self._t
        sock = None if t is None or self._tls else t.get_extra_info("socket")
        if t is None or sock is None or t.is_closing():
            raise LocalProtocolError("this connection has no socket to hand over (TLS, or closed)")
        if t.get_write_buffer_size():
            raise LocalProtocolError("detach() with output still queued would lose it")
        t.pause_reading()
        new: socket.socket = sock.dup()
        new.setblocking(True)
        t.abort()
        return new


class _TracedStream(_Stream):
    """The same bridge, reporting every transport callback to the tracer."""

    def data_received(self, data: bytes) -> None:
        assert self.tracer is not None
        self.tracer.emit("recv", fd=self._fdno, peer=self._peer, nbytes=len(data), level="transport",
                         notes=self.boundary_notes(data))
        super().data_received(data)

    def eof_received(self) -> bool | None:
        assert self.tracer is not None
        self.tracer.emit("recv", fd=self._fdno, peer=self._peer, nbytes=0, level="transport",
                         detail="eof_received")
        return super().eof_received()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.tracer is not None
        self.tracer.emit("send", fd=self._fdno, peer=self._peer, nbytes=len(data), level="transport",
                         detail="write (the loop sends now or buffers the rest)")
        super().write(data)


class _BufferedStream(_Stream, asyncio.BufferedProtocol):
    """asyncio's fast read path: ``recv_into`` one reused engine buffer (see the module docstring).

    A socklab :class:`BufferedProtocol` app lends its own buffer instead: no copy at all.
    """

    def _bind(self, t: asyncio.Transport, app: Protocol) -> None:
        super()._bind(t, app)
        if isinstance(app, BufferedProtocol):
            self.get_buffer = self._app_get_buffer  # type: ignore[method-assign,assignment]
            self.buffer_updated = self._app_buffer_updated  # type: ignore[method-assign]

    def __init__(self, engine: _AioEngine, factory: ProtocolFactory, server_side: bool) -> None:
        super().__init__(engine, factory, server_side)
        self._view = engine.recv_view

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.active = True
        self._app_data_received(self._view[:nbytes].tobytes())

    def _app_get_buffer(self, sizehint: int) -> memoryview | bytearray:
        # asyncio passes -1 ("any size"); socklab's engines always pass a positive hint
        return cast(BufferedProtocol, self.protocol).get_buffer(sizehint if sizehint > 0 else RECV_SIZE)

    def _app_buffer_updated(self, nbytes: int) -> None:
        self.active = True
        self.protocol.buffer_updated(nbytes)  # type: ignore[attr-defined]


class _TracedBufferedStream(_BufferedStream, _TracedStream):
    def buffer_updated(self, nbytes: int) -> None:
        assert self.tracer is not None
        self.tracer.emit("recv", fd=self._fdno, peer=self._peer, nbytes=nbytes, level="transport",
                         notes=self.boundary_notes(self._view[:nbytes]) if nbytes else None)
        super().buffer_updated(nbytes)

    def _app_buffer_updated(self, nbytes: int) -> None:
        assert self.tracer is not None
        self.tracer.emit("recv", fd=self._fdno, peer=self._peer, nbytes=nbytes, level="transport")
        super()._app_buffer_updated(nbytes)
