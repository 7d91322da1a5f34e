"""The asyncio/uvloop bridge for one stream connection: an asyncio protocol to the loop, a socklab
transport to the app, on the same rules as every other engine (:class:`~socklab.engines._stream.StreamCore`).

Why this exists: :mod:`socklab.engines.aio` is the two engines (the loop, listeners, UDP, the
shared policies); this module is the per-connection adapter they hand to the loop.

What is the loop's and what is StreamCore's. The loop owns the socket and the write buffer: it
sends, queues what the kernel did not take, and calls ``pause_writing``/``resume_writing`` when
that queue crosses the water marks (asyncio's ``_FlowControlMixin``). Everything a protocol sees
besides that is StreamCore's, as on the reactor and blocking engines: the connection state and its
table, what a crossing of the marks does (pause the protocol *and* stop reading that peer), the
app's ``pause_reading``, the EOF rule (half-open or close), ``close``/``abort`` (RST), one
translation of OS errors, ``connection_lost`` exactly once, and the capabilities that are socket
options. The seam is small: the loop's ``pause_writing``/``resume_writing`` call
``_above_high_water``/``_below_low_water``, new limits are passed on in ``_limits_changed``, and
``_let_go`` aborts the loop's transport unless the loop let go first.

The read path, chosen per connection once the app exists (the engines' module docstring says
what each costs):

- plain TCP, untraced: the loop calls the app's ``data_received`` itself - for the echo app that
  *is* the loop transport's ``write`` - so no adapter frame runs per read. The idle sweep asks the
  kernel when data last came (``TCP_INFO``). asyncio's transport reads ``recv(max_size)``; its
  ``max_size`` is set to :data:`RECV_SIZE` (below glibc's mmap threshold: no mmap per read, and no
  dependence on whether anything raised that threshold first);
- Unix sockets, traced connections: ``data_received`` on the adapter (an activity flag, trace);
- an app that is a socklab :class:`BufferedProtocol` lends its buffer: the bridge becomes a
  ``_BufferedStream`` (an ``asyncio.BufferedProtocol``: both loops pick their read path by the
  protocol's class) and the loop receives into the app's buffer, no copy.

TLS is not the loop's: the engines put socklab's own TLS layer (:class:`~socklab.core.tls.TLSProtocol`,
``SSLObject`` over memory BIOs, the one every engine uses) between this bridge and the app, so to
the loop a TLS connection is plain TCP and takes the first path above.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, cast

from socklab.core.errors import LocalProtocolError
from socklab.core.protocol import BufferedProtocol, Protocol
from socklab.core.trace import format_addr, tcp_state
from socklab.core.transport import TimerHandle, Transport
from socklab.engines._stream import RECV_SIZE, ConnState, Event, StreamCore
from socklab.engines.base import Connection, ProtocolFactory

if TYPE_CHECKING:
    from socklab.engines.aio import _AioEngine

__all__ = ["RECV_SIZE"]

_SENDFILE_MAX = 1 << 30
# struct tcp_info (linux/tcp.h): 8 one-byte fields, 9 u32s, then tcpi_last_data_sent, _last_ack_sent,
# tcpi_last_data_recv (milliseconds since the last data segment arrived).
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_LAST_DATA_RECV = 52
_TCP_INFO_LEN = 56
_HIDDEN_NOTE = ("the {loop} event loop makes the system calls itself and hides them: this trace shows "
                "transport callbacks instead (level=transport)")


def _drop(data: Any) -> None:
    """What ``write`` becomes after ``close``/``write_eof``/``abort``: the bytes are dropped."""


def _last_data_recv(sock: Any) -> float | None:
    """Seconds since data last arrived on a TCP socket (Linux ``TCP_INFO``), or ``None``."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    return float(struct.unpack_from("I", raw, _LAST_DATA_RECV)[0]) / 1000.0


_OPEN, _READ_SHUT, _CLOSING, _CLOSED = ConnState.OPEN, ConnState.READ_SHUT, ConnState.CLOSING, ConnState.CLOSED


