"""The asyncio and uvloop engines: socklab protocols on a real event loop, adapted 1:1.

Why this exists: most Python network code runs on asyncio (or on uvloop, its libuv-based drop-in).
socklab's Protocol/Transport contract has asyncio's shape, so these engines are thin bridges: the
loop owns the sockets and calls a small adapter, the adapter calls the socklab protocol, and the
protocol's ``transport.write`` *is* the loop transport's ``write`` (bound once, so a write costs
one call, exactly as in a hand-written asyncio server).

What the adapter adds to the loop's own transport, and why:

- the rules every socklab engine shares (``engines/_stream.py``, StreamCore): the connection
  state and its one table, what passing the write high-water mark does (``max_buffer``: the
  protocol gets ``pause_writing`` *and* that peer is no longer read, so a client that never reads
  cannot make the server's memory grow), the EOF rule (``eof_received`` returns ``True`` to stay
  half-open; when both directions are finished the connection is closed), ``abort`` with RST,
  one translation of OS errors (:func:`~socklab.core.errors.translate_oserror`) and
  ``connection_lost`` exactly once. The loop keeps the socket and its write buffer; the bridge's
  docstring says where the seam is.
- admission (``max_connections``), the idle sweep, graceful shutdown and statistics: the shared
  policies of :class:`~socklab.engines.base.Engine`. The idle sweep's clock costs one attribute
  store per receive (``_active = True``), or nothing at all where the loop hands data straight
  to the app (plain TCP): the sweep then asks the kernel (Linux ``TCP_INFO``: milliseconds since
  data last arrived). A timer per connection or per byte would cost far more.
- the trace: the loop hides its system calls, so with ``--trace`` the adapter reports transport
  callbacks instead (``level="transport"``: accept, recv, send, shutdown, close) and says so once.

How the engines read (docs/engines-aio.md, docs/benchmarks.md). On plain TCP both loops call the
app's ``data_received`` themselves, as in a hand-written asyncio server - for the echo app that
*is* the loop transport's ``write``, so a round trip runs no socklab code at all. CPython's
selector transport would read with ``recv(256 KiB)``, above glibc's 128 KiB mmap threshold: each
read then pays an mmap/mremap/munmap until something in the process raises that threshold (a
plain asyncio server is 3-4x slower before its first EOF than after). The engine sets that
transport's ``max_size`` to 64 KiB, so its speed does not depend on that luck. (Until issue 19
the asyncio engine read through ``asyncio.BufferedProtocol`` into one reused buffer: immune too,
but two more callbacks and a copy per read, 0.85-0.89x the warm reference.) uvloop reads into its
own preallocated buffer. An app that lends its own buffer (a socklab ``BufferedProtocol``) gets
the loop's ``recv_into`` path.

The per-connection bridge (``_Stream`` and its traced and buffered variants) lives in
:mod:`socklab.engines._aio_stream`, the UDP endpoint in :mod:`socklab.engines._aio_datagram`; this
module is the engines and listeners.

TLS is socklab's own layer (:mod:`socklab.core.tls`, ``SSLObject`` over memory BIOs), the one
every engine uses, between the bridge and the app; the loop carries ciphertext as plain TCP. The
loops' own TLS (``ssl=context``) was measured slower: with it the engines ran 0.94x (asyncio) and
0.91x (uvloop) a plain server on that TLS, with socklab's layer 1.59x and 1.04x (issue 19,
docs/benchmarks.md) - asyncio's ``SSLProtocol`` is pure Python, and both loops read a plain
protocol's plaintext with ``SSLObject.read(256 KiB)``. It also gives TLS on these engines the
same half-close, pin and handshake-failure behaviour as on the others. Write after ``write_eof``
or ``close`` is dropped when the protocol calls ``transport.write``; a protocol that cached the
bound ``write`` earlier (for speed) gets the loop's own behaviour (asyncio raises RuntimeError).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from socklab.core.dial import Dial, Target
from socklab.core.errors import ConnectTimeout, SocklabError, translate_oserror
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint, client_targets, close_traced, literal_family
from socklab.core.tls import TLSProtocol
from socklab.core.transport import TimerHandle
from socklab.engines._aio_datagram import LoopDatagramEndpoint
from socklab.engines._aio_stream import (
    _HIDDEN_NOTE,
    RECV_SIZE,
    _last_data_recv,
    _Stream,
    _TracedStream,
)
from socklab.engines._libc import timerfd
from socklab.engines.base import (
    DatagramFactory,
    Engine,
    EngineInfo,
    ProtocolFactory,
)

__all__ = ["AsyncioEngine", "UvloopEngine"]


class _Listener:
    """What ``serve_stream`` returns: ``close()`` stops accepting, even if the server is still starting."""

    def __init__(self, engine: _AioEngine, sock: socket.socket) -> None:
        self.engine = engine
        self.sock = sock
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
            self._close_server(self.server)
            if self.engine.tracer:
                self.engine.tracer.emit("close", level="transport", detail="listening socket: no more accepts")

    def _close_server(self, server: asyncio.AbstractServer) -> None:
        loop = self.engine.loop
        if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or loop.is_closed():
            server.close()
            return
        # CPython 3.11's selector loop accepts in batches and attaches each accepted socket to its
        # transport one turn later, in a task; a Server closed in between fails that attach
        # (an assertion the task swallows) and the accepted socket is left open until the garbage
        # collector finds it. So: no more accept callbacks and no more connections (a listening
        # socket shut down refuses new ones at once, on Linux), and the Server closes one turn
        # later, after the tasks already queued attached their transports - those connections
        # are then refused as any connection is during shutdown.
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(self.sock.fileno())
            self.sock.shutdown(socket.SHUT_RD)
        loop.call_soon(server.close)


class _Ticker:
    """The idle sweep for CPython's selector loop, ticked by a kernel timer (Linux ``timerfd``).

    While any timer is in the loop's heap, every turn of CPython's loop asks the clock once more
    and computes a select timeout (``BaseEventLoop._run_once``): about 2 % of a small echo round
    trip, paid to check idleness once a second. A periodic ``timerfd`` is one more descriptor in
    the same ``epoll`` set instead: it costs nothing until it fires, then the loop reads its
    8-byte expiry count and runs the sweep. (A ticker thread would do it too, but a second thread
    makes glibc take its multi-threaded paths in every ``malloc`` and system call: measured 3-5 %
    more CPU per round trip.) Python 3.11 has no ``os.timerfd_create``: it comes from
    :mod:`socklab.engines._libc`. ``create`` returns None where there is no timerfd, and the engine
    keeps the loop's timer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._fd = fd
        self._callback = callback
        loop.add_reader(fd, self._fire)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop, interval: float,
               callback: Callable[[], None]) -> _Ticker | None:
        fd = timerfd(interval)
        return None if fd is None else cls(loop, fd, callback)

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)  # how many intervals passed: one sweep covers them all
        except BlockingIOError:
            return
        self._callback()

    def cancel(self) -> None:
        if self._fd >= 0:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


