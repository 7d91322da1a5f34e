"""The JSON-RPC server: one service, one engine, listeners on TCP, HTTP POST and WebSocket.

Why this exists: the same calls should be reachable however a client connects. Each transport is
a thin socklab :class:`~socklab.core.protocol.Protocol` that only cuts bytes into messages and
wraps the answers; the JSON-RPC work is the shared :class:`~socklab.apps.rpc.dispatch.Session`:

- ``tcp://HOST:PORT`` - :class:`RpcStreamProtocol`: newline-delimited JSON or Content-Length
  framing, detected from the client's first bytes (see :mod:`socklab.protocols.framing`);
- ``http://HOST:PORT/PATH`` - :class:`RpcHttpProtocol`: one message per ``POST`` (h11), answer
  ``200 application/json``, or ``204 No Content`` when only notifications were sent;
- ``ws://HOST:PORT/PATH`` - socklab's HTTP layer (:mod:`socklab.apps.http.api`) with
  :func:`websocket_handler` on a route: one JSON-RPC message per WebSocket message, answers as
  text messages, many calls in flight.

Why POST does not use the shared HTTP layer: its route handlers are synchronous
(``Request -> Response`` on the engine thread), so answering a call that runs on the thread pool
would block the engine until it finished. :class:`RpcHttpProtocol` is a small h11 adapter that
answers when the calls complete instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from socklab.apps.http.api import HttpProtocol, HttpSettings, Router, WebSocket
from socklab.apps.rpc.dispatch import Dispatcher, Session
from socklab.apps.rpc.service import Service
from socklab.core.errors import RemoteProtocolError, UsageError
from socklab.core.protocol import Protocol
from socklab.core.server import Server
from socklab.core.settings import ServerSettings, setting
from socklab.core.trace import Tracer
from socklab.core.transport import TimerHandle, Transport
from socklab.protocols import jsonrpc as j
from socklab.protocols.framing import EndOfStream, Frame, FrameDecoder, encode_frame

__all__ = ["Listener", "RpcHttpProtocol", "RpcServer", "RpcSettings", "RpcStreamProtocol", "parse_listen",
           "serve", "websocket_handler"]


@dataclass
class RpcSettings(ServerSettings):
    """The RPC server's limits, on top of every server's."""

    max_message_size: int = setting(1024 * 1024, "Largest JSON-RPC message (frame, POST body, WebSocket "
                                                  "message), bytes.")
    max_batch: int = setting(1000, "Most requests in one batch; a larger batch is one -32600 error.")
    max_depth: int = setting(64, "Deepest JSON nesting accepted (checked before parsing).")
    max_number_length: int = setting(100, "Longest number literal accepted, characters (checked before "
                                          "conversion).")
    call_timeout: float = setting(30.0, "Seconds a call may run before it is answered -32001 (0 = no limit).")
    max_concurrent_calls: int = setting(64, "Calls running at once per connection; more wait and the "
                                            "connection stops being read.")
    handler_threads: int = setting(8, "Threads running sync handlers (shared by all connections).")
    request_timeout: float = setting(30.0, "HTTP listeners: seconds to receive a whole request (and to wait for "
                                           "the next one on a kept-alive connection); then 408 or a close.")

    def validate(self) -> None:
        super().validate()
        for name in ("max_message_size", "max_batch", "max_depth", "max_number_length", "max_concurrent_calls",
                     "handler_threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.call_timeout < 0 or self.request_timeout < 0:
            raise UsageError("timeouts cannot be negative")

    def limits(self) -> j.Limits:
        return j.Limits(self.max_message_size, self.max_batch, self.max_depth, self.max_number_length)


_REASONS = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            408: b"Request Timeout",
            413: b"Content Too Large", 431: b"Request Header Fields Too Large"}


def _fatal_reply(code: int | None, message: str) -> bytes:
    return j.encode(j.error_response(None, code if code is not None else j.PARSE_ERROR, data=message))


class _Adapter(Protocol):
    """What the TCP and HTTP adapters share: a session, back-pressure, close when done."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.closing = False  # close once the session is idle (EOF, shutdown)

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.session = Session(self.dispatcher, transport.call_later, self._progress)

    def _progress(self) -> None:
        self._flush()
        if self.transport.is_closing():
            return
        if self.closing and self.session.idle:
            self.transport.close()
        elif not self.session.saturated and not self.transport.is_reading():
            self.transport.resume_reading()

    def _flush(self) -> None:
        """Write what the calls answered since the last flush (adapters that batch their output)."""

    def _after_input(self) -> None:
        self._flush()
        if self.session.saturated and not self.transport.is_closing() and self.transport.is_reading():
            self.transport.pause_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.session.close()

    def shutdown_requested(self) -> None:
        self.closing = True
        if self.session.idle:
            self.transport.close()