# ---- one stream connection: an asyncio protocol to the loop, a socklab transport to the app -------
class _Stream(StreamCore, asyncio.BaseProtocol, Transport, Connection):
    """Bridges one loop connection to one socklab protocol; the rules are :class:`StreamCore`'s.

    It has ``asyncio.Protocol``'s methods without being an ``asyncio.Protocol`` instance (a
    ``_BufferedStream`` is an ``asyncio.BufferedProtocol``; the loops choose their read path by
    the protocol's class).

    Server side (``server_side``): admission is decided in ``connection_made``, and only an
    admitted connection gets an app protocol (on a TLS listener: the TLS layer, then the app).
    """

    sock: Any  # the loop's socket object (asyncio's TransportSocket, uvloop's pseudo-socket)
    protocol: Protocol
    engine: _AioEngine

    def __init__(self, engine: _AioEngine, factory: ProtocolFactory, server_side: bool, tls: bool = False) -> None:
        self.engine = engine
        self._tls = tls  # the factory makes socklab's TLS layer: a refusal sends no plaintext
        self.tracer = engine.tracer
        self._factory = factory
        self._server_side = server_side
        self._t: asyncio.Transport | None = None
        self._app_data_received: Callable[[bytes], None] = _drop
        self._view = engine.recv_view  # the engine's one receive buffer (the _BufferedStream path)
        self.sock = None
        self.peer: Any = None
        self._fdno: int | None = None
        self.kernel_clock: Any = None  # a TCP socket whose TCP_INFO tells the last receive (_bind_reads)
        self.last_activity = time.monotonic()
        self._made = False  # admitted, with an app protocol
        self._loop_let_go = False  # the loop called connection_lost: its transport is closed already
        self._reading = True  # the loop reads from connection_made on
        self._held: list[bytes] | None = None  # bytes read while the app's first pause had not taken
        self._held_eof = False
        self._init_core(engine.settings.max_buffer)

    # ---- loop side -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self._t = t
        engine = self.engine
        self.sock = t.get_extra_info("socket")
        self.peer = t.get_extra_info("peername")
        self._fdno = self._fd()
        if getattr(t, "max_size", 0) > RECV_SIZE:  # asyncio's recv(256 KiB) per read (module docstring)
            t.max_size = RECV_SIZE  # type: ignore[attr-defined]
        if self._server_side:
            if self.tracer:
                self._emit("accept", detail="connection_made (the loop accepted it)")
            if not engine.admit():
                self._refuse(t)
                return
        elif self.tracer:
            self._emit("connect", detail="connection_made (connected)")
        try:
            app = self._factory()
        except Exception as exc:  # a bug in the app's factory: refuse this one, serve the others
            engine.report_error(exc, "the protocol factory")
            t.abort()
            return
        self.protocol = app
        if isinstance(app, BufferedProtocol) and not isinstance(self, asyncio.BufferedProtocol):
            # The app lends its buffer. Both loops choose their read path by the protocol's class
            # (recv_into for an asyncio.BufferedProtocol), and the app's class is known only now;
            # _bind_reads makes the loop look again.
            self.__class__ = _TracedBufferedStream if self.tracer else _BufferedStream
        if self.tracer is None:  # the hot path: the app calls the loop's methods directly
            self.write = t.write  # type: ignore[method-assign]
            self.get_write_buffer_size = t.get_write_buffer_size  # type: ignore[method-assign]
        self._limits_changed()
        self._made = True
        self.last_activity = time.monotonic()
        engine.connection_opened(self)
        try:
            app.connection_made(self)
        except Exception as exc:  # a bug in the app: close this connection, serve the others
            engine.report_error(exc, f"{type(app).__name__}.connection_made")
            self.abort_with(exc)
            return
        if self._reading:
            self._bind_reads(t, app)
        else:
            # The app paused reading in connection_made. asyncio's transport keeps that pause, but
            # uvloop starts reading only after this returns and may read before it hears of the
            # pause again: whatever comes meanwhile is held, and handed over on resume (_release).
            self._held = []
            self._app_data_received = self._hold

    def _hold(self, data: bytes) -> None:
        assert self._held is not None
        self._held.append(data)
        t = self._t
        if t is not None and not t.is_closing():
            t.pause_reading()  # (reading has started now: this pause takes)

    def _release(self) -> None:
        """After ``resume_reading``: the held bytes (and EOF) go to the app first, then the loop reads."""
        t, held = self._t, self._held
        if t is None or held is None or not self._reading or self._state is _CLOSED:
            return  # paused again meanwhile, or ended
        self._held = None
        self._app_data_received = _drop
        app = self.protocol
        self._bind_reads(t, app)
        data = b"".join(held)
        try:
            if data and isinstance(app, BufferedProtocol):  # into the app's own buffer
                view = memoryview(data)
                while view:
                    buf = memoryview(app.get_buffer(len(view)))
                    n = min(len(buf), len(view))
                    buf[:n] = view[:n]
                    app.buffer_updated(n)
                    view = view[n:]
            elif data:
                app.data_received(data)
        except Exception as exc:
            self._protocol_failed(exc, "data_received")
            return
        if self._held_eof:
            self.eof_received()  # (it closes, or stays half-open: the loop stopped reading already)
        elif self._read_wanted() and not t.is_closing():
            t.resume_reading()

    def _bind_reads(self, t: asyncio.Transport, app: Protocol) -> None:
        """How received bytes reach the app; after its ``connection_made``, which may rebind its methods.

        Untraced plain TCP: the loop calls the app's ``data_received`` itself (no adapter frame);
        the idle sweep then asks the kernel instead of a per-read flag (``TCP_INFO``'s
        ``tcpi_last_data_recv``: the milliseconds since data last arrived).
        """
        sock = self.sock
        if self.tracer is None and sock is not None and \
                sock.family in (socket.AF_INET, socket.AF_INET6) and _last_data_recv(sock) is not None:
            self.data_received = app.data_received  # type: ignore[method-assign]
            self.kernel_clock = sock
            t.set_protocol(self)  # uvloop caches protocol.data_received: make it cache the app's
        else:
            self._app_data_received = app.data_received

    def _refuse(self, t: asyncio.Transport) -> None:
        engine = self.engine
        if self.tracer:
            self._emit("note", detail=f"refusing {format_addr(self.peer)}: max_connections="
                       f"{engine.settings.max_connections} reached (or shutting down)")
        if not engine.shutting_down and not self._tls:  # no plaintext into a TLS stream (refusal rule)
            t.write(engine.settings.overflow_message)
        t.close()

    def data_received(self, data: bytes) -> None:
        self._active = True
        self._app_data_received(data)

    def eof_received(self) -> bool | None:
        self._active = True
        if not self._made:
            return None
        if self._held is not None:  # the app has not had the bytes before it yet (_release)
            self._held_eof = True
            return True
        self._held_eof = False
        if self._peer_eof():
            return True  # half-open: the loop stops reading, the app may still write
        self.close()  # our FIN after what is queued
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._made or self._state is _CLOSED:
            return  # refused, or ended by us already (abort, a fatal error, detach)
        self._loop_let_go = True
        if exc is None:
            self._finalize(None)
        else:
            self._fatal(exc, "talking to the peer")

    def pause_writing(self) -> None:
        """The loop's queue passed the high-water mark (``max_buffer``): StreamCore's rule."""
        if self._made:
            self._above_high_water()

    def resume_writing(self) -> None:
        if self._made:
            self._below_low_water()

    # ---- StreamCore's hooks ----------------------------------------------------------------------
    def _reading_changed(self) -> None:
        t = self._t
        want = self._read_wanted()
        if t is None or want is self._reading:
            return
        self._reading = want
        if t.is_closing():
            return
        if not want:
            t.pause_reading()
        elif self._held is not None:
            self.engine.loop.call_soon(self._release)  # held bytes first, then the loop reads again
        else:
            t.resume_reading()

    def _drop_output(self) -> None:
        self.write = _drop  # type: ignore[method-assign]  # (the loop drops its own queue in abort())

    def _let_go(self, how: str) -> None:
        self.write = _drop  # type: ignore[method-assign]
        if self.tracer:
            self._emit("close", detail=how or "connection_lost")
        t = self._t
        if t is not None and not self._loop_let_go:
            t.abort()  # the loop closes the socket; its connection_lost comes later and is ignored

    def _limits_changed(self) -> None:
        if self._t is not None:
            self._t.set_write_buffer_limits(self._high, self._low)

    def _emit(self, op: str, **kw: Any) -> None:
        assert self.tracer is not None
        self.tracer.emit(op, fd=self._fdno, peer=self.peer, level="transport", **kw)

    # ---- app side (socklab Transport); flow control and abort are StreamCore's ----------------------
    def _transport(self) -> asyncio.Transport:
        assert self._t is not None, "the transport is used before connection_made"
        return self._t

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport().write(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        if self._state is not _OPEN and self._state is not _READ_SHUT:
            return
        t = self._transport()
        if self.tracer:
            self._emit("shutdown", detail="write_eof: FIN after the buffered data, still reading")
        self.write = _drop  # type: ignore[method-assign]
        try:
            t.write_eof()  # asyncio: shutdown(SHUT_WR) now if nothing is queued
        except OSError as exc:  # the peer reset meanwhile (ENOTCONN): the connection's error, as on the reactor
            self._fatal(exc, "shutting down")
            return
        if self._to(Event.WRITE_EOF) is _CLOSING:  # the peer's FIN came first: both directions are done
            t.close()

    def can_write_eof(self) -> bool:
        return self._transport().can_write_eof()

    def get_write_buffer_size(self) -> int:
        return 0 if self._t is None else self._t.get_write_buffer_size()

    def is_reading(self) -> bool:
        return self._reading and not self.is_closing()

    def is_closing(self) -> bool:
        return self._state is _CLOSING or self._state is _CLOSED or self._t is None or self._t.is_closing()

    def close(self) -> None:
        self.write = _drop  # type: ignore[method-assign]
        if self._to(Event.CLOSE) is _CLOSING and self._t is not None:
            self._t.close()  # the loop sends what is queued, then connection_lost(None)

    def _fd(self) -> int | None:
        try:
            return int(self.sock.fileno()) if self.sock is not None else None
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

    # ---- capabilities (socklab.core.transport): StreamCore's socket options ----------------------------
    def set_cork(self, on: bool) -> bool:
        return self.sock is not None and StreamCore.set_cork(self, on)

    def set_recv_lowat(self, nbytes: int) -> bool:
        return self.sock is not None and StreamCore.set_recv_lowat(self, nbytes)

    def set_buffer_sizes(self, rcvbuf: int | None = None, sndbuf: int | None = None) -> tuple[int, int] | None:
        return None if self.is_closing() else StreamCore.set_buffer_sizes(self, rcvbuf, sndbuf)

    def tcp_state(self) -> str | None:
        return None if self.is_closing() or self.sock is None else tcp_state(self.sock)

    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        """``os.sendfile`` on the loop's non-blocking socket when the loop has nothing queued."""
        t = self._t
        if t is None or self.is_closing():
            return max(count, 0)  # dropped, as writes after close are
        sock = self.sock
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
            self._fatal(exc, "sending a file")
            return 0
        if self.tracer:
            self._emit("sendfile", nbytes=max(n, 0), requested=count,
                       detail=f"from file offset {offset}" + (" - EAGAIN: socket full" if n < 0 else ""))
        if n == 0:
            raise EOFError(f"the file ended at offset {offset}, {count} bytes short")
        return max(n, 0)

    def detach(self) -> socket.socket:
        """A blocking duplicate of the socket; the loop's transport is aborted (no FIN: the dup holds it)."""
        sock = self.sock
        if sock is None or self.is_closing():
            raise LocalProtocolError("this connection has no socket to hand over (it is closed)")
        if self.get_write_buffer_size():
            raise LocalProtocolError("detach() with output still queued would lose it")
        new: socket.socket = sock.dup()
        new.setblocking(True)
        self._drop_output()
        self._finalize(None, how="detached: the socket was handed over")
        return new


class _TracedStream(_Stream):
    """The same bridge, reporting every transport callback to the tracer."""

    def data_received(self, data: bytes) -> None:
        self._emit("recv", nbytes=len(data), notes=self.boundary_notes(data))
        super().data_received(data)

    def eof_received(self) -> bool | None:
        self._emit("recv", nbytes=0, detail="eof_received")
        return super().eof_received()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._emit("send", nbytes=len(data), detail="write (the loop sends now or buffers the rest)")
        super().write(data)


class _BufferedStream(_Stream, asyncio.BufferedProtocol):
    """The loop receives into the app's own buffer (a socklab :class:`BufferedProtocol`: no copy at
    all); until the app has taken over (``_bind_reads``), into the engine's one reused buffer,
    copied out."""

    def _bind_reads(self, t: asyncio.Transport, app: Protocol) -> None:
        if isinstance(app, BufferedProtocol):
            self.get_buffer = self._app_get_buffer  # type: ignore[method-assign]
            self.buffer_updated = self._app_buffer_updated  # type: ignore[method-assign]
            t.set_protocol(self)  # the loops cache these two: make them cache these
        else:
            self._app_data_received = app.data_received

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._active = True
        self._app_data_received(self._view[:nbytes].tobytes())

    def _app_get_buffer(self, sizehint: int) -> memoryview:
        # asyncio passes -1 ("any size"); socklab's engines always pass a positive hint. A view,
        # never the app's bytearray itself (a slice of a bytearray is a copy).
        return memoryview(cast(BufferedProtocol, self.protocol).get_buffer(sizehint if sizehint > 0 else RECV_SIZE))

    def _app_buffer_updated(self, nbytes: int) -> None:
        self._active = True
        self.protocol.buffer_updated(nbytes)  # type: ignore[attr-defined]


class _TracedBufferedStream(_BufferedStream, _TracedStream):
    def buffer_updated(self, nbytes: int) -> None:
        self._emit("recv", nbytes=nbytes, notes=self.boundary_notes(self._view[:nbytes]) if nbytes else None)
        super().buffer_updated(nbytes)

    def _app_buffer_updated(self, nbytes: int) -> None:
        self._emit("recv", nbytes=nbytes)
        super()._app_buffer_updated(nbytes)
