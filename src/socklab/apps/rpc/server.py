"""The JSON-RPC server: one service, one engine, listeners on TCP, HTTP POST and WebSocket.

Why this exists: the same calls should be reachable however a client connects. Each transport is
a thin socklab :class:`~socklab.core.protocol.Protocol` that only cuts bytes into messages and
wraps the answers; the JSON-RPC work is the shared :class:`~socklab.apps.rpc.dispatch.Session`:

- ``tcp://HOST:PORT`` - :class:`RpcStreamProtocol`: newline-delimited JSON or Content-Length
  framing, detected from the client's first bytes (see :mod:`socklab.protocols.framing`);
- ``http://HOST:PORT/PATH`` - socklab's HTTP layer (:mod:`socklab.apps.http.api`) with
  :func:`http_handler` as a ``POST`` route: one message per request, answer ``200
  application/json``, or ``204 No Content`` when only notifications were sent;
- ``ws://HOST:PORT/PATH`` - the same HTTP layer with :func:`websocket_handler` on a route: one
  JSON-RPC message per WebSocket message, answers as text messages, many calls in flight.

Both HTTP listeners are the static server's HTTP layer: the same strict framing (no smuggling
forms, 400/505 for malformed or unknown-version requests), the same limits, and the same checks
against web pages (Host on loopback, WebSocket Origin) and per-address caps; see docs/rpc.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from socklab.apps.http.api import HttpProtocol, HttpSettings, Pending, Request, Response, Router, WebSocket
from socklab.apps.http.guards import is_json_content_type
from socklab.apps.rpc.dispatch import Dispatcher, Session
from socklab.apps.rpc.service import Service
from socklab.core.errors import RemoteProtocolError, UsageError
from socklab.core.protocol import Protocol
from socklab.core.settings import ServerSettings, setting
from socklab.core.trace import Tracer
from socklab.core.transport import TimerHandle, Transport
from socklab.protocols import jsonrpc as j
from socklab.protocols.framing import EndOfStream, Frame, FrameDecoder, encode_frame
from socklab.runtime import Server

__all__ = ["Listener", "RpcServer", "RpcSettings", "RpcStreamProtocol", "http_handler", "parse_listen", "serve",
           "websocket_handler"]


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
    threads_per_connection: int = setting(0, "Most handler threads one connection's calls hold at once, so one "
                                             "client's slow calls cannot take the pool (0 = half of "
                                             "--handler-threads, at least 1).")
    request_timeout: float = setting(30.0, "HTTP listeners: seconds to receive a whole request (and to wait for "
                                           "the next one on a kept-alive connection); then 408 or a close.")
    max_connections_per_ip: int = setting(64, "HTTP and WebSocket listeners: connections one client address may "
                                              "hold at once on each; the excess gets 503 and a close (0 = no cap).")
    allow_host: tuple[str, ...] = setting((), "HTTP/WebSocket listeners: a Host name (NAME or NAME:PORT) to answer "
                                              "on a loopback connection besides localhost, 127.x and [::1] (against "
                                              "DNS rebinding; others get 421). Repeatable.", metavar="NAME")
    allow_origin: tuple[str, ...] = setting((), "WebSocket listeners: a web page origin (http://host:port) allowed "
                                                "to connect besides this server's own; '*' allows all (others get "
                                                "403). Repeatable.", metavar="ORIGIN")

    def validate(self) -> None:
        super().validate()
        for name in ("max_message_size", "max_batch", "max_depth", "max_number_length", "max_concurrent_calls",
                     "handler_threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.threads_per_connection < 0:
            raise UsageError("threads_per_connection cannot be negative (0 = half of handler_threads)")
        if self.call_timeout < 0 or self.request_timeout < 0:
            raise UsageError("timeouts cannot be negative")
        if self.max_connections_per_ip < 0:
            raise UsageError("max_connections_per_ip cannot be negative (0 = no cap)")

    def http_settings(self) -> HttpSettings:
        """The HTTP layer's settings for an http:// or ws:// listener of this server.

        Derived, not copied by hand: every field the two share comes from here (all of
        ServerSettings, the per-address cap, --allow-host, --allow-origin), the ones in
        :data:`HTTP_FROM_RPC` are computed from RPC settings, and the rest are the HTTP layer's
        defaults on purpose (:data:`HTTP_DEFAULTS` says why). A field of HttpSettings in none of
        the three fails tests/apps/rpc/test_http_settings.py, so none is defaulted silently.
        """
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(HttpSettings)
                  if f.name in _RPC_FIELDS and f.name not in HTTP_FROM_RPC}
        t = self.request_timeout
        return HttpSettings(**shared, max_body=self.max_message_size, ws_max_message=self.max_message_size,
                            header_timeout=t, body_timeout=t, keepalive_timeout=t, log_format="none")

    def limits(self) -> j.Limits:
        return j.Limits(self.max_message_size, self.max_batch, self.max_depth, self.max_number_length)


_RPC_FIELDS = frozenset(f.name for f in dataclasses.fields(RpcSettings))

HTTP_FROM_RPC: dict[str, str] = {
    "max_body": "--max-message-size: a POST body is one JSON-RPC message",
    "ws_max_message": "--max-message-size: a WebSocket message is one JSON-RPC message",
    "header_timeout": "--request-timeout: one deadline for a whole request",
    "body_timeout": "--request-timeout",
    "keepalive_timeout": "--request-timeout: and for the next request on a kept-alive connection",
    "log_format": "none: the RPC server writes no HTTP access log",
}
"""HttpSettings fields an RPC listener computes from its own settings (field -> from what)."""

HTTP_DEFAULTS: dict[str, str] = {
    "send_timeout": "a client that stops reading answers is closed after the HTTP layer's 30 s",
    "linger_timeout": "the HTTP layer's lingering close after an error answer",
    "max_request_line": "POST /path HTTP/1.1 is short: the HTTP layer's 8 KiB is plenty",
    "max_headers_size": "the HTTP layer's 64 KiB head limit",
    "max_pipelined": "the HTTP layer's bound on pipelined requests waiting for their turn",
    "ws_ping_interval": "the HTTP layer's WebSocket keep-alive pings",
    "ws_ping_timeout": "the HTTP layer's WebSocket keep-alive pings",
    "ws_max_queue": "messages queued while a connection's calls are saturated: the HTTP layer's bound",
    "follow_symlinks": "files only: an RPC listener serves no file",
    "listing": "files only: an RPC listener serves no directory",
    "sendfile": "files only: an RPC listener sends no file",
    "file_cache": "files only: an RPC listener caches no file",
    "parser": "the HTTP layer's choice (httptools when installed)",
}
"""HttpSettings fields an RPC listener leaves at the HTTP layer's default, on purpose (field -> why)."""


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


