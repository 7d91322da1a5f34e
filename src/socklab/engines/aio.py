"""The asyncio and uvloop engines: socklab protocols on a real event loop, adapted 1:1.

Why this exists: most Python network code runs on asyncio (or on uvloop, its libuv-based drop-in).
socklab's Protocol/Transport contract has asyncio's shape, so these engines are thin bridges: the
loop owns the sockets and calls a small adapter, the adapter calls the socklab protocol, and the
protocol's ``transport.write`` *is* the loop transport's ``write`` (bound once, so a write costs
one call, exactly as in a hand-written asyncio server).

What the adapter adds to the loop's own transport, and why:

- admission (``max_connections``), the idle sweep, graceful shutdown and statistics: the shared
  policies of :class:`~socklab.engines.base.Engine`. The idle sweep's clock costs one attribute
  store per receive (``active = True``), or nothing at all where uvloop hands data straight to
  the app: the sweep then asks the kernel (Linux ``TCP_INFO``: milliseconds since data last
  arrived). A timer per connection or per byte would cost far more.
- flow control: the write high-water mark is ``max_buffer``; above it the adapter stops reading
  that peer (as well as telling the protocol ``pause_writing``), so a client that never reads
  cannot make the server's memory grow.
- errors: ``OSError`` reaching ``connection_lost`` or a failed connect is translated once with
  :func:`~socklab.core.errors.translate_oserror`.
- half-close: ``eof_received`` keeps asyncio's meaning (return ``True`` to stay half-open); when
  both directions are finished the connection is closed, as on socklab's own reactor.
- the trace: the loop hides its system calls, so with ``--trace`` the adapter reports transport
  callbacks instead (``level="transport"``: accept, recv, send, shutdown, close) and says so once.

Why the asyncio engine reads with :class:`asyncio.BufferedProtocol` (see docs/benchmarks.md and
PERF_NOTES.md): CPython's selector transport otherwise calls ``recv(256 KiB)`` for every read,
above glibc's 128 KiB mmap threshold, so each read pays an mmap/mremap/munmap. ``recv_into`` one
reused 64 KiB buffer and copying out only the bytes that arrived is several times faster for
small messages. uvloop reads into its own preallocated buffer, so its engine keeps the plain
``data_received`` path and, for plain TCP, lets uvloop call the app's ``data_received`` itself
(its BufferedProtocol path costs two callbacks and a copy per read instead of one callback).

TLS is the loop's own (``ssl=context``), not :mod:`socklab.core.tls`. Write after ``write_eof``
or ``close`` is dropped when the protocol calls ``transport.write``; a protocol that cached the
bound ``write`` earlier (for speed) gets the loop's own behaviour (asyncio raises RuntimeError).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, cast

from socklab.core.errors import ConnectTimeout, LocalProtocolError, translate_oserror
from socklab.core.protocol import BufferedProtocol, DatagramProtocol, Protocol
from socklab.core.sockets import Endpoint
from socklab.core.trace import format_addr
from socklab.core.transport import DatagramTransport, TimerHandle, Transport
from socklab.engines.base import (
    Connection,
    DatagramFactory,
    Engine,
    EngineInfo,
    ProtocolFactory,
    ReadPauseMixin,
)

__all__ = ["AsyncioEngine", "UvloopEngine"]

RECV_SIZE = 64 * 1024  # below glibc's 128 KiB mmap threshold: see the module docstring
_LINGER_RST = struct.pack("ii", 1, 0)
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


def _error(exc: BaseException | None, action: str) -> BaseException | None:
    return translate_oserror(exc, action) if isinstance(exc, OSError) else exc


# ---- one stream connection: an asyncio protocol to the loop, a socklab transport to the app -------
class _Stream(ReadPauseMixin, asyncio.Protocol, Transport, Connection):
    """Bridges one loop connection to one socklab protocol.

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
        self._lost = False
        self._aborted = False
        self._abort_exc: BaseException | None = None
        self._app_paused = False
        self._backpressure = False
        self._reading = True
        self._eof_received = False
        self._eof_written = False
        self._tls = False

    # ---- loop side -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self._t = t
        engine = self.engine
        self._peer = t.get_extra_info("peername")
        self._fdno = self._fd()
        self._tls = t.get_extra_info("sslcontext") is not None
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
        self._eof_received = True
        if not self._made:
            return None
        keep_open = self.protocol.eof_received()
        if keep_open and (self._eof_written or self._tls):
            # both directions are finished: close (as socklab's reactor does); TLS cannot stay
            # half-open here (and the loop would log a warning for trying)
            return None
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._made or self._lost:
            return
        self._lost = True
        self.write = _drop  # type: ignore[method-assign]
        err = self._abort_exc if self._aborted else _error(exc, f"talking to {self._peer}")
        if self.tracer:
            self.tracer.emit("close", fd=self._fdno, peer=self._peer, level="transport",
                             detail=f"connection_lost({err or ''})")
        self.engine.connection_closed(self)
        self.protocol.connection_lost(err)

    def pause_writing(self) -> None:
        self._backpressure = True
        self._sync_reading()
        if self.tracer:
            self.tracer.note(f"write buffer above the high-water mark ({self.engine.settings.max_buffer} B): "
                             "the peer is not reading; pausing the protocol and no longer reading this peer",
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
        if self._eof_written or self._lost:
            return
        t = self._transport()
        if self._tls:
            raise LocalProtocolError("TLS connections cannot half-close here (can_write_eof() is False)")
        if self.tracer:
            self.tracer.emit("shutdown", fd=self._fdno, peer=self._peer, level="transport",
                             detail="write_eof: FIN after the buffered data, still reading")
        self._eof_written = True
        t.write_eof()
        self.write = _drop  # type: ignore[method-assign]
        if self._eof_received:
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
        return self._lost or self._t is None or self._t.is_closing()

    def close(self) -> None:
        self.write = _drop  # type: ignore[method-assign]
        if self._t is not None:
            self._t.close()

    def abort(self) -> None:
        self.abort_with(None)

    def abort_with(self, exc: BaseException | None, reset: bool = True) -> None:
        t = self._t
        if t is None or self._lost:
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


# ---- datagrams ------------------------------------------------------------------------------------
class _Datagram(asyncio.DatagramProtocol, DatagramTransport):
    """Bridges one loop datagram endpoint to one socklab DatagramProtocol."""

    def __init__(self, engine: _AioEngine, app: DatagramProtocol) -> None:
        self.engine = engine
        self.tracer = engine.tracer
        self.app = app
        self._t: asyncio.DatagramTransport | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.DatagramTransport, transport)
        self._t = t
        if self.tracer is None:
            self.sendto = t.sendto  # type: ignore[method-assign]
        self.app.connection_made(self)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.engine.stats.datagrams_in += 1
        if self.tracer:
            self.tracer.emit("recvfrom", peer=addr, nbytes=len(data), level="transport")
        try:
            self.app.datagram_received(data, addr)
        except Exception as exc:  # one bad datagram must not stop the endpoint (as on every engine)
            self.engine.report_error(exc, f"{type(self.app).__name__}.datagram_received")

    def error_received(self, exc: Exception) -> None:
        try:
            self.app.error_received(translate_oserror(exc, "receiving a datagram"))
        except Exception as bug:
            self.engine.report_error(bug, f"{type(self.app).__name__}.error_received")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self in self.engine._endpoints:
            self.engine._endpoints.remove(self)
        if self.tracer:
            self.tracer.emit("close", level="transport", detail="datagram endpoint closed")
        try:
            self.app.connection_lost(_error(exc, "using a datagram socket"))
        except Exception as bug:
            self.engine.report_error(bug, f"{type(self.app).__name__}.connection_lost")

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._t is None or self._t.is_closing():
            return
        if self.tracer:
            self.tracer.emit("sendto", peer=addr, nbytes=len(data), level="transport")
        self._t.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "engine":
            return self.engine.name
        if name == "tracer":
            return self.tracer
        if self._t is None:
            return default
        if name == "fd":
            sock = self._t.get_extra_info("socket")
            return default if sock is None else sock.fileno()
        return self._t.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._t is None or self._t.is_closing()

    def close(self) -> None:
        if self._t is not None:
            self._t.close()

    def abort(self) -> None:
        if self._t is not None:
            self._t.abort()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.engine.loop.call_later(delay, callback)


