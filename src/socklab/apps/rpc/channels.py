"""The client's byte pipes: TCP (framed), HTTP POST (h11) and WebSocket (wsproto), on socklab's engines.

Why this exists: the client's logic (ids, futures, timeouts, reconnect) should not care how a
message travels. A channel offers ``send(payload)`` and delivers every message that arrives to
``on_message(payload)``; when the connection dies it calls ``on_lost(exc)`` once.

Each connection is a protocol on an engine (:mod:`socklab.runtime.client`), as a server's are:
the engine owns it - reads, writes, TLS - and OS errors are translated there, once; no channel
touches a socket. A :class:`~socklab.apps.rpc.client.Client`'s runner turns a select, poll or
epoll engine on the thread that waits (a call, a future's ``result()``, ``close()``), so a
sender writes the socket itself and the waiting thread reads the answer - no thread hand-off;
other engines, ``background=True`` and a channel with a runner of its own have an engine thread.
TCP and WebSocket channels take ``send`` from any thread: the whole message is queued under a
lock (messages never interleave and leave in order) and the engine writes what is queued (at
once, or once per batch when another thread turns it); many calls can be in flight, and
``on_message`` and ``on_lost`` run on the engine (they may run before the constructor returned:
a server that speaks first). The HTTP channel does one POST per message and waits for its
answer (HTTP/1.1 answers in order, so a call waits its turn - send a batch to do several at once).

Back-pressure: at most ``max_queued`` bytes (:data:`~socklab.apps.rpc.settings.MAX_QUEUED`,
4 MiB) wait for the server - queued here or held by the transport because the kernel would not
take them. A sender that would go over waits for room, up to its ``timeout``, then
:class:`~socklab.core.errors.OperationTimeout`: a server that stops reading cannot make the client
buffer without bound. A message larger than the limit is accepted when nothing else waits; the
engine's own sends (a WebSocket pong, a close frame) never wait. Meanwhile the connection goes on
reading (``keep_reading_when_full``): the server may be waiting for its answers to be read before
it reads more requests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import wsproto
import wsproto.events as wse

from socklab.apps.rpc.settings import MAX_QUEUED, RpcClientSettings
from socklab.core.errors import BrokenError, ClosedError, OperationTimeout, RemoteProtocolError, UsageError
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint as Address
from socklab.core.sockets import client_ssl_context
from socklab.core.transport import Transport
from socklab.protocols.framing import Frame, FrameDecoder, encode_frame
from socklab.runtime.client import BlockingClient, ClientHandle

__all__ = ["MAX_QUEUED", "Channel", "Endpoint", "TcpChannel", "WsChannel", "open_channel", "parse_url",
           "tls_context"]

OnMessage = Callable[[bytes], None]
OnLost = Callable[[BaseException], None]
MAX_MESSAGE = 64 * 1024 * 1024  # the largest answer a client accepts from the server it chose
_NUDGE = 8  # a sender lets the engine run after this many messages queued behind one wake-up (see _enqueue)
_DRAIN = 2.0  # seconds bytes queued before close() get to leave
_CLOSE_WAIT = 5.0  # seconds close() waits for the connection's end (from another thread than the engine's)


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: ``tcp://h:p``, ``http://h:p/path`` or ``ws://h:p/path``.

    ``tls://``, ``https://`` and ``wss://`` are the same over TLS (``scheme`` is the plain one and
    ``tls`` is true).
    """

    scheme: str
    host: str
    port: int
    path: str
    tls: bool = False

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def address(self) -> Address:
        """The host and port as the engines take them."""
        return Address(self.host, self.port)


def parse_url(url: str) -> Endpoint:
    """Raises UsageError for an unsupported scheme or a missing port."""
    parts = urlsplit(url if "://" in url else "tcp://" + url)
    secure = {"tls": "tcp", "https": "http", "wss": "ws"}
    if parts.scheme not in ("tcp", "http", "ws") and parts.scheme not in secure:
        raise UsageError(f"{url!r}: use tcp://HOST:PORT, http://HOST:PORT/PATH or ws://HOST:PORT/PATH "
                         "(tls://, https://, wss:// for TLS)")
    tls = parts.scheme in secure
    scheme = secure.get(parts.scheme, parts.scheme)
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{url!r}: {exc}") from None
    if not parts.hostname or port is None:
        raise UsageError(f"{url!r}: give HOST:PORT")
    path = parts.path or {"tcp": "", "http": "/rpc", "ws": "/ws"}[scheme]
    return Endpoint(scheme, parts.hostname, port, path, tls)