def http_handler(dispatcher: Dispatcher) -> Callable[[Request], Response | Pending]:
    """A ``POST`` route for the HTTP layer's router: one JSON-RPC message per request body.

    The answer comes when the calls complete (:class:`~socklab.apps.http.router.Pending`), so the
    engine never waits for a call: ``200 application/json``, or ``204 No Content`` when only
    notifications were sent. A body that is not declared JSON (``text/plain`` is what a web page
    may POST anywhere without a CORS preflight) gets 415 and is not parsed. Each connection has
    its own :class:`~socklab.apps.rpc.dispatch.Session` (its fair share of the handler pool),
    closed with the connection.
    """
    def post(req: Request) -> Response | Pending:
        if not is_json_content_type(req.header("content-type")):
            return Response(415, [("content-type", "text/plain; charset=utf-8"), ("accept-post", "application/json")],
                            b"415 Unsupported Media Type: send JSON-RPC with Content-Type: application/json\n")
        conn = req.connection  # the HttpProtocol it came on
        session = conn.conn_state.get("rpc")
        if session is None:
            session = conn.conn_state["rpc"] = Session(dispatcher, conn.transport.call_later)
            conn.on_close(session.close)
        pending = Pending()

        def reply(payload: bytes | None) -> None:
            pending.resolve(Response(204) if payload is None
                            else Response(200, [("content-type", "application/json")], payload))

        session.handle(req.body, reply)
        return pending

    return post


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
                         "wss:// with --tls-cert or --tls-self-signed)")
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
    """A started-or-not :class:`~socklab.runtime.Server` with its dispatcher and listeners.

    Attributes:
        server: the runtime server (``start``, ``serve_forever``, ``shutdown``).
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
    listeners = [parse_listen(u) for u in listen] or [Listener("tcp", s.host, s.port, tls=s.serves_tls)]
    for ls in listeners:
        if ls.tls and not s.serves_tls:
            raise UsageError(f"{ls.url()}: a TLS listener needs --tls-cert (and --tls-key) or --tls-self-signed")
    srv = Server(s, tracer=tracer, label="rpc")
    dispatcher = Dispatcher(service, srv.call_soon_threadsafe, limits=s.limits(), call_timeout=s.call_timeout,
                            max_concurrent_calls=s.max_concurrent_calls, handler_threads=s.handler_threads,
                            threads_per_connection=s.threads_per_connection or None,
                            start_coroutine=srv.engine.start_coroutine)
    srv.on_stop(dispatcher.close)
    urls: list[str] = []
    try:
        for ls in listeners:
            factory: Any
            if ls.scheme == "tcp":
                def factory() -> Protocol:
                    return RpcStreamProtocol(dispatcher)
            else:
                router = Router()
                if ls.scheme == "http":
                    router.add_route("POST", ls.path, http_handler(dispatcher))
                else:
                    router.websocket(ls.path)(websocket_handler(dispatcher, srv.engine.call_later))

                hs = s.http_settings()

                def factory(router: Router = router, hs: HttpSettings = hs) -> Protocol:
                    return HttpProtocol(router, hs)
            addr = srv.listen(factory, host=ls.host, port=ls.port, tls=ls.tls)
            urls.append(ls.url(addr[1]))
    except BaseException:
        with contextlib.suppress(Exception):
            srv.close()
        raise
    return RpcServer(srv, dispatcher, urls)
