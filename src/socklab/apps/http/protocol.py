"""HttpProtocol: one HTTP/1.1 connection on any engine - parse, route, send, keep alive.

Why this exists: this is the adapter between the sans-I/O parser
(:mod:`socklab.protocols.http1`) and a socklab transport. It owns the connection's clock and its
life cycle (writing a response is :mod:`socklab.apps.http.sending`)::

    accept ─► HEAD (header_timeout: absolute, never reset by data)
                │ head complete
                ▼
              BODY (body_timeout) ─► handler ─► RESPOND (send_timeout while the client reads nothing)
                                                   │ response sent
                            keep-alive ◄───────────┘ (or close: HTTP/1.0, Connection: close, errors)
              IDLE (keepalive_timeout) ─► first byte ─► HEAD ...

Pipelined requests (RFC 9112 §9.3.2) are answered in order by one loop, :meth:`_process`: a
response finished inside the loop returns to it (never a recursive call per request, so ten
thousand requests in one read are ten thousand turns of the loop). Memory stays bounded: while a
response waits (a handler's :class:`~socklab.apps.http.router.Pending`, or a client that does not
read what was sent), no further request is parsed, and once ``max_pipelined`` bytes of them are
buffered the client is no longer read. Any protocol violation is answered with the status its
error carries (400, 413, 414, 431...) and ``Connection: close``.

What is refused before a handler runs (see :mod:`socklab.apps.http.guards`): a connection from an
address that already holds ``max_connections_per_ip`` (503), and on a loopback connection a
``Host`` that is not this machine or an ``--allow-host`` name (421).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from socklab.apps.http.accesslog import AccessLog
from socklab.apps.http.guards import host_allowed, is_loopback, peer_refusal
from socklab.apps.http.router import Pending, Request, Response, Router
from socklab.apps.http.sending import BODY, CHUNK, CLOSED, HEAD, IDLE, RESPOND, WEBSOCKET, ResponseWriter
from socklab.apps.http.settings import HttpSettings
from socklab.core.errors import RemoteProtocolError
from socklab.core.transport import TimerHandle, Transport
from socklab.protocols.http1 import Http1Parser, RequestComplete, RequestHead
from socklab.protocols.http_paths import parse_target
from socklab.protocols.text import escape_peer_text

__all__ = ["CHUNK", "AccessLog", "HttpProtocol"]  # AccessLog re-exported from .accesslog

_METHODS = {b"GET": "GET", b"HEAD": "HEAD", b"POST": "POST"}  # decoded without a call
_now = time.monotonic  # the protocol's clock (tests replace it)


class HttpProtocol(ResponseWriter):
    """Serves HTTP/1.1 (and WebSocket upgrades) with ``router`` under the limits of ``settings``.

    Args:
        router: what answers requests.
        settings: the limits (timeouts, sizes).
        access_log: called once per response, or ``None`` for no log.

    Attributes:
        conn_state: a dict a handler may use to keep per-connection data
            (``request.connection.conn_state``); see also :meth:`on_close`.
    """

    def __init__(self, router: Router, settings: HttpSettings | None = None,
                 access_log: Callable[[Request | None, Any, int, int, str], None] | None = None) -> None:
        self.router = router
        self.settings = s = settings if settings is not None else HttpSettings()
        self.access_log = access_log
        self.parser = Http1Parser(s.max_request_line, s.max_headers_size, s.max_body, backend=s.parser)
        self.state = HEAD
        self.client: Any = None
        self.local: Any = None
        self.tls = False
        self._check_host = False  # a loopback connection: Host is checked (DNS rebinding)
        self._good_host: bytes | None = None  # the last Host value that passed (a keep-alive client repeats it)
        self._good_head: RequestHead | None = None  # ...and the last head that carried it
        self._timer: TimerHandle | None = None
        self._timer_when = 0.0
        self._deadline: float | None = None
        self._deadline_cb: Callable[[], None] = self._close
        self._send_timer: TimerHandle | None = None
        self._init_writer()
        self._keep_alive = True
        self._write_paused = False
        self._read_paused = False
        self._shutdown = False
        self._peer_eof = False
        self._processing = False  # inside _process's loop: a finished response returns to it
        self._counted = False
        self._pending: Pending | None = None
        self._on_close: list[Callable[[], None]] = []
        self.ws: Any = None
        self._tracer: Any = None
        self.requests = 0
        self.conn_state: dict[str, Any] = {}

    # ---- what a handler may use (request.connection) ---------------------------------------------
    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when this connection ends."""
        self._on_close.append(callback)

    # ---- connection callbacks --------------------------------------------------------------------
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        self.tls = transport.get_extra_info("ssl_object") is not None
        self._check_host = is_loopback(self.local)
        self._tracer = transport.get_extra_info("tracer")
        if not self.router.peers.add(self.client, self.settings.max_connections_per_ip):
            transport.write(peer_refusal())  # this address holds max_connections_per_ip already
            self._close()  # lingering: closing on its unread request would send an RST over the 503
            return
        self._counted = True
        self._start_timer(self.settings.header_timeout, self._on_head_timeout)
        self._setup_sendfile(transport)

    def data_received(self, data: bytes) -> None:
        if self.state == WEBSOCKET:
            self.ws.receive(data)
            return
        if self.state == CLOSED:
            return
        if self.state == IDLE:  # the first byte of the next request starts its header deadline
            self.state = HEAD
            self._start_timer(self.settings.header_timeout, self._on_head_timeout)
        self.parser.receive_data(data)
        if self.state == RESPOND or self._write_paused:
            self._hold()
            return
        self._process()

    def _hold(self) -> None:
        """A response is still going out: keep what arrives unparsed, up to ``max_pipelined`` bytes."""
        if self.parser.framer.pending > self.settings.max_pipelined and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._peer_eof = True
        if self.state == CLOSED:  # the client closed while we lingered: done
            return None
        if self.state == WEBSOCKET:
            self.ws.receive(b"")
            return None
        self.parser.receive_data(b"")
        if self.state == RESPOND or self._write_paused:
            return True  # answer what is buffered, then close
        try:
            self._process()
        except Exception:
            return None
        return True if self.state == RESPOND else None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = CLOSED
        self._deadline = None
        if self._counted:
            self._counted = False
            self.router.peers.remove(self.client)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._send_timer is not None:
            self._send_timer.cancel()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._out.clear()
        self._close_files()
        if self.ws is not None:
            self.ws.connection_lost()
        callbacks, self._on_close = self._on_close, []
        for cb in callbacks:
            try:
                cb()
            except Exception as exc_cb:  # a handler's bug must not stop the others
                print(f"socklab http: a connection close callback failed: {exc_cb!r}", file=sys.stderr)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._send_timer is None and self.settings.send_timeout > 0:
            self._send_timer = self.transport.call_later(self.settings.send_timeout, self._on_send_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self.state == RESPOND:
            if self._pending is None:
                self._pump()
        elif self.state in (HEAD, BODY, IDLE):
            self._process()  # the requests that waited for the client to read

    def shutdown_requested(self) -> None:
        """Graceful shutdown: idle keep-alives close now; a response in flight ends with ``Connection: close``."""
        self._shutdown = True
        self._keep_alive = False
        if self.state == WEBSOCKET:
            self.ws.shutdown()
        elif self.state == IDLE or (self.state == HEAD and not self.parser.in_request):
            self._close()

    # ---- timers ----------------------------------------------------------------------------------
    def _start_timer(self, delay: float, callback: Callable[[], None]) -> None:
        """Set the connection's one deadline (header, body or keep-alive), ``delay`` seconds from now.

        One engine timer per connection at most: moving the deadline later does not touch it; the
        timer re-arms itself when it fires early. (Cancelling and creating a timer per request
        phase would leave thousands of dead timers in the engine's heap under load.)
        """
        if delay <= 0:
            self._deadline = None
            return
        when = _now() + delay
        self._deadline = when
        self._deadline_cb = callback
        if self._timer is None or when < self._timer_when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = when
            self._timer = self.transport.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        self._deadline = None  # the armed timer, if any, finds no deadline and lapses

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is None or self.state == CLOSED:
            return
        left = self._deadline - _now()
        if left > 0:
            self._timer_when = self._deadline
            self._timer = self.transport.call_later(left, self._on_timer)
            return
        self._deadline = None
        self._deadline_cb()

    def _on_head_timeout(self) -> None:
        if self.state == HEAD:
            if self._write_paused:  # the next request waits for the client to read: send_timeout rules
                self._start_timer(self.settings.header_timeout, self._on_head_timeout)
            elif self.parser.in_request:
                self._error(408, "request headers not received within header_timeout")
            else:
                self._close()

    def _on_body_timeout(self) -> None:
        if self.state == BODY:
            self._error(408, "request body not received within body_timeout")

    def _on_idle_timeout(self) -> None:
        if self.state == IDLE:
            self._close()

    def _on_send_timeout(self) -> None:
        self._send_timer = None
        if self.state != CLOSED:
            self.state = CLOSED
            self.transport.abort()

    # ---- requests --------------------------------------------------------------------------------
    def _process(self) -> None:
        """Parse and answer the requests buffered, in order, until one must wait (a loop, never recursion)."""
        if self._processing:
            return  # a response finished inside the loop below: the loop goes on by itself
        self._processing = True
        try:
            if self._write_paused:  # the client is not reading: parse no further for now
                self._hold()
                return
            while self.state in (HEAD, BODY, IDLE):
                if self.state == IDLE and not self.parser.framer.pending and not self._peer_eof:
                    return  # the response is done and nothing more has arrived (the usual keep-alive case)
                try:
                    event = self.parser.next_event()
                except RemoteProtocolError as exc:
                    self._error(exc.hint or 400, str(exc))
                    return
                if event is None:
                    if self._peer_eof:
                        self._close()
                    return
                if isinstance(event, RequestHead):
                    self.state = BODY
                    if not self.parser.complete_ready:
                        self._start_timer(self.settings.body_timeout, self._on_body_timeout)
                    if event.expects_continue:  # RFC 9110 §10.1.1
                        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    continue
                self._handle(event)
                if self._write_paused:  # that answer filled the client's buffer: parse no further for now
                    self._hold()
                    return
        finally:
            self._processing = False

    def _handle(self, done: RequestComplete) -> None:
        self._cancel_timer()
        self.state = RESPOND
        self.requests += 1
        head = done.head
        line = (escape_peer_text(f"{head.method.decode('latin-1')} {head.target.decode('latin-1')} "
                                 f"HTTP/{head.http_version.decode()}")
                if self.access_log is not None else "")  # the request line is only for the log
        try:
            tp = parse_target(head.target, head.method)
        except RemoteProtocolError as exc:
            self._error(exc.hint or 400, str(exc), line=line)
            return
        method = _METHODS.get(head.method) or head.method.decode("ascii")
        req = Request(method, head.target.decode("latin-1"), tp.path, tp.query.decode("latin-1") if tp.query else "",
                      list(head.headers), done.body, self.client, "1.1" if head.http_version == b"1.1" else "1.0",
                      tp.segments, tp.trailing_slash, self)
        if self._check_host and head is not self._good_head:  # the parser hands a repeated head back as is
            host = None
            for name, value in head.headers:  # Host is usually the first field
                if name == b"host":
                    host = value
                    break
            if host != self._good_host:
                if not host_allowed(None if host is None else host.decode("latin-1"), self.local, tls=self.tls,
                                    allowed=self.settings.allow_host):
                    self._error(421, "this server answers to localhost, 127.0.0.1 and [::1] with its port only "
                                     "(see --allow-host)", line=line, req=req)
                    return
                self._good_host = host
            self._good_head = head
        if head.upgrade is not None:
            from socklab.apps.http.websocket import upgrade

            upgrade(self, req, line)
            return
        # after the client's EOF, the requests it pipelined before it are still answered; the last one closes
        self._keep_alive = (self._keep_alive and head.keep_alive and not self._shutdown
                            and (not self._peer_eof or self.parser.framer.pending > 0))
        resp = self.router.handle(req)
        if isinstance(resp, Pending):
            self._pending = resp
            resp.on_resolved(lambda r: self._answer_later(req, r, line))
            return
        self._respond(req, resp, line)

    def _answer_later(self, req: Request, resp: Response, line: str) -> None:
        """A :class:`Pending` handler answered (on the engine thread)."""
        self._pending = None
        if self.state != RESPOND:
            return
        self._keep_alive = self._keep_alive and not self._shutdown
        self._respond(req, resp, line)

    # ---- after a response ------------------------------------------------------------------------
    def _response_done(self) -> None:
        if self._files or self._corked or self._sendfile_mode:
            self._end_of_response()
        if not self._keep_alive or self._shutdown:
            self._close()
            return
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self.parser.framer.pending:
            self.state = HEAD
            self._start_timer(self.settings.header_timeout, self._on_head_timeout)
            self._process()  # returns at once when called from inside the loop
        elif self._peer_eof:
            self._close()
        else:
            self.state = IDLE
            self._start_timer(self.settings.keepalive_timeout, self._on_idle_timeout)

    def _close(self) -> None:
        """Close after the last response - lingering when the client may still be sending.

        Closing a socket with unread input makes the kernel send an RST, and an RST can destroy the
        response still in flight to the client (a 413 for a body being uploaded, say). So, unless
        the client already finished (EOF), send our FIN after the response, keep reading and
        discarding (``data_received`` ignores input once closed) until the client closes too or
        ``linger_timeout`` passes, then close.
        """
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._cancel_timer()
        linger = self.settings.linger_timeout
        if self._peer_eof or linger <= 0 or not self.transport.can_write_eof():
            self.transport.close()
            return
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        self.transport.write_eof()  # FIN once the response is out; the engine closes when the client's comes
        self.transport.call_later(linger, self.transport.close)
