"""WebSocket connections (RFC 6455) on the HTTP layer, driven by wsproto.

Why this exists: the chat's browser client and JSON-RPC over WebSocket need a message channel on
the same port as the web page. After :class:`~socklab.apps.http.protocol.HttpProtocol` accepts
an upgrade it hands the connection to a :class:`WebSocket`, which the route's handler receives::

    @router.websocket("/ws")
    def on_ws(ws: WebSocket) -> None:
        ws.on_message = lambda msg: ws.send(msg)      # str for text, bytes for binary
        ws.on_close = lambda code, reason: None

Limits (see :class:`~socklab.apps.http.settings.HttpSettings`): a message longer than
``ws_max_message`` closes the connection with 1009 as soon as the running total passes the
limit - the bytes are never gathered first; invalid UTF-8 in a text message closes with 1007
(RFC 6455 §8.1); a ping is sent after ``ws_ping_interval`` idle seconds and the connection is
closed if no pong comes within ``ws_ping_timeout``. Messages that arrive before ``on_message``
is set wait in a queue of at most ``ws_max_queue``; past that the peer is no longer read.
No compression extension is negotiated (no decompression bombs).

Everything runs on the engine thread. From another thread, use ``server.call_soon_threadsafe``.
"""

from __future__ import annotations

import sys
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.events import Request as WSRequest

from socklab.apps.http.guards import origin_allowed
from socklab.apps.http.sending import WEBSOCKET
from socklab.protocols.text import escape_peer_text

if TYPE_CHECKING:
    from socklab.apps.http.protocol import HttpProtocol
    from socklab.apps.http.router import Request
    from socklab.apps.http.settings import HttpSettings
    from socklab.core.transport import TimerHandle

__all__ = ["WebSocket", "upgrade"]

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_TOO_BIG, CLOSE_BAD_DATA = 1000, 1001, 1002, 1009, 1007
CLOSE_INTERNAL = 1011