class RpcStreamProtocol(_Adapter):
    """JSON-RPC over a byte stream; the framing is detected from the first bytes."""

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self.decoder = FrameDecoder(max_frame=self.dispatcher.limits.max_message_size)
        self.out: list[bytes] = []

    def _reply(self, payload: bytes | None) -> None:
        # Answers are gathered and written once per receive or per batch of completions: under
        # pipelining, one send() carries many answers.
        if payload is not None:
            self.out.append(encode_frame(payload, self.decoder.mode))

    def _flush(self) -> None:
        if self.out:
            out, self.out = self.out, []
            if not self.transport.is_closing():
                self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
        except RemoteProtocolError as exc:
            # Broken framing: say why (id null), then close - the stream cannot be resynchronised.
            self._reply(_fatal_reply(exc.hint, str(exc)))
            self._flush()
            self.closing = True
            self.session.close()
            self.transport.close()
            return
        self._events()
        self._after_input()

    def _events(self) -> None:
        while True:
            ev = self.decoder.next_event()
            if ev is None:
                return
            if isinstance(ev, Frame):
                self.session.handle(ev.data, self._reply)
            elif isinstance(ev, EndOfStream):
                if ev.partial.strip():
                    self._reply(_fatal_reply(j.PARSE_ERROR, "connection closed inside a message"))
                self.closing = True

    def eof_received(self) -> bool:
        self.decoder.receive_data(b"")
        self._events()
        self._flush()
        # everything answered: close; else keep writing until the calls in flight are answered
        return not self.session.idle


class RpcHttpProtocol(_Adapter):
    """JSON-RPC over HTTP/1.1 POST (one message per request, keep-alive), written on h11.

    Args:
        dispatcher: the server's dispatcher.
        path: the one path served (others get 404).
        request_timeout: an absolute deadline (not reset by each byte, so a client sending one byte
            at a time cannot hold the connection) for a whole request, and for the next one to
            start on a kept-alive connection; 0 = none.
    """

    def __init__(self, dispatcher: Dispatcher, path: str = "/rpc", request_timeout: float = 30.0) -> None:
        super().__init__(dispatcher)
        self.path = path.encode()
        self.conn = h11.Connection(h11.SERVER)
        self.body = bytearray()
        self.refuse: tuple[int, str] | None = None
        self.busy = False
        self.request_timeout = request_timeout
        self.timer: TimerHandle | None = None

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self.request_timeout > 0:
            self.timer = self.transport.call_later(self.request_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.busy or self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self.transport.close()  # an idle keep-alive connection: just close it
        elif self.conn.our_state is h11.SEND_RESPONSE:
            self._respond(408, b"request not received within request_timeout", close=True)
        else:  # the head itself is incomplete: h11 cannot answer yet, so say it in raw bytes
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._process()
        self._after_input()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._process()
        self.closing = True
        return self.busy

    def _process(self) -> None:
        while not self.busy and not self.transport.is_closing():
            try:
                ev = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                # the reason stays generic: h11's message quotes the peer's bytes
                self._respond(exc.error_status_hint, b"bad HTTP request\n", close=True)
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                self.body.clear()
                self.refuse = None
                target = ev.target.split(b"?", 1)[0]
                if target != self.path:
                    self.refuse = (404, "not found: JSON-RPC is served at " + self.path.decode())
                elif ev.method != b"POST":
                    self.refuse = (405, "use POST")
            elif isinstance(ev, h11.Data):
                if self.refuse is None:
                    self.body += ev.data
                    if len(self.body) > self.dispatcher.limits.max_message_size:
                        self._respond(413, b"request body larger than max_message_size", close=True)
                        return
            elif isinstance(ev, h11.EndOfMessage):
                if self.refuse is not None:
                    self._respond(self.refuse[0], self.refuse[1].encode(), text=True)
                else:
                    self.busy = True
                    self._disarm()
                    self.session.handle(bytes(self.body), self._http_reply)
            elif isinstance(ev, h11.ConnectionClosed):
                self.transport.close()
                return

    def _http_reply(self, payload: bytes | None) -> None:
        self.busy = False
        if self.transport.is_closing():
            return
        if payload is None:
            self._respond(204, b"")
        else:
            self._respond(200, payload)
        self._process()

    def _respond(self, status: int, body: bytes, *, text: bool = False, close: bool = False) -> None:
        ctype = b"text/plain; charset=utf-8" if (text or status >= 400) else b"application/json"
        # RFC 9110 section 8.6: no Content-Length (and no body) in a 204
        headers = [] if status == 204 else [(b"content-type", ctype),
                                             (b"content-length", str(len(body)).encode())]
        if status == 405:
            headers.append((b"allow", b"POST"))
        if close or self.closing:
            headers.append((b"connection", b"close"))
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=headers,
                                              reason=_REASONS.get(status, b"")))
            out += self.conn.send(h11.Data(data=body)) if body else b""
            out += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(out)
        if close or self.conn.our_state is h11.MUST_CLOSE or self.closing:
            self.transport.close()
        elif self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self._arm()  # the next request has request_timeout to arrive


