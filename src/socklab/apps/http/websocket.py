"""WebSocket connections (RFC 6455) on the HTTP layer: wsproto's handshake, socklab's own framing.

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
(RFC 6455 §8.1); a ping is sent once a connection has been silent for a whole
``ws_ping_interval`` (between one and two intervals after its last frame) and the connection is
closed if no pong comes within ``ws_ping_timeout``. Frames are parsed by
:mod:`socklab.protocols.wsframe` (every RFC 6455 check; about 3x cheaper than wsproto's parser);
a message only sets a flag that the periodic keep-alive check reads - no timer is reset per message. Messages that arrive before ``on_message``
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
from wsproto.events import AcceptConnection
from wsproto.events import Request as WSRequest

from socklab.apps.http.guards import origin_allowed
from socklab.apps.http.sending import WEBSOCKET
from socklab.protocols.text import escape_peer_text
from socklab.protocols.wsframe import (
    OP_PING,
    OP_PONG,
    Close,
    FrameParser,
    Ping,
    Pong,
    WsProtocolError,
    close_frame,
    data_frame,
    frame,
)

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
    proto.ws = ws = WebSocket(proto, req, settings)
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

    def __init__(self, proto: HttpProtocol, request: Request, settings: HttpSettings) -> None:
        self._proto = proto
        self._write = proto.transport.write
        self._parser = FrameParser(settings.ws_max_message)
        self._one_message = self._parser.one_message
        self.request = request
        self.settings = settings
        self.on_message: Callable[[str | bytes], None] | None = None
        self.on_close: Callable[[int, str], None] | None = None
        self._queue: deque[str | bytes] = deque()
        self._closed = False  # on_close has been called: nothing more happens
        self._close_sent = False
        self._active = False  # a frame came since the last keep-alive check
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
        if self._closed or self._close_sent:
            return
        if type(message) is str:  # data_frame()'s common case without its call: one frame less per message
            payload = message.encode()
            n = len(payload)
            if n < 126:
                self._write(bytes((0x81, n)) + payload)
                return
            if n < 0x10000:
                self._write(bytes((0x81, 126, n >> 8, n & 0xFF)) + payload)
                return
        self._write(data_frame(message))

    def send_framed(self, data: bytes) -> None:
        """Send messages already framed by :func:`~socklab.protocols.wsframe.data_frame` (one or
        several frames back to back); ignored once closing. A fan-out frames a message once for
        every connection: server frames are not masked (RFC 6455 section 5.1), so the bytes are
        the same for each."""
        if self._closed or self._close_sent:
            return
        self._write(data)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); the TCP close follows the peer's answer."""
        if self.closed:
            return
        self._close_sent = True
        self._cancel_timers()
        self._write(close_frame(code, reason))
        self._proto.transport.call_later(self.settings.ws_ping_timeout or 5.0, self._proto.transport.close)

    # ---- receiving -------------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Bytes from the peer (``b""`` = EOF); called by the HTTP protocol."""
        if self._closed:
            return
        if not data:
            self._finish(1006, "connection closed without a close frame")
            self._proto.transport.close()
            return
        self._active = True
        msg = self._one_message(data)  # one whole data frame, the common case: no list, no loop
        if msg is not None:
            on_message = self.on_message
            if on_message is not None and not self._queue and not self._close_sent:
                try:
                    on_message(msg)
                except Exception:  # a handler bug: as _call
                    self._handler_failed()
            else:
                self._handle(msg)
            return
        try:
            events = self._parser.feed(data)
        except WsProtocolError as exc:
            for event in exc.events:
                if not self._handle(event):
                    return
            self._fail(exc.code, str(exc))
            return
        for event in events:
            kind = type(event)
            if (kind is str or kind is bytes) and self.on_message is not None and not self._queue \
                    and not self._close_sent:  # the common case, without one more call
                self._call(self.on_message, event)  # type: ignore[arg-type]
                if self._closed:
                    return
            elif not self._handle(event):
                return

    def _handle(self, event: str | bytes | Ping | Pong | Close) -> bool:
        """Act on one event; False once the connection is finished."""
        if isinstance(event, (str, bytes)):
            if self._close_sent:
                return True  # RFC 6455 §1.4: data after our close frame is discarded
            if self.on_message is None or self._queue:
                self._queue_message(event)
            else:
                self._call(self.on_message, event)
            return not self._closed
        if type(event) is Ping:
            if not self._close_sent:
                self._write(frame(OP_PONG, event.payload))
        elif type(event) is Pong:
            if self._pong_timer is not None:
                self._pong_timer.cancel()
                self._pong_timer = None
        elif isinstance(event, Close):
            self._on_peer_close(event)
            return False
        return True

    def _queue_message(self, msg: str | bytes) -> None:
        self._queue.append(msg)
        if len(self._queue) >= self.settings.ws_max_queue:
            self._proto.transport.pause_reading()
        self.flush_queue()

    def _call(self, callback: Callable[[str | bytes], None], msg: str | bytes) -> None:
        try:
            callback(msg)
        except Exception:
            self._handler_failed()

    def _handler_failed(self) -> None:
        """In the ``except`` of a handler call: close this connection (1011), tell the operator, serve on."""
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

    def _on_peer_close(self, event: Close) -> None:
        # The peer started the close, or answered ours: answer it (echoing its code, RFC 6455
        # §5.5.1; an empty close for "no status"), then close TCP.
        if not self._close_sent:
            self._close_sent = True
            self._write(close_frame(event.code))
        self._finish(event.code, event.reason)
        self._proto.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        if not self._close_sent:
            self._close_sent = True
            self._write(close_frame(code, reason[:120]))
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

    # ---- keepalive: one timer per interval, never one per message ----------------------------------
    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    def _schedule_ping(self) -> None:
        if self.settings.ws_ping_interval > 0 and not self.closed:
            self._ping_timer = self._proto.transport.call_later(self.settings.ws_ping_interval, self._check_idle)

    def _check_idle(self) -> None:
        """Every ``ws_ping_interval``: ping if no frame came during the whole interval."""
        self._ping_timer = None
        if self.closed:
            return
        if self._active:
            self._active = False
        else:
            self._write(frame(OP_PING, b"socklab"))
            if self._pong_timer is None and self.settings.ws_ping_timeout > 0:
                self._pong_timer = self._proto.transport.call_later(self.settings.ws_ping_timeout,
                                                                    self._pong_missing)
        self._schedule_ping()

    def _pong_missing(self) -> None:
        self._pong_timer = None
        self._finish(CLOSE_GOING_AWAY, "no pong within ws_ping_timeout")
        self._proto.transport.abort()

    def shutdown(self) -> None:
        """The server is shutting down: close with 1001 Going Away."""
        self.close(CLOSE_GOING_AWAY, "server shutting down")
