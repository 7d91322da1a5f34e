"""Writing responses: the status line and framing, small bodies in one write, files in chunks or by sendfile.

Why this exists: :class:`~socklab.apps.http.protocol.HttpProtocol` is two jobs - the connection's
life cycle (parse, timers, keep-alive) and getting a response onto the wire without holding its
body in memory. This module is the second job, as a base class the protocol builds on.

Bodies are never held in memory whole: files go out in chunks of :data:`CHUNK` bytes as the
transport drains (its ``pause_writing``/``resume_writing``), or with ``os.sendfile`` when the
engine exposes a non-blocking socket and there is no TLS. The framing fields (``Content-Length``,
``Connection``, ``Transfer-Encoding``) are always ours to write; a handler's header value with CR
or LF is dropped (no response splitting).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import IO, Any

from socklab.apps.http.router import Body, FileSpan, Request, Response
from socklab.apps.http.settings import HttpSettings
from socklab.core.protocol import Protocol
from socklab.core.transport import Transport
from socklab.protocols.text import escape_peer_text

__all__ = ["CHUNK", "ResponseWriter", "http_date", "reason"]

CHUNK = 64 * 1024  # bytes read from a file per write when sendfile is not used
SENDFILE_MAX = 1 << 30
SMALL_FILE = 16 * 1024  # files up to this size are read and sent with the head in one write

# The connection's states (HttpProtocol's life cycle; see its module docstring).
IDLE, HEAD, BODY, RESPOND, WEBSOCKET, CLOSED = range(6)
_NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"connection", b"transfer-encoding"})
# RFC 9110 §15 renamed a few phrases that Python 3.11's http.HTTPStatus still spells the old way.
_RFC9110_PHRASES = {413: "Content Too Large", 416: "Range Not Satisfiable", 422: "Unprocessable Content"}
_STATUS_LINES: dict[int, bytes] = {}


def reason(status: int) -> str:
    """The reason phrase of ``status`` as RFC 9110 §15 spells it."""
    phrase = _RFC9110_PHRASES.get(status)
    if phrase is not None:
        return phrase
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason(status).encode())
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


class ResponseWriter(Protocol):
    """Sends one response at a time on ``transport``; :meth:`_response_done` is called when it is out.

    The subclass owns the state (``state``, ``_keep_alive``...) and implements
    :meth:`_response_done` and :meth:`_close`.
    """

    transport: Transport
    settings: HttpSettings
    state: int
    client: Any
    access_log: Callable[[Request | None, Any, int, int, str], None] | None
    _keep_alive: bool
    _write_paused: bool
    _tracer: Any

    def _init_writer(self) -> None:
        self._out: deque[bytes | FileSpan] = deque()
        self._files: list[IO[bytes]] = []
        self._sendfile = False  # transport.sendfile for file bodies (the engine's capability)
        self._sendfile_mode = False
        self._corked = False

    def _setup_sendfile(self, transport: Transport) -> None:
        # TLS cannot send from the page cache (the bytes must be encrypted): chunks, as before
        self._sendfile = bool(self.settings.sendfile) and transport.get_extra_info("ssl_object") is None

    def _response_done(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _error(self, status: int, message: str, *, line: str = "-", req: Request | None = None,
               headers: list[tuple[str, str]] | None = None) -> None:
        """Answer a protocol error with ``status`` and close (the stream cannot be trusted any more)."""
        if self.state in (CLOSED, WEBSOCKET):
            return
        self._cancel_timer()
        self.state = RESPOND
        self._keep_alive = False
        body = f"{status} {reason(status)}: {message}\n".encode("utf-8", "replace")
        fields = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]
        self._respond(req, Response(status, fields + (headers or []), body), line)

    def _cancel_timer(self) -> None:
        raise NotImplementedError

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
            if self.state == RESPOND:
                self._response_done()
            return
        parts: list[bytes | FileSpan]
        if type(body) is bytes:  # the common case (small files, handlers): no copy, no list walk
            parts, length = ([body] if body else []), len(body)
        else:
            try:
                parts, length = self._body_parts(body)
            except OSError as exc:
                print(f"socklab http: cannot open the response body: {escape_peer_text(str(exc))}", file=sys.stderr)
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
            if self.state == RESPOND:
                self._response_done()
            return
        if parts and self._sendfile and not self._out and isinstance(parts[-1], FileSpan):
            # The head and the file in full segments (nginx's tcp_nopush): cork until the response is out.
            self._corked = self.transport.set_cork(True)
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
        while out and not self._write_paused and self.state == RESPOND:
            part = out[0]
            if isinstance(part, bytes):
                out.popleft()
                transport.write(part)
                continue
            if part.length <= 0:
                out.popleft()
                continue
            if self._sendfile and transport.get_write_buffer_size() == 0:
                if self._send_file(part):
                    continue
                if self.state != RESPOND:
                    return
            n = min(CHUNK, part.length)
            try:
                data = _read_at(part.file, part.offset, n)
            except OSError as exc:
                print(f"socklab http: reading a response body failed: {escape_peer_text(str(exc))}", file=sys.stderr)
                data = b""
            if not data:  # the file shrank under us: the promised length cannot be kept
                self.state = CLOSED
                transport.abort()
                return
            out[0] = FileSpan(part.file, part.offset + len(data), part.length - len(data))
            transport.write(data)
        if not out and self.state == RESPOND:
            self._response_done()

    def _send_file(self, part: FileSpan) -> bool:
        """``transport.sendfile``; True if bytes went out. False means: wait for the socket to drain.

        Where the engine can, the kernel sends from the page cache (``os.sendfile``; the engine
        traces it); elsewhere the transport reads and writes a chunk. When the socket is full
        (0), one chunk is written through the transport with the write buffer's water marks at
        zero: ``resume_writing`` then means "buffer empty", exactly when sendfile can be tried again.
        """
        try:
            sent = self.transport.sendfile(part.file, part.offset, min(part.length, SENDFILE_MAX))
        except EOFError:  # end of file before the promised length
            self.state = CLOSED
            self.transport.abort()
            return False
        except OSError as exc:  # reading the file failed: the chunk path below says so
            print(f"socklab http: sending a response body failed: {escape_peer_text(str(exc))}", file=sys.stderr)
            self._sendfile = False
            return False
        if sent > 0:
            self._out[0] = FileSpan(part.file, part.offset + sent, part.length - sent)
            return True
        if self.state != RESPOND or self.transport.is_closing():  # the connection failed meanwhile
            return False
        if not self._sendfile_mode:
            self._sendfile_mode = True
            self.transport.set_write_buffer_limits(high=0, low=0)
        return False

    def _end_of_response(self) -> None:
        """Release what the response held: its files, the cork, the sendfile water marks."""
        if self._files:
            self._close_files()
        if self._corked:
            self._corked = False
            self.transport.set_cork(False)  # flush the last partial segment
        if self._sendfile_mode:
            self._sendfile_mode = False
            self.transport.set_write_buffer_limits()


def _read_at(f: IO[bytes], offset: int, n: int) -> bytes:
    try:
        return os.pread(f.fileno(), n, offset)
    except (AttributeError, OSError, ValueError):
        f.seek(offset)
        return f.read(n)