def upgrade(proto: HttpProtocol, req: Request, line: str) -> None:
    """Answer a WebSocket handshake on ``proto`` (RFC 6455 §4.2): 404, 403, 400 or 101 and a :class:`WebSocket`.

    The ``Origin`` is checked first (cross-site WebSocket hijacking, RFC 6455 §10.2): absent (not a
    browser), same-origin with the ``Host`` or the connection's own address, or in ``allow_origin``;
    anything else gets 403 before the route's handler hears of it.
    """
    handler = proto.router.ws_routes.get(req.path)
    if handler is None:
        proto._error(404, "no WebSocket endpoint here", line=line, req=req)
        return
    settings = proto.settings
    origin = req.header("origin")
    if not origin_allowed(origin, req.header("host"), proto.local, tls=proto.tls, allowed=settings.allow_origin):
        proto._error(403, f"WebSocket from origin {escape_peer_text(origin or '')[:200]} refused: only this "
                          "server's own pages may connect (see --allow-origin)", line=line, req=req)
        return
    conn = WSConnection(ConnectionType.SERVER)
    try:  # RFC 6455 §4.2.1: the handshake's required fields
        conn.initiate_upgrade_connection(req.headers, req.target)
        events = list(conn.events())
        if not events or not isinstance(events[0], WSRequest):
            raise ValueError("not a WebSocket handshake")
    except Exception as exc:
        proto._error(400, f"bad WebSocket handshake: {escape_peer_text(str(exc))[:200]}", line=line, req=req)
        return
    proto.transport.write(conn.send(AcceptConnection()))
    if proto.access_log:
        proto.access_log(req, proto.client, 101, 0, line)
    proto._cancel_timer()
    proto.state = WEBSOCKET
    proto.ws = ws = WebSocket(proto, conn, req, settings)
    try:
        handler(ws)
    except Exception:  # a handler bug: close 1011 and serve on
        print(f"socklab http: WebSocket handler for {escape_peer_text(req.path)} failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        ws.close(1011, "internal error")
        return
    ws.flush_queue()
    leftover = proto.parser.take_leftover()
    if leftover:
        ws.receive(leftover)
    if proto._shutdown:
        ws.shutdown()


class WebSocket:
    """One open WebSocket connection.

    Attributes:
        request: the HTTP upgrade request (path, headers, client address).
        on_message: called with each complete message (``str`` or ``bytes``).
        on_close: called once with ``(code, reason)`` when the connection ends, whoever closed it.
    """

    def __init__(self, proto: HttpProtocol, conn: WSConnection, request: Request, settings: HttpSettings) -> None:
        self._proto = proto
        self._conn = conn
        self.request = request
        self.settings = settings
        self.on_message: Callable[[str | bytes], None] | None = None
        self.on_close: Callable[[int, str], None] | None = None
        self._parts: list[Any] = []
        self._size = 0
        self._queue: deque[str | bytes] = deque()
        self._closed = False
        self._close_sent = False
        self._ping_timer: TimerHandle | None = None
        self._pong_timer: TimerHandle | None = None
        self._schedule_ping()

    # ---- sending ---------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed or self._close_sent

    @property
    def client(self) -> Any:
        return self.request.client

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the transport that the peer has not accepted yet (a slow consumer grows it)."""
        return self._proto.transport.get_write_buffer_size()

    def send(self, message: str | bytes) -> None:
        """Send one text (``str``) or binary (``bytes``) message; ignored once closing."""
        if self.closed:
            return
        event: Message[Any] = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        self._proto.transport.write(self._conn.send(event))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); the TCP close follows the peer's answer."""
        if self.closed:
            return
        self._close_sent = True
        self._cancel_timers()
        if self._conn.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._proto.transport.write(self._conn.send(CloseConnection(code=code, reason=reason)))
        if self._conn.state is ConnectionState.CLOSED:
            self._finish(code, reason)
        else:
            self._proto.transport.call_later(self.settings.ws_ping_timeout or 5.0, self._proto.transport.close)

    # ---- receiving -------------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Bytes from the peer (``b""`` = EOF); called by the HTTP protocol."""
        if self._closed:
            return
        self._conn.receive_data(data or None)
        self._schedule_ping()
        for event in self._conn.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._size += len(event.data)
                if self._size > self.settings.ws_max_message:
                    self._parts.clear()
                    self._fail(CLOSE_TOO_BIG, f"message larger than {self.settings.ws_max_message} bytes")
                    return
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts, self._size = self._parts, [], 0
                    msg: str | bytes = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    self._deliver(msg)
            elif isinstance(event, Ping):
                self._proto.transport.write(self._conn.send(event.response()))
            elif isinstance(event, Pong):
                if self._pong_timer is not None:
                    self._pong_timer.cancel()
                    self._pong_timer = None
            elif isinstance(event, CloseConnection):
                self._on_peer_close(event)
                return
        if not data:
            self._finish(1006, "connection closed without a close frame")
            self._proto.transport.close()

    def _deliver(self, msg: str | bytes) -> None:
        if self.on_message is None or self._queue:
            self._queue.append(msg)
            if len(self._queue) >= self.settings.ws_max_queue:
                self._proto.transport.pause_reading()
            self.flush_queue()
            return
        self._call(self.on_message, msg)

    def _call(self, callback: Callable[[str | bytes], None], msg: str | bytes) -> None:
        try:
            callback(msg)
        except Exception:  # a handler bug: close this connection (1011), tell the operator, serve on
            print(f"socklab http: WebSocket handler for {escape_peer_text(self.request.path)} failed:",
                  file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            self._fail(CLOSE_INTERNAL, "internal error")

    def flush_queue(self) -> None:
        """Deliver queued messages once ``on_message`` is set (called automatically when possible)."""
        while self._queue and self.on_message is not None and not self._closed:
            self._call(self.on_message, self._queue.popleft())
        if not self._queue and not self._closed:
            self._proto.transport.resume_reading()

    def _on_peer_close(self, event: CloseConnection) -> None:
        code = event.code
        if self._conn.state is ConnectionState.REMOTE_CLOSING:
            # The peer started the close (or sent garbage: wsproto reports it as a close with the
            # code to answer, 1002/1007): answer it, then close TCP (RFC 6455 §5.5.1).
            self._proto.transport.write(self._conn.send(event.response()))
        elif self._conn.state is ConnectionState.OPEN:  # a parse failure reported by wsproto
            self._proto.transport.write(self._conn.send(CloseConnection(code=code, reason=event.reason or "")))
        self._finish(code, event.reason or "")
        self._proto.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        if self._conn.state is ConnectionState.OPEN:
            self._proto.transport.write(self._conn.send(CloseConnection(code=code, reason=reason[:120])))
        self._finish(code, reason)
        self._proto.transport.close()

    def _finish(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        if self.on_close is not None:
            self.on_close(code, reason)

    def connection_lost(self) -> None:
        """The TCP connection ended (called by the HTTP protocol)."""
        self._finish(1006, "connection lost")

    # ---- keepalive -------------------------------------------------------------------------------
    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    def _schedule_ping(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self.settings.ws_ping_interval > 0 and not self.closed:
            self._ping_timer = self._proto.transport.call_later(self.settings.ws_ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.closed:
            return
        self._proto.transport.write(self._conn.send(Ping(payload=b"socklab")))
        if self._pong_timer is None and self.settings.ws_ping_timeout > 0:
            self._pong_timer = self._proto.transport.call_later(self.settings.ws_ping_timeout, self._pong_missing)
        self._schedule_ping()

    def _pong_missing(self) -> None:
        self._pong_timer = None
        self._finish(CLOSE_GOING_AWAY, "no pong within ws_ping_timeout")
        self._proto.transport.abort()

    def shutdown(self) -> None:
        """The server is shutting down: close with 1001 Going Away."""
        self.close(CLOSE_GOING_AWAY, "server shutting down")
