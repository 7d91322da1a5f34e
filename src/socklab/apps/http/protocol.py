"""HttpProtocol: one HTTP/1.1 connection on any engine - parse, route, send, keep alive.

Why this exists: this is the adapter between the sans-I/O parser
(:mod:`socklab.protocols.http1`) and a socklab transport. It owns the connection's clock and its
life cycle::

    accept ─► HEAD (header_timeout: absolute, never reset by data)
                │ head complete
                ▼
              BODY (body_timeout) ─► handler ─► RESPOND (send_timeout while the client reads nothing)
                                                   │ response sent
                            keep-alive ◄───────────┘ (or close: HTTP/1.0, Connection: close, errors)
              IDLE (keepalive_timeout) ─► first byte ─► HEAD ...

Pipelined requests are answered in order: while a response is being sent, further bytes are
buffered (at most ``max_pipelined``, then the client is no longer read). Bodies are never held
in memory whole: files go out in chunks of :data:`CHUNK` bytes as the transport drains (its
``pause_writing``/``resume_writing``), or with ``os.sendfile`` when the engine exposes a
non-blocking socket and there is no TLS. Any protocol violation is answered with the status its
error carries (400, 413, 414, 431...) and ``Connection: close``.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import IO, Any

from socklab.apps.http.accesslog import AccessLog
from socklab.apps.http.router import Body, FileSpan, Request, Response, Router
from socklab.apps.http.settings import HttpSettings
from socklab.core.errors import RemoteProtocolError
from socklab.core.protocol import Protocol
from socklab.core.transport import TimerHandle, Transport
from socklab.protocols.http1 import Http1Parser, RequestComplete, RequestHead
from socklab.protocols.http_paths import parse_target

__all__ = ["CHUNK", "AccessLog", "HttpProtocol"]  # AccessLog re-exported from .accesslog

CHUNK = 64 * 1024  # bytes read from a file per write when sendfile is not used
SENDFILE_MAX = 1 << 30
SMALL_FILE = 16 * 1024  # files up to this size are read and sent with the head in one write
_CORK = getattr(socket, "TCP_CORK", 0)  # Linux: hold partial segments until uncorked

_IDLE, _HEAD, _BODY, _RESPOND, _WEBSOCKET, _CLOSED = range(6)
_NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"connection", b"transfer-encoding"})


_METHODS = {b"GET": "GET", b"HEAD": "HEAD", b"POST": "POST"}  # decoded without a call
_now = time.monotonic  # the protocol's clock (tests replace it)
_STATUS_LINES: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
    return line


_STATUS_200 = _status_line(200)
_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The current ``Date`` header value (RFC 9110 §5.6.7), recomputed once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


_date_block_cache: tuple[int, bytes] = (0, b"")


def _date_block() -> bytes:
    """The ``date`` and ``server`` header lines every response starts with, rebuilt once a second."""
    global _date_block_cache
    now = int(time.time())
    if _date_block_cache[0] != now:
        _date_block_cache = (now, b"date: " + http_date() + b"\r\nserver: socklab\r\n")
    return _date_block_cache[1]


class HttpProtocol(Protocol):
    """Serves HTTP/1.1 (and WebSocket upgrades) with ``router`` under the limits of ``settings``.

    Args:
        router: what answers requests.
        settings: the limits (timeouts, sizes).
        access_log: called once per response, or ``None`` for no log.
    """

    def __init__(self, router: Router, settings: HttpSettings | None = None,
                 access_log: Callable[[Request | None, Any, int, int, str], None] | None = None) -> None:
        self.router = router
        self.settings = s = settings if settings is not None else HttpSettings()
        self.access_log = access_log
        self.parser = Http1Parser(s.max_request_line, s.max_headers_size, s.max_body, backend=s.parser)
        self.state = _HEAD
        self.client: Any = None
        self._timer: TimerHandle | None = None
        self._timer_when = 0.0
        self._deadline: float | None = None
        self._deadline_cb: Callable[[], None] = self._close
        self._send_timer: TimerHandle | None = None
        self._out: deque[bytes | FileSpan] = deque()
        self._files: list[IO[bytes]] = []
        self._keep_alive = True
        self._write_paused = False
        self._read_paused = False
        self._shutdown = False
        self._peer_eof = False
        self._sendfile_fd: int | None = None
        self._sendfile_mode = False
        self._sock: Any = None  # the engine's socket, when sendfile may be used on it
        self._corked = False
        self.ws: Any = None
        self._tracer: Any = None
        self.requests = 0

    # ---- connection callbacks --------------------------------------------------------------------
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        self._tracer = transport.get_extra_info("tracer")
        self._start_timer(self.settings.header_timeout, self._on_head_timeout)
        if self.settings.sendfile and transport.get_extra_info("ssl_object") is None:
            sock = transport.get_extra_info("socket")
            try:
                if sock is not None and sock.gettimeout() == 0.0:
                    self._sendfile_fd = sock.fileno()
                    self._sock = sock
            except (OSError, AttributeError):
                self._sendfile_fd = None

    def data_received(self, data: bytes) -> None:
        if self.state == _WEBSOCKET:
            self.ws.receive(data)
            return
        if self.state == _CLOSED:
            return
        if self.state == _IDLE:  # the first byte of the next request starts its header deadline
            self.state = _HEAD
            self._start_timer(self.settings.header_timeout, self._on_head_timeout)
        self.parser.receive_data(data)
        if self.state == _RESPOND:
            if self.parser.framer.pending > self.settings.max_pipelined and not self._read_paused:
                self._read_paused = True
                self.transport.pause_reading()
            return
        self._process()

    def eof_received(self) -> bool | None:
        self._peer_eof = True
        if self.state == _CLOSED:  # the client closed while we lingered: done
            return None
        if self.state == _WEBSOCKET:
            self.ws.receive(b"")
            return None
        if self.state == _RESPOND:
            self._keep_alive = False
            return True  # finish the response, then close
        self.parser.receive_data(b"")
        try:
            self._process()
        except Exception:
            return None
        return True if self.state == _RESPOND else None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = _CLOSED
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._send_timer is not None:
            self._send_timer.cancel()
        self._out.clear()
        self._close_files()
        if self.ws is not None:
            self.ws.connection_lost()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._send_timer is None and self.settings.send_timeout > 0:
            self._send_timer = self.transport.call_later(self.settings.send_timeout, self._on_send_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self.state == _RESPOND:
            self._pump()

    def shutdown_requested(self) -> None:
        """Graceful shutdown: idle keep-alives close now; a response in flight ends with ``Connection: close``."""
        self._shutdown = True
        self._keep_alive = False
        if self.state == _WEBSOCKET:
            self.ws.shutdown()
        elif self.state == _IDLE or (self.state == _HEAD and not self.parser.in_request):
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
        if self._deadline is None or self.state == _CLOSED:
            return
        left = self._deadline - _now()
        if left > 0:
            self._timer_when = self._deadline
            self._timer = self.transport.call_later(left, self._on_timer)
            return
        self._deadline = None
        self._deadline_cb()

    def _on_head_timeout(self) -> None:
        if self.state == _HEAD:
            if self.parser.in_request:
                self._error(408, "request headers not received within header_timeout")
            else:
                self._close()

    def _on_body_timeout(self) -> None:
        if self.state == _BODY:
            self._error(408, "request body not received within body_timeout")

    def _on_idle_timeout(self) -> None:
        if self.state == _IDLE:
            self._close()

    def _on_send_timeout(self) -> None:
        self._send_timer = None
        if self.state != _CLOSED:
            self.state = _CLOSED
            self.transport.abort()

    # ---- requests --------------------------------------------------------------------------------
    def _process(self) -> None:
        while self.state in (_HEAD, _BODY, _IDLE):
            if self.state == _IDLE and not self.parser.framer.pending and not self._peer_eof:
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
                self.state = _BODY
                if not self.parser.complete_ready:
                    self._start_timer(self.settings.body_timeout, self._on_body_timeout)
                if event.expects_continue:  # RFC 9110 §10.1.1
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                continue
            self._handle(event)

    def _handle(self, done: RequestComplete) -> None:
        self._cancel_timer()
        self.state = _RESPOND
        self.requests += 1
        head = done.head
        line = (f"{head.method.decode('latin-1')} {head.target.decode('latin-1')} HTTP/{head.http_version.decode()}"
                if self.access_log is not None else "")  # the request line is only for the log
        try:
            tp = parse_target(head.target, head.method)
        except RemoteProtocolError as exc:
            self._error(exc.hint or 400, str(exc), line=line)
            return
        method = _METHODS.get(head.method) or head.method.decode("ascii")
        req = Request(method, head.target.decode("latin-1"), tp.path, tp.query.decode("latin-1") if tp.query else "",
                      list(head.headers), done.body, self.client, "1.1" if head.http_version == b"1.1" else "1.0",
                      tp.segments, tp.trailing_slash)
        if head.upgrade is not None:
            self._upgrade(req, line)
            return
        self._keep_alive = self._keep_alive and head.keep_alive and not self._shutdown and not self._peer_eof
        resp = self.router.handle(req)
        self._respond(req, resp, line)

    def _upgrade(self, req: Request, line: str) -> None:
        handler = self.router.ws_routes.get(req.path)
        if handler is None:
            self._error(404, "no WebSocket endpoint here", line=line, req=req)
            return
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection
        from wsproto.events import Request as WSRequest

        from socklab.apps.http.websocket import WebSocket

        conn = WSConnection(ConnectionType.SERVER)
        try:  # RFC 6455 §4.2.1: the handshake's required fields
            conn.initiate_upgrade_connection(req.headers, req.target)
            events = list(conn.events())
            if not events or not isinstance(events[0], WSRequest):
                raise ValueError("not a WebSocket handshake")
        except Exception as exc:
            self._error(400, f"bad WebSocket handshake: {exc}", line=line, req=req)
            return
        self.transport.write(conn.send(AcceptConnection()))
        if self.access_log:
            self.access_log(req, self.client, 101, 0, line)
        self.state = _WEBSOCKET
        self.ws = ws = WebSocket(self, conn, req, self.settings)
        try:
            handler(ws)
        except Exception:  # a handler bug: close 1011 and serve on
            print(f"socklab http: WebSocket handler for {req.path} failed:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            ws.close(1011, "internal error")
            return
        ws.flush_queue()
        leftover = self.parser.take_leftover()
        if leftover:
            ws.receive(leftover)
        if self._shutdown:
            ws.shutdown()

    # ---- responses -------------------------------------------------------------------------------
    def _error(self, status: int, message: str, *, line: str = "-", req: Request | None = None) -> None:
        """Answer a protocol error with ``status`` and close (the stream cannot be trusted any more)."""
        if self.state in (_CLOSED, _WEBSOCKET):
            return
        self._cancel_timer()
        self.state = _RESPOND
        self._keep_alive = False
        body = f"{status} {_reason(status).decode()}: {message}\n".encode("utf-8", "replace")
        headers = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]
        self._respond(req, Response(status, headers, body), line)

    def _respond(self, req: Request | None, resp: Response, line: str) -> None:
        status = resp.status
        keep_alive = self._keep_alive and not resp.close
        body = resp.body
        if (status == 200 and keep_alive and type(body) is bytes and not resp.headers and req is not None
                and req.method == "GET" and req.http_version == "1.1" and len(body) <= CHUNK
                and not self._out and not self._write_paused):
            # The plain case (a small file, a handler's bytes): what the general path below would
            # write, in one join and one write.
            if self.access_log:
                self.access_log(req, self.client, 200, len(body), line)
            self.transport.write(b"".join((_STATUS_200, _date_block(), resp.head_block,
                                           b"content-length: %d\r\n\r\n" % len(body), body)))
            if self.state == _RESPOND:
                self._response_done()
            return
        parts: list[bytes | FileSpan]
        if type(body) is bytes:  # the common case (small files, handlers): no copy, no list walk
            parts, length = ([body] if body else []), len(body)
        else:
            try:
                parts, length = self._body_parts(body)
            except OSError as exc:
                print(f"socklab http: cannot open the response body: {exc}", file=sys.stderr)
                parts, length = [b"500 Internal Server Error\n"], 25
                status, resp = 500, Response(500, [("content-type", "text/plain")])
        lines = [_status_line(status), _date_block(), resp.head_block]
        for name, value in resp.headers:
            if isinstance(name, str):
                name = name.encode("latin-1")
            if isinstance(value, str):
                value = value.encode("latin-1")
            if name.lower() in _FRAMING or b"\n" in value or b"\r" in value:
                continue  # framing is ours to write; CR/LF in a value would split the response
            lines.append(b"%s: %s\r\n" % (name, value))
        no_body = status in _NO_BODY_STATUSES or 100 <= status < 200
        if not no_body:
            lines.append(b"content-length: %d\r\n" % length)
        if not keep_alive:
            lines.append(b"connection: close\r\n\r\n")
        elif req is not None and req.http_version == "1.0":
            lines.append(b"connection: keep-alive\r\n\r\n")  # an HTTP/1.0 client closes otherwise (RFC 9112 §9.3)
        else:
            lines.append(b"\r\n")
        self._keep_alive = keep_alive
        if self.access_log:
            self.access_log(req, self.client, status, 0 if no_body else length, line)
        if no_body or (req is not None and req.method == "HEAD"):
            if self._files:
                self._close_files()
            parts = []
        if parts:
            first = parts[0]
            if isinstance(first, FileSpan) and first.length <= SMALL_FILE:
                try:  # a small file goes out with the head in one write: one send() per response
                    data = _read_at(first.file, first.offset, first.length)
                except OSError:
                    data = b""
                if len(data) == first.length:
                    parts[0] = first = data
            if isinstance(first, bytes) and len(first) <= CHUNK:
                lines.append(first)
                del parts[0]  # one write for head and small body (no Nagle/delayed-ACK stall)
        head = b"".join(lines)
        if not parts and not self._out and not self._write_paused:  # the whole response in one write
            self.transport.write(head)
            if self.state == _RESPOND:
                self._response_done()
            return
        if parts and self._sendfile_fd is not None and not self._out and isinstance(parts[-1], FileSpan) and _CORK:
            # The head and the file in full segments (nginx's tcp_nopush): cork until the response is out.
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
                self._corked = True
            except (OSError, AttributeError):
                pass
        self._out.append(head)
        self._out.extend(parts)
        self._pump()

    def _body_parts(self, body: Body) -> tuple[list[bytes | FileSpan], int]:
        if isinstance(body, (bytes, bytearray, memoryview)):
            return ([bytes(body)] if body else []), len(body)
        if isinstance(body, FileSpan):
            self._own(body.file)
            return [body], body.length
        if isinstance(body, list):
            total = 0
            for part in body:
                if isinstance(part, FileSpan):
                    self._own(part.file)
                    total += part.length
                else:
                    total += len(part)
            return list(body), total
        if isinstance(body, str):
            data = body.encode("utf-8")
            return ([data] if data else []), len(data)
        if isinstance(body, os.PathLike):
            opened: IO[bytes] = open(body, "rb")  # noqa: SIM115 - closed when the response ends or is dropped
            self._own(opened)
            size = os.fstat(opened.fileno()).st_size
            return [FileSpan(opened, 0, size)], size
        f = body
        self._own(f)
        try:
            start = f.tell()
            end = f.seek(0, os.SEEK_END)
            f.seek(start)
        except (OSError, ValueError):
            data = f.read()
            return [data], len(data)
        return [FileSpan(f, start, end - start)], end - start

    def _own(self, f: IO[bytes]) -> None:
        if all(f is not g for g in self._files):
            self._files.append(f)

    def _close_files(self) -> None:
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()

    def _pump(self) -> None:
        """Write queued parts until the transport pushes back; then wait for ``resume_writing``."""
        out, transport = self._out, self.transport
        while out and not self._write_paused and self.state == _RESPOND:
            part = out[0]
            if isinstance(part, bytes):
                out.popleft()
                transport.write(part)
                continue
            if part.length <= 0:
                out.popleft()
                continue
            if self._sendfile_fd is not None and transport.get_write_buffer_size() == 0:
                if self._sendfile(part):
                    continue
                if self.state != _RESPOND:
                    return
            n = min(CHUNK, part.length)
            try:
                data = _read_at(part.file, part.offset, n)
            except OSError as exc:
                print(f"socklab http: reading a response body failed: {exc}", file=sys.stderr)
                data = b""
            if not data:  # the file shrank under us: the promised length cannot be kept
                self.state = _CLOSED
                transport.abort()
                return
            out[0] = FileSpan(part.file, part.offset + len(data), part.length - len(data))
            transport.write(data)
        if not out and self.state == _RESPOND:
            self._response_done()

    def _sendfile(self, part: FileSpan) -> bool:
        """Try ``os.sendfile``; True if bytes went out. False means: wait for the socket to drain.

        When the socket is full, one chunk is written through the transport with the write
        buffer's water marks at zero: ``resume_writing`` then means "buffer empty", which is
        exactly when sendfile can be tried again.
        """
        assert self._sendfile_fd is not None
        try:
            fileno = part.file.fileno()
            sent = os.sendfile(self._sendfile_fd, fileno, part.offset, min(part.length, SENDFILE_MAX))
        except BlockingIOError:
            sent = -1
        except (OSError, ValueError, AttributeError) as exc:
            err = getattr(exc, "errno", None)
            if err in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                self.state = _CLOSED
                self.transport.abort()
                return False
            self._sendfile_fd = None  # not a regular file, or the engine's socket refuses it: use chunks
            return False
        tracer = self._tracer
        if tracer is not None:
            tracer.emit("sendfile", fd=self._sendfile_fd, peer=self.client, nbytes=max(sent, 0),
                        requested=min(part.length, SENDFILE_MAX),
                        detail=f"from file offset {part.offset}" + (" - EAGAIN: socket full" if sent < 0 else ""))
        if sent == 0:  # end of file before the promised length
            self.state = _CLOSED
            self.transport.abort()
            return False
        if sent > 0:
            self._out[0] = FileSpan(part.file, part.offset + sent, part.length - sent)
            return True
        if not self._sendfile_mode:
            self._sendfile_mode = True
            self.transport.set_write_buffer_limits(high=0, low=0)
        return False

    def _response_done(self) -> None:
        if self._files:
            self._close_files()
        if self._corked:
            self._corked = False
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)  # flush the last partial segment
            except (OSError, AttributeError):
                pass
        if self._sendfile_mode:
            self._sendfile_mode = False
            self.transport.set_write_buffer_limits()
        if not self._keep_alive or self._shutdown:
            self._close()
            return
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self.parser.framer.pending:
            self.state = _HEAD
            self._start_timer(self.settings.header_timeout, self._on_head_timeout)
            self._process()
        elif self._peer_eof:
            self._close()
        else:
            self.state = _IDLE
            self._start_timer(self.settings.keepalive_timeout, self._on_idle_timeout)

    def _close(self) -> None:
        """Close after the last response - lingering when the client may still be sending.

        Closing a socket with unread input makes the kernel send an RST, and an RST can destroy the
        response still in flight to the client (a 413 for a body being uploaded, say). So, unless
        the client already finished (EOF), send our FIN after the response, keep reading and
        discarding (``data_received`` ignores input once closed) until the client closes too or
        ``linger_timeout`` passes, then close.
        """
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
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


def _read_at(f: IO[bytes], offset: int, n: int) -> bytes:
    try:
        return os.pread(f.fileno(), n, offset)
    except (AttributeError, OSError, ValueError):
        f.seek(offset)
        return f.read(n)