class _Listener:
    """What ``serve_stream`` returns: ``close()`` stops accepting, even if the server is still starting."""

    def __init__(self, engine: _AioEngine) -> None:
        self.engine = engine
        self.server: asyncio.AbstractServer | None = None
        self.closed = False

    def started(self, server: asyncio.AbstractServer) -> None:
        self.server = server
        if self.closed:
            server.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self in self.engine._listeners:
            self.engine._listeners.remove(self)
        if self.server is not None:
            self.server.close()
            if self.engine.tracer:
                self.engine.tracer.emit("close", level="transport", detail="listening socket: no more accepts")


# ---- the engines ----------------------------------------------------------------------------------
class _AioEngine(Engine):
    """What the asyncio and uvloop engines share: everything but the loop and the read path."""

    stream_class: type[_Stream] = _Stream
    traced_stream_class: type[_Stream] = _TracedStream
    direct_reads = False  # may the loop call the app's data_received directly? (see _read_directly)
    one_thread = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop: asyncio.AbstractEventLoop = self._new_loop()
        self.loop.set_exception_handler(self._on_loop_error)
        self._listeners: list[_Listener] = []
        self._endpoints: list[_Datagram] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self.recv_buffer = bytearray(RECV_SIZE)
        self.recv_view = memoryview(self.recv_buffer)
        self._noted = False

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop caught an exception from a callback: one line via ``report_error``, serve on.

        A protocol callback that raised has already had its connection closed by the loop (the
        exception goes to ``connection_lost``), exactly as on socklab's own engines.
        """
        exc = context.get("exception")
        if not isinstance(exc, Exception):
            loop.default_exception_handler(context)
            return
        bridge = context.get("protocol")
        if isinstance(bridge, _Stream) and bridge._made:
            where = f"{type(bridge.protocol).__name__} (a protocol callback)"
        elif isinstance(bridge, _Datagram):
            where = f"{type(bridge.app).__name__} (a datagram protocol callback)"
        else:
            where = str(context.get("message") or "a loop callback")
        self.report_error(exc, where)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, ready: Callable[[], None] | None = None) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        if ready is not None:
            loop.call_soon(ready)
        try:
            loop.run_forever()
        finally:
            asyncio.set_event_loop(None)

    def stop(self) -> None:
        # One more turn before stopping: callbacks already queued (an abort's connection_lost)
        # schedule their follow-ups with call_soon, and those must run too.
        self.call_soon_threadsafe(self._stop_next_turn)

    def _stop_next_turn(self) -> None:
        self.loop.call_soon(self.loop.stop)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:
            if not self.loop.is_closed():
                raise  # only "the loop is closed" (a late call during shutdown) is expected

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.loop.call_later(delay, callback)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | None:
        """Run ``coro`` on the loop from anywhere: scheduled from the loop thread, else waited for."""
        loop = self.loop
        if self._on_loop_thread():
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return task
        if loop.is_running():  # another thread: hand it over and wait (binding must be done on return)
            asyncio.run_coroutine_threadsafe(coro, loop).result(30)
        else:
            loop.run_until_complete(coro)
        return None

    def close(self) -> None:
        loop = self.loop
        if loop.is_closed() or loop.is_running():
            return
        self.close_listeners()
        for conn in list(self.connections):
            conn.abort_with(None)
        for task in list(self._tasks):
            task.cancel()
        for _ in range(3):  # a stop() queued late makes run_until_complete return early: run again
            with contextlib.suppress(RuntimeError):
                loop.run_until_complete(self._settle())
                break
        with contextlib.suppress(RuntimeError):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _settle(self) -> None:
        """Let close callbacks (connection_lost, server close) run before the loop is closed."""
        for _ in range(3):
            await asyncio.sleep(0)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _sweep_idle(self) -> None:
        # Turn the per-receive flag into a time (one store per receive, one pass per sweep),
        # then let the shared policy compare it with idle_timeout.
        now = time.monotonic()
        deadline = now - self.settings.idle_timeout
        for conn in self.connections:
            stream = cast(_Stream, conn)
            if stream.active:
                stream.active = False
                stream.last_activity = now
            elif stream.kernel_clock is not None and stream.last_activity < deadline:
                # only a connection that looks idle costs a getsockopt() call
                quiet = _last_data_recv(stream.kernel_clock)
                if quiet is not None:
                    stream.last_activity = max(stream.last_activity, now - quiet)
        super()._sweep_idle()

    # ---- sockets -------------------------------------------------------------------------------
    def _note_hidden_syscalls(self) -> None:
        if self.tracer and not self._noted:
            self._noted = True
            self.tracer.note(_HIDDEN_NOTE.format(loop=self.name), level="transport")

    def _stream_factory(self, factory: ProtocolFactory, server_side: bool) -> Callable[[], _Stream]:
        cls = self.traced_stream_class if self.tracer else self.stream_class
        return lambda: cls(self, factory, server_side)

    def serve_stream(self, sock: socket.socket, protocol_factory: ProtocolFactory,
                     ssl_context: ssl.SSLContext | None = None) -> _Listener:
        """Accept on the listening ``sock`` with the loop; works before ``run()`` and from callbacks.

        Returns:
            A handle whose ``close()`` stops accepting.
        """
        self._note_hidden_syscalls()
        listener = _Listener(self)
        self._listeners.append(listener)
        bridge = self._stream_factory(protocol_factory, server_side=True)

        async def start() -> None:
            if sock.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(bridge, sock=sock, ssl=ssl_context,
                                                            backlog=self.settings.backlog)
            else:
                server = await self.loop.create_server(bridge, sock=sock, ssl=ssl_context,
                                                       backlog=self.settings.backlog)
            listener.started(server)

        self._submit(start())
        return listener

    def serve_datagram(self, sock: socket.socket, protocol_factory: DatagramFactory) -> _Datagram:
        """Drive one datagram protocol with the bound UDP ``sock``; returns the endpoint (``close()``)."""
        self._note_hidden_syscalls()
        endpoint = _Datagram(self, protocol_factory())
        self._endpoints.append(endpoint)

        async def start() -> None:
            await self.loop.create_datagram_endpoint(lambda: endpoint, sock=sock)

        self._submit(start())
        return endpoint

    def close_listeners(self) -> None:
        for listener in list(self._listeners):
            listener.close()
        for endpoint in list(self._endpoints):
            endpoint.close()

    def connect_stream(self, endpoint: Endpoint, protocol_factory: ProtocolFactory, *,
                       ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                       timeout: float = 10.0,
                       on_error: Callable[[BaseException], None] | None = None) -> None:
        """Open a client connection with the loop; ``connection_made`` follows, or ``on_error(exc)``.

        ``exc`` is a :class:`~socklab.core.errors.SocklabError` (``ConnectionRefused``,
        ``ConnectTimeout``, ``ResolveError``...).
        """
        self._note_hidden_syscalls()
        bridge = self._stream_factory(protocol_factory, server_side=False)
        loop = self.loop
        hostname = (server_hostname or endpoint.host) if ssl_context is not None else None

        async def connect() -> None:
            try:
                if endpoint.unix is not None:
                    coro = loop.create_unix_connection(bridge, endpoint.unix, ssl=ssl_context,
                                                       server_hostname=hostname)
                else:
                    coro = loop.create_connection(bridge, endpoint.host, endpoint.port, ssl=ssl_context,
                                                  server_hostname=hostname)
                await asyncio.wait_for(coro, timeout)
            except (OSError, TimeoutError) as exc:
                if type(exc) is not socket.gaierror and exc.errno:  # asyncio's "Connect call failed (...)"
                    exc = OSError(exc.errno, os.strerror(exc.errno))  # -> the errno's own words
                err = translate_oserror(exc, f"connecting to {endpoint}")
                if isinstance(exc, TimeoutError) and not isinstance(err, ConnectTimeout):
                    err = ConnectTimeout(f"timed out while connecting to {endpoint}")
                if on_error is not None:
                    on_error(err)
                elif self.tracer:
                    self.tracer.note(f"connect failed: {err}", level="transport")

        if self._on_loop_thread() or not loop.is_running():
            task = loop.create_task(connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            asyncio.run_coroutine_threadsafe(connect(), loop)


class AsyncioEngine(_AioEngine):
    """CPython's asyncio loop, reading through BufferedProtocol into one reused 64 KiB buffer."""

    info = EngineInfo(
        name="asyncio", model="CPython's asyncio event loop (selectors + callbacks), socklab protocols adapted 1:1",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="embedding socklab protocols in an asyncio program, or comparing with stock asyncio",
        limits="pure-Python loop: slower than uvloop or epoll per message; syscalls are traced at the "
               "transport level")
    stream_class = _BufferedStream
    traced_stream_class = _TracedBufferedStream

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


class UvloopEngine(_AioEngine):
    """The libuv-based uvloop, with the plain ``data_received`` path (uvloop reuses its read buffer)."""

    info = EngineInfo(
        name="uvloop", model="uvloop: the asyncio API on libuv (C), socklab protocols adapted 1:1",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="the fastest loop for many connections with small messages",
        limits="needs the uvloop package; no loop.sendfile(); syscalls are traced at the transport level")
    direct_reads = True

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