def tls_context(cafile: str | None = None, insecure: bool = False) -> Any:
    """The client's TLS context: the system's CAs (or ``cafile``); ``insecure`` skips verification."""
    return client_ssl_context(cafile, insecure)  # socklab's one client context (TLS 1.2 or newer)


def _connect(runner: BlockingClient, ep: Endpoint, factory: Callable[[], Protocol], settings: RpcClientSettings,
             ssl_context: Any) -> ClientHandle[Protocol]:
    """Connect on ``runner``'s engine and wait for ``connection_made``; raises why it failed (translated)."""
    cs = settings if settings.tls == ep.tls else settings.replace(tls=ep.tls)  # the URL decides TLS
    return runner.connect(ep.address, factory, settings=cs, ssl_context=ssl_context)


class Channel:
    """A connection that carries JSON-RPC messages, on ``runner``'s engine (its own when not given).

    ``on_message`` and ``on_lost`` run on the engine's side - the thread that turns it (for HTTP,
    ``on_message`` runs in the sender's thread). A channel that made its own runner stops it in
    :meth:`close`.
    """

    def __init__(self, on_message: OnMessage, on_lost: OnLost, settings: RpcClientSettings | None,
                 runner: BlockingClient | None) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.settings = settings if settings is not None else RpcClientSettings()
        self.closed = False
        self._lost = False
        self._opened = False  # the constructor returned: a loss is reported from then on
        self._send_lock = threading.Lock()
        self._callback: int | None = None  # the thread running one of this connection's callbacks
        self._owns_runner = runner is None
        # a channel alone delivers by callbacks, with nothing to wait in: its own engine has a thread
        self.runner = runner if runner is not None else BlockingClient(self.settings, engine=self.settings.engine)
        self.engine = self.runner.engine
        self._loop = self.runner.caller_loop  # the engine turns on the caller's thread: senders may write

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def in_callback(self) -> bool:
        """Is the calling thread running one of this connection's callbacks (then it must not wait for it)?"""
        return self._callback == threading.get_ident()

    def _stop_runner(self, from_engine: bool) -> None:
        if not self._owns_runner:
            return
        if from_engine and not self.runner.runs_on_caller:  # a callback cannot join its own thread
            threading.Thread(target=self.runner.close, name="socklab-rpc-close", daemon=True).start()
        else:
            self.runner.close()  # from a callback on the caller's thread: closes as the loop lets go