# ---- the engines ----------------------------------------------------------------------------------
class _AioEngine(Engine):
    """What the asyncio and uvloop engines share: everything but the loop and the read path."""

    one_thread = True

    def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        """``loop``: drive this (running) loop instead of making one - an async client's own loop,
        which the engine then neither runs, stops nor closes (nor takes its exception handler)."""
        super().__init__(*args, **kwargs)
        self.own_loop = loop is None
        self.loop: asyncio.AbstractEventLoop = self._new_loop() if loop is None else loop
        if self.own_loop:
            self.loop.set_exception_handler(self._on_loop_error)
        self._listeners: list[_Listener] = []
        self._endpoints: list[LoopDatagramEndpoint] = []
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

    def start_coroutine(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``coro`` as a task of this engine's loop (call on the engine's thread); see Engine."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)  # close() cancels what is still running
        task.add_done_callback(self._tasks.discard)
        return task

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
        if not self.own_loop:  # the caller's loop: end what this engine opened, leave the loop be
            if self._sweeper is not None:
                self._sweeper.cancel()
            self.close_listeners()
            for conn in list(self.connections):
                conn.abort_with(None)
            return
        if loop.is_closed() or loop.is_running():
            return
        self.close_listeners()
        for conn in list(self.connections):
            conn.abort_with(None)
        for task in list(self._tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
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

    def _start_sweeper(self) -> TimerHandle:
        if not isinstance(self.loop, asyncio.selector_events.BaseSelectorEventLoop):
            return super()._start_sweeper()  # uvloop's timers live in C and cost a turn nothing
        ticker = _Ticker.create(self.loop, self._sweep_interval(), self._sweep_idle)
        return super()._start_sweeper() if ticker is None else ticker

    def _sweep_idle(self) -> None:
        # Where the loop hands data straight to the app no flag is raised (plain TCP): ask the
        # kernel instead, and only for a connection that looks idle (one getsockopt() call). The
        # shared policy then turns the per-receive flags into times and compares with idle_timeout.
        now = time.monotonic()
        deadline = now - self.settings.idle_timeout
        for conn in self.connections:
            stream = cast(_Stream, conn)
            if stream.kernel_clock is not None and not stream._active and stream.last_activity < deadline:
                quiet = _last_data_recv(stream.kernel_clock)
                if quiet is not None:
                    stream.last_activity = max(stream.last_activity, now - quiet)
        super()._sweep_idle()

    # ---- sockets -------------------------------------------------------------------------------
    def _note_hidden_syscalls(self) -> None:
        if self.tracer and not self._noted:
            self._noted = True
            self.tracer.note(_HIDDEN_NOTE.format(loop=self.name), level="transport")

    def _stream_factory(self, factory: ProtocolFactory, server_side: bool, ssl_context: ssl.SSLContext | None = None,
                        server_hostname: str | None = None,
                        on_failed: Callable[[BaseException], None] | None = None) -> Callable[[], _Stream]:
        cls: type[_Stream] = _TracedStream if self.tracer else _Stream
        if ssl_context is None:
            return lambda: cls(self, factory, server_side)

        def tls_app() -> Protocol:  # socklab's TLS layer between the bridge and the app (module docstring)
            return TLSProtocol(factory(), ssl_context, server_side=server_side, server_hostname=server_hostname,
                               on_failed=on_failed)

        return lambda: cls(self, tls_app, server_side, tls=True)

    def serve_stream(self, sock: socket.socket, protocol_factory: ProtocolFactory,
                     ssl_context: ssl.SSLContext | None = None) -> _Listener:
        """Accept on the listening ``sock`` with the loop; works before ``run()`` and from callbacks.

        Returns:
            A handle whose ``close()`` stops accepting.
        """
        self._note_hidden_syscalls()
        listener = _Listener(self, sock)
        self._listeners.append(listener)
        bridge = self._stream_factory(protocol_factory, server_side=True, ssl_context=ssl_context)

        async def start() -> None:
            if sock.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(bridge, sock=sock, backlog=self.settings.backlog)
            else:
                server = await self.loop.create_server(bridge, sock=sock, backlog=self.settings.backlog)
            listener.started(server)

        self._submit(start())
        return listener

    def serve_datagram(self, sock: socket.socket, protocol_factory: DatagramFactory) -> LoopDatagramEndpoint:
        """Drive one datagram protocol with the bound UDP ``sock``; returns the endpoint (``close()``).

        socklab reads the socket itself when the loop says it is readable (a burst per readiness,
        :mod:`socklab.engines._aio_datagram`), not through the loop's datagram transport.
        """
        endpoint = LoopDatagramEndpoint(self, sock, protocol_factory())
        self._endpoints.append(endpoint)

        async def start() -> None:
            endpoint.start()

        self._submit(start())
        return endpoint

    def close_listeners(self) -> None:
        for listener in list(self._listeners):
            listener.close()
        for endpoint in list(self._endpoints):
            endpoint.close()

    async def _dial(self, targets: list[Target], timeout: float, what: str) -> socket.socket:
        """:class:`~socklab.core.dial.Dial` on this loop; a cancelled task closes what it had opened."""
        done: asyncio.Future[socket.socket] = self.loop.create_future()

        def connected(sock: socket.socket, addr: Any) -> None:
            if done.done():
                close_traced(sock, self.tracer, "the connect was abandoned before this socket was handed over")
            else:
                done.set_result(sock)

        def failed(err: SocklabError) -> None:
            if not done.done():
                done.set_exception(err)

        dial = Dial(self.loop, targets, timeout=max(0.0, timeout), what=what, tracer=self.tracer,
                    on_connected=connected, on_failed=failed)
        dial.start()
        try:
            return await done
        finally:
            dial.cancel()  # (nothing left to do once it finished)

    def connect_stream(self, endpoint: Endpoint, protocol_factory: ProtocolFactory, *,
                       ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                       timeout: float = 10.0,
                       on_error: Callable[[BaseException], None] | None = None,
                       source_address: tuple[str, int] | None = None) -> None:
        """Open a client connection on the loop; ``connection_made`` follows, or ``on_error(exc)``.

        ``exc`` is a :class:`~socklab.core.errors.SocklabError` (``ConnectionRefused``,
        ``ConnectTimeout``, ``ResolveError``...). The connect itself is :mod:`socklab.core.dial`'s
        (every address, RFC 8305 timing, traced), as on the other engines - not the loop's
        ``create_connection(host, port)`` - and the loop adopts the winning socket (with TLS).
        """
        self._note_hidden_syscalls()
        loop = self.loop
        hostname = (server_hostname or endpoint.host) if ssl_context is not None else None

        def report(err: BaseException) -> None:
            if on_error is not None:
                on_error(err)
            elif self.tracer:
                self.tracer.note(f"connect failed: {err}", level="transport")

        bridge = self._stream_factory(protocol_factory, server_side=False, ssl_context=ssl_context,
                                      server_hostname=hostname, on_failed=report)

        async def connect() -> None:
            deadline = loop.time() + timeout
            try:
                if endpoint.unix is not None or literal_family(endpoint.host) is not None:  # no name to look up
                    targets = client_targets(endpoint, socket.SOCK_STREAM, source_address)
                else:
                    targets = await asyncio.wait_for(loop.run_in_executor(
                        None, client_targets, endpoint, socket.SOCK_STREAM, source_address), timeout)
                sock = await self._dial(targets, deadline - loop.time(), str(endpoint))
                try:
                    if endpoint.unix is not None:
                        await loop.create_unix_connection(bridge, sock=sock)
                    else:
                        await loop.create_connection(bridge, sock=sock)
                except BaseException as exc:
                    close_traced(sock, self.tracer, f"the loop could not take the connected socket over: {exc!r}")
                    raise
            except SocklabError as failure:  # the dial's, client_targets'
                report(failure)
            except (OSError, TimeoutError) as exc:
                if type(exc) is not socket.gaierror and exc.errno:
                    # asyncio's "Connect call failed (...)"
                    exc = OSError(exc.errno, os.strerror(exc.errno))  # -> the errno's own words
                err = translate_oserror(exc, f"connecting to {endpoint}")
                if isinstance(exc, TimeoutError) and not isinstance(err, ConnectTimeout):
                    err = ConnectTimeout(f"timed out while connecting to {endpoint}")
                report(err)

        if self._on_loop_thread() or not loop.is_running():
            task = loop.create_task(connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            asyncio.run_coroutine_threadsafe(connect(), loop)


class AsyncioEngine(_AioEngine):
    """CPython's asyncio loop; its transport reads at most 64 KiB at a time (see the module docstring)."""

    info = EngineInfo(
        name="asyncio", model="CPython's asyncio event loop (selectors + callbacks), socklab protocols adapted 1:1",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="embedding socklab protocols in an asyncio program, or comparing with stock asyncio",
        limits="pure-Python loop: slower than uvloop or epoll per message; syscalls are traced at the "
               "transport level")

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


class UvloopEngine(_AioEngine):
    """The libuv-based uvloop (it reads into its own preallocated buffer)."""

    info = EngineInfo(
        name="uvloop", model="uvloop: the asyncio API on libuv (C), socklab protocols adapted 1:1",
        concurrent=True, supports=frozenset({"tcp", "udp", "unix", "tls", "client"}),
        choose_when="the fastest loop for many connections with small messages",
        limits="needs the uvloop package; no loop.sendfile(); syscalls are traced at the transport level")

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