def websocket_handler(dispatcher: Dispatcher, call_later: Callable[[float, Callable[[], None]], TimerHandle]
                      ) -> Callable[[WebSocket], None]:
    """A handler for the HTTP layer's ``Router.websocket(path)``: JSON-RPC over that WebSocket.

    One JSON-RPC message per WebSocket message each way; many calls in flight. Back-pressure: while
    the connection's calls are saturated, ``on_message`` is unset so the HTTP layer queues further
    messages and pauses reading at ``ws_max_queue``; it is set again (and the queue flushed) when
    calls complete.

    Args:
        dispatcher: the server's dispatcher.
        call_later: the engine's timer (runs on the engine thread, like the WebSocket callbacks).
    """
    def handler(ws: WebSocket) -> None:
        def reply(payload: bytes | None) -> None:
            if payload is not None:
                ws.send(payload.decode())

        def on_message(msg: str | bytes) -> None:
            session.handle(msg.encode() if isinstance(msg, str) else msg, reply)
            if session.saturated:
                ws.on_message = None

        def on_progress() -> None:
            if ws.on_message is None and not session.saturated and not ws.closed:
                ws.on_message = on_message
                ws.flush_queue()

        session = Session(dispatcher, call_later, on_progress)
        ws.on_message = on_message
        ws.on_close = lambda code, reason: session.close()

    return handler


# ---- listeners and the server --------------------------------------------------------------------
@dataclass(frozen=True)
class Listener:
    """One ``--listen`` URL: scheme (tcp/http/ws), host, port, path, and whether it is TLS."""

    scheme: str
    host: str
    port: int
    path: str = ""
    tls: bool = False

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = _SECURE[self.scheme] if self.tls else self.scheme
        return f"{scheme}://{host}:{self.port if port is None else port}{self.path}"


_SECURE = {"tcp": "tls", "http": "https", "ws": "wss"}
_PLAIN = {v: k for k, v in _SECURE.items()}