class _StreamChannel(Channel, Protocol):
    """A TCP or WebSocket connection: the engine writes what ``send`` queued and reads the answers."""

    _t: Transport | None

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *,
                 settings: RpcClientSettings | None = None, runner: BlockingClient | None = None,
                 ssl_context: Any = None) -> None:
        Channel.__init__(self, on_message, on_lost, settings, runner)
        self.ep = ep
        self.max_queued = self.settings.max_queued
        self._t = None
        self.done = threading.Event()  # connection_lost ran
        self._cond = threading.Condition()  # guards the queue, the counters and the state below
        self._room_waiters = 0  # senders in _cond.wait() for room under max_queued
        self._queue: list[bytes] = []
        self._pending = 0  # bytes in _queue
        self._held = 0  # bytes the transport held after the last write (the kernel would not take them)
        self._paused = False  # pause_writing() came: the transport holds bytes, wait for resume_writing()
        self._flush_due = False  # a flush is scheduled on the engine
        self._reason: BaseException | None = None  # why the connection ended; send() refuses after
        self._drain_timer: Any = None
        try:
            _connect(self.runner, ep, lambda: self, self.settings, ssl_context)
            self._handshake()
        except BaseException:
            self._abandon()
            raise
        with self._cond:
            self._opened = True
            missed = self._lost  # lost while the constructor ran (not reported then): report it now
        if missed and self._reason is not None:
            self.on_lost(self._reason)

    def _handshake(self) -> None:
        """After ``connection_made``: what must happen before the channel is usable (WebSocket)."""

    def _abandon(self) -> None:
        """The constructor failed: end the connection without reporting it, release the runner."""
        with self._cond:
            self._lost = True
            self.closed = True
            self._cond.notify_all()
        t = self._t
        if t is not None:
            with contextlib.suppress(Exception):
                self.runner.post(t.abort)
        self._stop_runner(self.in_callback())

    # ---- any thread ------------------------------------------------------------------------------
    def _enqueue(self, size: int, encode: Callable[[], bytes], timeout: float | None, *,
                 bounded: bool = True) -> None:
        """Queue ``encode()``'s bytes for the engine; waits for room while ``max_queued`` is reached.

        Raises:
            ClosedError: close() was called. BrokenError: the connection ended.
            OperationTimeout: no room within ``timeout`` seconds (the server does not read).
        """
        bounded = bounded and not self.in_callback()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed:
                    raise ClosedError("this client was closed")
                if self._reason is not None:
                    raise BrokenError(f"the connection is lost: {self._reason}")
                queued = self._pending + self._held
                if not bounded or not queued or queued + size <= self.max_queued:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise OperationTimeout(f"timed out while sending a request: {queued} bytes already wait "
                                           f"for a server that does not read them (max_queued={self.max_queued})")
                if not self.runner.runs_on_caller:
                    self._room_waiters += 1
                    try:
                        self._cond.wait(left)
                    finally:
                        self._room_waiters -= 1
                    continue
                self._cond.release()  # the engine turns on this thread meanwhile, and takes the lock
                try:
                    self.runner.run_until(lambda: self._room_or_end(size), left)
                finally:
                    self._cond.acquire()
            data = encode()  # under the lock: the encoder's state (wsproto) follows the queue's order
            t, loop = self._t, self._loop
            if t is not None and loop is not None and not self._queue and not self._paused and not self._held \
                    and loop.try_hold():
                # Nothing waits before it and no thread turns the engine: this thread writes it now
                # (as the pre-engine client did: no queue, no flush; the lock keeps the order).
                try:
                    t.write(data)  # pause_writing() may come from inside: the lock is reentrant
                    self._held = t.get_write_buffer_size()
                finally:
                    loop.let_go()
                return
            self._queue.append(data)
            self._pending += len(data)
            schedule = not self._flush_due and not self._paused
            self._flush_due = self._flush_due or schedule
            nudge = not schedule and len(self._queue) % _NUDGE == 0
        if schedule:  # written now (the engine is free), else one wake-up of its thread per batch of sends
            self.runner.post(self._flush)
        elif nudge:
            # A thread submitting a burst keeps the GIL for its whole slice, so the woken engine
            # would write nothing until the burst is queued and the server would start late. Let
            # it take what is queued now and then: more calls/s for more CPU per call (tcp://
            # pipelined 12.4k vs 10.1k calls/s, 59 vs 49 us; docs/benchmarks.md, RPC).
            time.sleep(0)

    def _room_or_end(self, size: int) -> bool:
        """May a sender waiting for room go on? (Read without the lock: a hint, checked again under it.)"""
        queued = self._pending + self._held
        return self.closed or self._reason is not None or not queued or queued + size <= self.max_queued

    def close(self) -> None:
        """Close the connection; safe from any thread, callbacks included (``on_lost`` once, ClosedError).

        Bytes already queued get up to ``_DRAIN`` seconds to leave. From another thread this waits
        for the connection's end (up to 5 s); from the channel's own callbacks it returns at once.
        """
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()  # senders waiting for room
        self._end(ClosedError("the client closed the connection"), keep_queue=True)
        with contextlib.suppress(Exception):
            self.runner.post(self._shut)
        from_engine = self.in_callback()
        if not from_engine:
            self.runner.wait(self.done, _CLOSE_WAIT)
        self._stop_runner(from_engine)

    # ---- the engine ------------------------------------------------------------------------------
    def connection_made(self, transport: Transport) -> None:
        self._t = transport
        transport.set_write_buffer_limits(high=0, low=0)  # told as soon as the kernel does not take all
        transport.keep_reading_when_full()  # the server may wait for its answers to be read

    def data_received(self, data: bytes) -> None:
        if self._lost or self._reason is not None:
            return  # after close() the answers have nobody to go to
        self._callback = threading.get_ident()
        try:
            self._feed(data)
        except Exception as exc:  # SocklabError from the decoder; anything a callback raised
            self._end(exc)
            if self._t is not None:
                self._t.abort()
        finally:
            self._callback = None

    def eof_received(self) -> bool | None:
        return None  # the server closed: so do we (connection_lost follows)

    def pause_writing(self) -> None:
        with self._cond:
            self._paused = True

    def resume_writing(self) -> None:
        t = self._t
        with self._cond:
            self._paused = False
            self._held = t.get_write_buffer_size() if t is not None else 0
            self._cond.notify_all()
        self._flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self.closed:
            reason: BaseException = ClosedError("the client closed the connection")
        else:
            reason = exc if exc is not None else BrokenError("the server closed the connection")
        self._callback = threading.get_ident()
        try:
            self._end(reason)
        finally:
            self._callback = None
            self.done.set()

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Hand what is queued to the transport (unless it holds bytes already: then on resume)."""
        t = self._t
        with self._cond:
            self._flush_due = False
            if t is None or self._paused or not self._queue or self._reason is not None:
                return
            data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
            self._queue.clear()
            self._pending = 0
            self._held += len(data)  # still waiting while write() runs: senders count them
        t.write(data)  # pause_writing() may come from inside
        with self._cond:
            self._held = t.get_write_buffer_size()
            if self._room_waiters:  # (a caller turning the engine waits for room in run_until, not here)
                self._cond.notify_all()

    def _shut(self) -> None:
        """close(): what is queued goes to the transport, which closes once it is written (or in _DRAIN s)."""
        t = self._t
        if t is None or t.is_closing():
            return
        with self._cond:
            data = b"".join(self._queue)
            self._queue.clear()
            self._pending = 0
        if data:
            t.write(data)
        t.close()
        self._drain_timer = t.call_later(_DRAIN, t.abort)  # the server would not take them in time

    def _end(self, reason: BaseException, keep_queue: bool = False) -> None:
        """The connection is over: refuse new sends, release waiting senders, report once."""
        with self._cond:
            if self._reason is None:
                self._reason = reason
            if not keep_queue:
                self._queue.clear()
                self._pending = 0
            self._cond.notify_all()
        self._report_lost(reason)

    def _report_lost(self, exc: BaseException) -> None:
        with self._cond:
            report = not self._lost and self._opened
            self._lost = True
        if report:
            self.on_lost(exc)


class TcpChannel(_StreamChannel):
    """JSON-RPC over TCP with ndjson (default) or Content-Length framing (``settings.framing``)."""

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *,
                 settings: RpcClientSettings | None = None, runner: BlockingClient | None = None,
                 ssl_context: Any = None, max_message: int = MAX_MESSAGE) -> None:
        s = settings if settings is not None else RpcClientSettings()
        self.framing = s.framing
        self.decoder = FrameDecoder(max_frame=max_message, mode=s.framing)
        super().__init__(ep, on_message, on_lost, settings=s, runner=runner, ssl_context=ssl_context)

    def _feed(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        while (ev := self.decoder.next_event()) is not None:
            if isinstance(ev, Frame):
                self.on_message(ev.data)

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        """Queue one message (returns before it is written; see the module docstring).

        Raises:
            ClosedError, BrokenError, OperationTimeout: see ``_enqueue``.
        """
        frame = encode_frame(payload, self.framing)
        self._enqueue(len(frame), lambda: frame, timeout)


class WsChannel(_StreamChannel):
    """JSON-RPC over a WebSocket (RFC 6455) with wsproto: one message per JSON-RPC message."""

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *,
                 settings: RpcClientSettings | None = None, runner: BlockingClient | None = None,
                 ssl_context: Any = None) -> None:
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._parts: list[str] = []
        self._accepted = False
        self._answered = threading.Event()  # the handshake was answered (or the connection ended)
        self._refused: BaseException | None = None
        super().__init__(ep, on_message, on_lost, settings=settings, runner=runner, ssl_context=ssl_context)

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        with self._cond:  # RFC 6455 section 4.1: the opening handshake
            request = self.ws.send(wse.Request(host=self.ep.authority, target=self.ep.path))
        transport.write(request)

    def _handshake(self) -> None:
        wait = self.settings.connect_timeout
        if not self.runner.wait(self._answered, wait):
            raise OperationTimeout(f"no answer to the WebSocket handshake from {self.ep.authority} within {wait:g} s")
        if self._refused is not None:
            raise self._refused
        if not self._accepted:
            raise BrokenError(f"the server closed the connection during the WebSocket handshake: {self._reason}")

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._answered.set()

    def _feed(self, data: bytes) -> None:
        events: list[wse.Event] = []
        error: wsproto.utilities.ProtocolError | None = None
        with self._cond:  # wsproto's state is shared with the senders' ws.send()
            try:
                self.ws.receive_data(data)
                events.extend(self.ws.events())
            except wsproto.utilities.ProtocolError as exc:
                error = exc
        for ev in events:  # callbacks run without the lock (they may send)
            self._event(ev)
        if error is not None:
            what = "handshake failed" if not self._accepted else "data from the server is bad"
            failure = RemoteProtocolError(f"WebSocket {what}: {error}")
            if not self._accepted:
                self._refuse(failure)
            raise failure from error

    def _refuse(self, exc: BaseException) -> None:
        self._refused = exc
        self._answered.set()

    def _event(self, ev: wse.Event) -> None:
        if isinstance(ev, wse.AcceptConnection):
            self._accepted = True
            self._answered.set()
        elif isinstance(ev, wse.RejectConnection):
            failure = RemoteProtocolError(f"WebSocket upgrade refused: HTTP {ev.status_code}")
            self._refuse(failure)
            raise failure
        elif isinstance(ev, wse.TextMessage):
            self._parts.append(ev.data)
            if ev.message_finished:
                text = "".join(self._parts)
                self._parts.clear()
                self.on_message(text.encode())
        elif isinstance(ev, wse.BytesMessage):
            if ev.message_finished:
                self.on_message(bytes(ev.data))
        elif isinstance(ev, wse.Ping):
            self._send_event(ev.response(), bounded=False)
        elif isinstance(ev, wse.CloseConnection):
            with contextlib.suppress(Exception):
                self._send_event(ev.response(), bounded=False)
            self._flush()  # the answering close frame leaves before the connection closes
            self._end(BrokenError(f"the server closed the WebSocket ({ev.code} {ev.reason})".strip()))
            if self._t is not None:
                self._t.close()

    def _send_event(self, event: wse.Event, size: int = 0, timeout: float | None = None, *,
                    bounded: bool = True) -> None:
        self._enqueue(size, lambda: self.ws.send(event), timeout, bounded=bounded)

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        """Queue one text message (returns before it is written; see the module docstring).

        Raises:
            ClosedError, BrokenError, OperationTimeout: see ``_enqueue``.
        """
        self._send_event(wse.TextMessage(data=payload.decode()), len(payload), timeout)

    def close(self) -> None:
        """Send a close frame (RFC 6455 section 5.5.1), then close like the other channels."""
        if not self.closed and self._accepted:
            with contextlib.suppress(Exception):  # refused once the connection is over
                self._send_event(wse.CloseConnection(code=1000), bounded=False)
        super().close()


def open_channel(ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *, settings: RpcClientSettings | None = None,
                 runner: BlockingClient | None = None, ssl_context: Any = None) -> Channel:
    """Connect to ``ep`` with the channel its scheme names (on ``runner``'s engine, or one of its own).

    Raises:
        ConnectionRefused, ConnectTimeout, ResolveError, NetworkError (TLS)...: why it failed.
    """
    if ep.scheme == "tcp":
        return TcpChannel(ep, on_message, on_lost, settings=settings, runner=runner, ssl_context=ssl_context)
    if ep.scheme == "ws":
        return WsChannel(ep, on_message, on_lost, settings=settings, runner=runner, ssl_context=ssl_context)
    from socklab.apps.rpc.http_channel import HttpChannel  # it builds on Channel, defined here

    return HttpChannel(ep, on_message, on_lost, settings=settings, runner=runner, ssl_context=ssl_context)