def parse_listen(url: str) -> Listener:
    """``tcp://HOST:PORT``, ``http://HOST:PORT/PATH`` or ``ws://HOST:PORT/PATH`` as a :class:`Listener`.

    Raises:
        UsageError: another scheme, or no host/port.
    """
    parts = urlsplit(url)
    if parts.scheme not in _SECURE and parts.scheme not in _PLAIN:
        raise UsageError(f"--listen {url!r}: the scheme must be tcp://, http:// or ws:// (tls://, https://, "
                         "wss:// with --tls-cert)")
    tls = parts.scheme in _PLAIN
    scheme = _PLAIN.get(parts.scheme, parts.scheme)
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"--listen {url!r}: {exc}") from None
    if not parts.hostname or port is None:
        raise UsageError(f"--listen {url!r}: give HOST:PORT (port 0 picks a free one)")
    default_path = {"tcp": "", "http": "/rpc", "ws": "/ws"}[scheme]
    path = parts.path or default_path
    if scheme == "tcp" and path:
        raise UsageError(f"--listen {url!r}: tcp:// takes no path")
    return Listener(scheme, parts.hostname, port, path, tls)


class RpcServer:
    """A started-or-not :class:`~socklab.core.server.Server` with its dispatcher and listeners.

    Attributes:
        server: the core server (``start``, ``serve_forever``, ``shutdown``).
        dispatcher: the shared dispatcher (``stats``).
        urls: the real URL of each listener (ports resolved), in ``--listen`` order.
    """

    def __init__(self, server: Server, dispatcher: Dispatcher, urls: list[str]) -> None:
        self.server = server
        self.dispatcher = dispatcher
        self.urls = urls

    def start(self) -> RpcServer:
        self.server.start()
        return self

    def shutdown(self, timeout: float | None = None) -> None:
        self.server.shutdown(timeout)

    def __enter__(self) -> RpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown(timeout=2)


def serve(service: Service, listen: Sequence[str] = (), settings: RpcSettings | None = None, *,
          tracer: Tracer | None = None) -> RpcServer:
    """Bind every listener (not started yet: call ``.start()`` or ``.server.serve_forever()``).

    Args:
        service: the methods to expose.
        listen: URLs (see :func:`parse_listen`); empty means ``tcp://`` on the settings' host/port.
        settings: limits, engine...
        tracer: lifecycle trace sink.

    Raises:
        UsageError: a bad URL or setting. NetworkError: a bind failed.
    """
    s = settings if settings is not None else RpcSettings()
    if s.unix:
        raise UsageError("the RPC server listens on tcp://, http:// and ws:// URLs; --unix is not supported")
    listeners = [parse_listen(u) for u in listen] or [Listener("tcp", s.host, s.port, tls=bool(s.tls_cert))]
    for ls in listeners:
        if ls.tls and not s.tls_cert:
            raise UsageError(f"{ls.url()}: a TLS listener needs --tls-cert (and --tls-key)")
    srv = Server(s, tracer=tracer, label="rpc")
    loop = getattr(srv.engine, "loop", None)  # the asyncio/uvloop engines run on a loop: use it
    dispatcher = Dispatcher(service, srv.call_soon_threadsafe, limits=s.limits(), call_timeout=s.call_timeout,
                            max_concurrent_calls=s.max_concurrent_calls, handler_threads=s.handler_threads,
                            engine_loop=loop if isinstance(loop, asyncio.AbstractEventLoop) else None)
    srv.on_stop(dispatcher.close)
    urls: list[str] = []
    try:
        for ls in listeners:
            factory: Any
            if ls.scheme == "tcp":
                def factory() -> Protocol:
                    return RpcStreamProtocol(dispatcher)
            elif ls.scheme == "http":
                def factory(path: str = ls.path) -> Protocol:
                    return RpcHttpProtocol(dispatcher, path, s.request_timeout)
            else:
                router = Router()
                router.websocket(ls.path)(websocket_handler(dispatcher, srv.engine.call_later))
                hs = HttpSettings(engine=s.engine, ws_max_message=s.max_message_size, log_format="none",
                                  idle_timeout=s.idle_timeout, shutdown_timeout=s.shutdown_timeout)

                def factory(router: Router = router, hs: HttpSettings = hs) -> Protocol:
                    return HttpProtocol(router, hs)
            addr = srv.listen(factory, host=ls.host, port=ls.port, tls=ls.tls)
            urls.append(ls.url(addr[1]))
    except BaseException:
        with contextlib.suppress(Exception):
            srv.close()
        raise
    return RpcServer(srv, dispatcher, urls)
