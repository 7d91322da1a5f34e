"""HTTP/1.1 request parsing for servers: h11 behind a strict head framer, with named limits.

Why this exists: h11 (>= 0.16) is a well-kept, sans-I/O HTTP/1.1 parser, but it is deliberately
lenient in places a server on the open internet must not be: it accepts bare LF line endings,
obs-fold continuation lines, a ``Content-Length`` beside ``Transfer-Encoding`` (it ignores the
length) and duplicate identical ``Content-Length`` fields. Each of those is a request-smuggling
lever when a proxy in front reads the message differently. So every request *head* first goes
through :class:`HeadFramer`, which finds the end of the head itself, enforces the size limits
(414 for the request line, 431 for the head) and rejects the ambiguous forms; only then is the
head (and the body after it) handed to a fresh ``h11.Connection``.

The convention of every socklab protocol: ``receive_data(bytes)`` (``b""`` = EOF), then
``next_event()`` until it returns ``None``. A peer's garbage raises
:class:`~socklab.core.errors.RemoteProtocolError` whose ``hint`` is the HTTP status to answer
with before closing the connection.

Events: :class:`RequestHead` (the head parsed; the body follows), :class:`RequestComplete` (the
whole request with its body, at most ``max_body`` bytes), and for an upgrade request the parser
stops after the head; :meth:`Http1Parser.take_leftover` hands the bytes after it to the next
protocol (WebSocket).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import h11

from socklab.core.errors import LocalProtocolError, RemoteProtocolError

try:  # llhttp (Node's parser) through httptools: ~40x faster than h11 on a request head
    import httptools
except ImportError:  # pragma: no cover - httptools is a dependency; h11 alone still works
    httptools = None  # type: ignore[assignment]

__all__ = ["BACKENDS", "HeadFramer", "Http1Parser", "RequestComplete", "RequestHead", "default_backend"]

BACKENDS = ("auto", "httptools", "h11")


def default_backend() -> str:
    """``httptools`` when it is installed, else ``h11``."""
    return "httptools" if httptools is not None else "h11"

_CRLF2 = b"\r\n\r\n"
# Parsing a head is a pure function of its bytes: a keep-alive client repeats the same head
# (wrk, a browser fetching assets), so bodiless heads that passed every check are remembered.
PARSED_CACHE_SIZE = 512  # heads remembered (then forgotten all at once)
PARSED_HEAD_MAX = 2048  # longer heads are parsed every time (bounds the memory: ~1 MiB)
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # controls but HTAB, CR and LF
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")


@dataclass(frozen=True)
class RequestHead:
    """A request head was parsed. Headers are ``(lowercase name, value)`` byte pairs, in order."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    keep_alive: bool
    expects_continue: bool
    upgrade: bytes | None  # the lowercase Upgrade token when the client asks to switch protocols


@dataclass(frozen=True)
class RequestComplete:
    """The request's body was received in full (``b""`` when it has none)."""

    head: RequestHead
    body: bytes


_parsed: dict[bytes, RequestComplete] = {}  # head bytes -> the bodiless request they parse to
_checked: set[bytes] = set()  # heads that passed _check_fields


class HeadFramer:
    """Find the end of one request head (RFC 9112 §2.1), enforcing limits and strict line endings.

    Args:
        max_request_line: longest request line accepted, bytes (longer: 414, RFC 9112 §3).
        max_head_size: longest head (request line + fields), bytes (longer: 431, RFC 6585 §5).
    """

    def __init__(self, max_request_line: int, max_head_size: int) -> None:
        self.max_request_line = max_request_line
        self.max_head_size = max_head_size
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already checked
        self._first_line = -1  # where the request line's CRLF is, once seen
        self._blank_lines = 0  # empty lines skipped before this request line

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        return len(self._buf)

    def take(self, n: int) -> bytes:
        """Remove and return up to ``n`` bytes from the front (a Content-Length body)."""
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._scanned = 0
        self._first_line = -1
        return out

    def take_buffer(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        self._first_line = -1
        return out

    def extract(self) -> bytes | None:
        """The complete head (with its final CRLF CRLF) if one is buffered, else ``None``.

        Each byte is scanned once (``_scanned`` remembers how far), so a head dribbled in one byte
        at a time costs linear, not quadratic, time.

        Raises:
            RemoteProtocolError: hint 400, 414 or 431 as described in the module docstring.
        """
        buf = self._buf
        if not buf:
            return None
        if self._scanned == 0 and self._first_line < 0:
            # Fast path: a whole head arrived at once (the usual case). Same checks, fewer steps.
            end = buf.find(_CRLF2)
            if 0 <= end <= self.max_head_size - 4:
                first = buf.find(b"\r\n")
                if 0 < first <= self.max_request_line:
                    head = bytes(buf[:end + 4])
                    if head.count(b"\n") != head.count(b"\r\n"):
                        raise RemoteProtocolError("bare LF in the request head: lines must end with CRLF", hint=400)
                    del buf[:end + 4]
                    self._blank_lines = 0
                    if head not in _checked:
                        _check_fields(head)
                        if len(head) <= PARSED_HEAD_MAX:
                            if len(_checked) >= PARSED_CACHE_SIZE:
                                _checked.clear()
                            _checked.add(head)
                    return head
        if self._first_line < 0 and buf.startswith(b"\r\n"):
            # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
            skip = 0
            while buf.startswith(b"\r\n", skip):
                skip += 2
            del buf[:skip]
            self._scanned = 0
            self._blank_lines += skip // 2
            if self._blank_lines > 4:
                raise RemoteProtocolError("too many empty lines before the request line", hint=400)
        start = max(0, self._scanned - 3)
        end = buf.find(_CRLF2, start)
        if self._first_line < 0:
            self._first_line = buf.find(b"\r\n", max(0, self._scanned - 1))
        first = self._first_line
        if (first < 0 and len(buf) > self.max_request_line) or first > self.max_request_line:
            raise RemoteProtocolError(f"request line longer than {self.max_request_line} bytes "
                                      "(max_request_line)", hint=414)
        limit = end + 4 if end >= 0 else len(buf)
        if limit > self.max_head_size:
            raise RemoteProtocolError(f"request head larger than {self.max_head_size} bytes (max_headers_size)",
                                      hint=431)
        # A bare LF anywhere in the head is refused (RFC 9112 §2.2 allows it; proxies disagree on it).
        s0 = max(0, self._scanned - 1)  # one byte back: a CR just before the new bytes
        seg = buf[s0:limit]
        lfs = seg.count(b"\n")
        if s0 < self._scanned and seg[:1] == b"\n":
            lfs -= 1  # that LF was checked last time
        if lfs != seg.count(b"\r\n"):
            raise RemoteProtocolError("bare LF in the request head: lines must end with CRLF", hint=400)
        if end < 0:
            self._scanned = len(buf)
            return None
        head = bytes(buf[:end + 4])
        del buf[:end + 4]
        self._scanned = 0
        self._first_line = -1
        self._blank_lines = 0
        _check_fields(head)
        return head


def _check_fields(head: bytes) -> None:
    """Refuse the field forms that make request smuggling possible (RFC 9112 §5.2, §6.1, §6.3).

    The common case (no body fields, no folding, no controls) costs a few C-level scans.
    """
    # RFC 9110 §5.5: a control character in the head is refused; so is a CR not followed by LF
    # (bare LFs were refused while framing, so every LF here ends a CRLF).
    if _CTL.search(head) or head.count(b"\r") != head.count(b"\n"):
        raise RemoteProtocolError("a control character in the request head", hint=400)
    first = head.find(b"\r\n")
    parts = head[:first].split(b" ")
    if len(parts) != 3 or not all(parts):  # RFC 9112 §3: method SP request-target SP HTTP-version
        raise RemoteProtocolError("malformed request line (one space between its three parts)", hint=400)
    version = parts[2]
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":  # the same answer from both parser backends
        if _VERSION.fullmatch(version):  # RFC 9112 §2.3 form, a version we do not speak (RFC 9110 §15.6.6)
            raise RemoteProtocolError(f"{version.decode('ascii')} is not supported (HTTP/1.0 and 1.1 are)", hint=505)
        raise RemoteProtocolError("malformed HTTP version in the request line", hint=400)
    if b"\r\n " in head or b"\r\n\t" in head:
        raise RemoteProtocolError("obsolete line folding (obs-fold) in a header field", hint=400)
    low = head.lower()
    if b"content-length" not in low and b"transfer-encoding" not in low:
        return
    cl = te = 0
    for line in low[first + 2:-4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip()
        if name == b"content-length":
            cl += 1
        elif name == b"transfer-encoding":
            te += 1
            if value.strip() != b"chunked":
                # RFC 9112 §6.1: chunked is the only coding a server must know; we know no other.
                raise RemoteProtocolError("only 'Transfer-Encoding: chunked' is supported", hint=501)
    if te > 1:
        raise RemoteProtocolError("more than one Transfer-Encoding field", hint=400)
    if cl > 1:
        raise RemoteProtocolError("more than one Content-Length field", hint=400)
    if cl and te:
        raise RemoteProtocolError("both Content-Length and Transfer-Encoding: the framing is ambiguous", hint=400)


class _Collector:
    """httptools callbacks: gather the request-target and the header fields of one head."""

    __slots__ = ("headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))


class Http1Parser:
    """One server connection's request stream: heads framed strictly, then parsed by llhttp or h11.

    Two backends give the same events (a test feeds both the same inputs):

    - ``httptools`` (llhttp, in C): parses each head; a ``Content-Length`` body is then simply
      the next N bytes; a chunked body is handed to h11 with its head.
    - ``h11``: parses every head and body (pure Python, about 40x slower per head).

    Args:
        max_request_line, max_head_size: see :class:`HeadFramer`.
        max_body: largest request body accepted, bytes (larger: 413, RFC 9110 §15.5.14).
        backend: ``"auto"`` (httptools when installed), ``"httptools"`` or ``"h11"``.
    """

    def __init__(self, max_request_line: int = 8192, max_head_size: int = 65536,
                 max_body: int = 1 << 20, backend: str = "auto") -> None:
        if backend == "auto":
            backend = default_backend()
        if backend not in BACKENDS or (backend == "httptools" and httptools is None):
            raise LocalProtocolError(f"HTTP parser backend {backend!r} is not available")
        self.backend = backend
        self.framer = HeadFramer(max_request_line, max_head_size)
        self.max_head_size = max_head_size
        self.max_body = max_body
        self._h11: h11.Connection | None = None
        self._head: RequestHead | None = None
        self._body = bytearray()
        self._cl_left = 0  # bytes of a Content-Length body still to come (httptools path)
        self._queued: RequestComplete | None = None
        self._eof = False
        self._stopped = False  # after an upgrade head: nothing more is parsed as HTTP
        self._chunked = False
        self._head_reported = False
        self._collector = _Collector()
        self._llhttp: Any = None  # reused from one bodiless keep-alive request to the next

    @property
    def complete_ready(self) -> bool:
        """True when the next event is a RequestComplete already parsed (a request without body)."""
        return self._queued is not None

    @property
    def in_request(self) -> bool:
        """True when part of a request (head or body) has arrived and it is not complete yet."""
        return self._h11 is not None or self._head is not None or self.framer.pending > 0

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer half-closed."""
        if not data:
            self._eof = True
        elif self._h11 is not None:
            self._h11.receive_data(data)
        else:
            self.framer.feed(data)

    def take_leftover(self) -> bytes:
        """After an upgrade request: the bytes received after its head (they belong to the new protocol)."""
        return self.framer.take_buffer()

    def next_event(self) -> RequestHead | RequestComplete | None:
        """The next event, or ``None`` when more data is needed.

        Raises:
            RemoteProtocolError: the peer broke HTTP; ``hint`` is the status to answer with.
        """
        if self._queued is not None:
            done, self._queued = self._queued, None
            return done
        if self._stopped:
            return None
        if self._h11 is not None:
            return self._h11_next()
        if self._head is not None:
            return self._length_body_next()
        head_bytes = self.framer.extract()
        if head_bytes is None:
            if self._eof and self.framer.pending:
                raise RemoteProtocolError("connection closed in the middle of a request head", hint=400)
            return None
        if not head_bytes.isascii():  # one C scan; the rare non-ASCII head is looked at closer
            first = head_bytes.find(b"\r\n")
            if not head_bytes[:first].isascii():
                head_bytes = _escape_raw_target(head_bytes, first)
        if self.backend == "httptools":
            known = _parsed.get(head_bytes)
            if known is not None:  # these very bytes passed every check before: same result
                self._queued = known
                return known.head
            head, chunked, length = self._parse_head(head_bytes)
            if not chunked:
                if head.upgrade is not None:
                    self._stopped = True  # the rest belongs to the next protocol (RFC 9110 §7.8)
                    return RequestComplete(head, b"")
                if length > self.max_body:
                    raise RemoteProtocolError(f"request body of {length} bytes is larger than {self.max_body} "
                                              "(max_body)", hint=413)
                if length:
                    self._head, self._cl_left = head, length
                else:
                    self._queued = done = RequestComplete(head, b"")
                    if len(head_bytes) <= PARSED_HEAD_MAX:
                        if len(_parsed) >= PARSED_CACHE_SIZE:
                            _parsed.clear()
                        _parsed[head_bytes] = done
                return head
            self._start_h11(head_bytes)
            self._head_reported = True  # h11 reads the chunked body; its Request event is skipped
            return head
        # h11 reads this request (every request with the h11 backend; chunked ones with httptools)
        self._start_h11(head_bytes)
        return self._h11_next()

    def _start_h11(self, head_bytes: bytes) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_size + 4)
        conn.receive_data(head_bytes)
        rest = self.framer.take_buffer()
        if rest:
            conn.receive_data(rest)
        self._h11 = conn

    def _length_body_next(self) -> RequestComplete | None:
        """A ``Content-Length`` body is exactly the next N bytes (RFC 9112 §6.2)."""
        assert self._head is not None
        chunk = self.framer.take(self._cl_left)
        self._body += chunk
        self._cl_left -= len(chunk)
        if self._cl_left:
            if self._eof:
                raise RemoteProtocolError("connection closed in the middle of a request body", hint=400)
            return None
        done = RequestComplete(self._head, bytes(self._body))
        self._head = None
        self._body = bytearray()
        return done

    def _parse_head(self, head_bytes: bytes) -> tuple[RequestHead, bool, int]:
        collector = self._collector
        collector.url = b""
        collector.headers = []
        parser: Any = self._llhttp
        if parser is None:
            parser = httptools.HttpRequestParser(collector)
        self._llhttp = None  # reused only when this head ends a whole message (below)
        stopped = False
        try:
            parser.feed_data(head_bytes)
        except httptools.HttpParserUpgrade:
            stopped = True  # llhttp stops at an upgrade head; we decide about upgrades in _build_head
        except httptools.HttpParserError as exc:
            raise RemoteProtocolError(f"malformed request head: {exc}", hint=400) from None
        method = parser.get_method()
        version = parser.get_http_version().encode("ascii")
        headers = tuple(collector.headers)
        chunked = False
        length = 0
        for name, value in headers:
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"content-length":
                length = int(value)  # llhttp accepted it: digits only, one field (the framer checked)
        head = _build_head(method, collector.url, version, headers)
        if not (chunked or length or stopped) and parser.should_keep_alive():
            # llhttp saw the whole message (no body follows) and is ready for the next one.
            self._llhttp = parser
        return head, chunked, length

    def _h11_next(self) -> RequestHead | RequestComplete | None:
        conn = self._h11
        assert conn is not None
        if self._eof:
            conn.receive_data(b"")
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(str(exc), hint=exc.error_status_hint) from None
            if isinstance(event, h11.Request):
                head = _build_head(bytes(event.method), bytes(event.target), bytes(event.http_version),
                                   tuple((bytes(n), bytes(v)) for n, v in event.headers))
                self._head = head
                self._chunked = any(n == b"transfer-encoding" for n, _ in head.headers)
                if head.upgrade is not None:
                    # The bytes after an upgrade head belong to the next protocol (RFC 9110 §7.8).
                    data, _closed = conn.trailing_data
                    self._stopped = True
                    self._h11 = None
                    self._head = None
                    self.framer.feed(data)
                    return RequestComplete(head, b"")
                if self._head_reported:
                    self._head_reported = False
                    continue  # the head was already reported by the httptools path
                return head
            if isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self.max_body:
                    raise RemoteProtocolError(f"request body larger than {self.max_body} bytes (max_body)",
                                              hint=413)
                self._body += event.data
                continue
            if isinstance(event, h11.EndOfMessage):
                if event.headers:
                    # h11 parses trailer lines leniently (a bare LF passes); no handler here uses
                    # trailers, so refusing them removes that desync lever (RFC 9110 §6.5.1 lets us).
                    raise RemoteProtocolError("trailer fields after a chunked body are not accepted", hint=400)
                assert self._head is not None
                done = RequestComplete(self._head, bytes(self._body))
                data, _closed = conn.trailing_data
                self._h11 = None
                self._head = None
                self._body = bytearray()
                self.framer.feed(data)
                return done
            if event is h11.NEED_DATA:
                if self._chunked and b"\n" in conn.trailing_data[0]:
                    # h11 has consumed every complete chunk line and all chunk data it could: a LF
                    # left in its buffer can only end a chunk-size or trailer line without its CR.
                    raise RemoteProtocolError("bare LF in the chunked framing: lines must end with CRLF", hint=400)
                if self._eof:
                    raise RemoteProtocolError("connection closed in the middle of a request body", hint=400)
                return None
            if isinstance(event, h11.ConnectionClosed):
                return None
            raise LocalProtocolError(f"unexpected h11 event {event!r}")


def _escape_raw_target(head: bytes, first: int) -> bytes:
    """Percent-encode the raw bytes >= 0x80 of the request-target (a raw UTF-8 path, ``/café``).

    RFC 3986 allows only ASCII in a URI, but browsers percent-encode and some clients do not;
    nginx serves such a path as if it had been encoded, and so does socklab: the bytes become
    ``%XX`` here (llhttp and h11 both refuse them raw) and :func:`~socklab.protocols.http_paths.parse_target`
    decodes them once, with every check (valid UTF-8, no traversal). Only the target changes; a
    non-ASCII method or version is left for the parser to refuse.
    """
    parts = head[:first].split(b" ")
    if len(parts) != 3 or not parts[0].isascii() or not parts[2].isascii():
        return head
    target = b"".join(b"%%%02X" % c if c >= 0x80 else bytes((c,)) for c in parts[1])
    return b" ".join((parts[0], target, parts[2])) + head[first:]


def _build_head(method: bytes, target: bytes, version: bytes,
                headers: tuple[tuple[bytes, bytes], ...]) -> RequestHead:
    """The checks both backends share, and the keep-alive/upgrade/expect decisions."""
    connection_tokens: set[bytes] = set()
    upgrade = None
    expects_continue = False
    has_body = False
    hosts = 0
    for name, value in headers:
        if name == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
        elif name == b"host":
            hosts += 1
        elif name == b"upgrade" and value.strip().lower() == b"websocket":
            upgrade = b"websocket"  # the only upgrade socklab speaks; others are ignored (RFC 9110 §7.8)
        elif name == b"expect" and value.lower() == b"100-continue":
            expects_continue = True
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            has_body = True
    # RFC 9112 §3.2: origin-form, absolute-form or "*" (authority-form is for CONNECT, not served).
    if not (target.startswith(b"/") or target == b"*" or target[:8].lower() in (b"http://", b"https://")
            or target[:7].lower() == b"http://"):
        raise RemoteProtocolError("the request-target is not in origin-form, absolute-form or '*'", hint=400)
    if version not in (b"1.0", b"1.1"):  # RFC 9110 §15.6.6
        raise RemoteProtocolError(f"HTTP/{version.decode('ascii', 'replace')} is not supported", hint=505)
    # RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host field gets 400.
    if hosts > 1 or (hosts == 0 and version == b"1.1"):
        raise RemoteProtocolError("an HTTP/1.1 request needs exactly one Host header", hint=400)
    if version == b"1.1":
        keep_alive = b"close" not in connection_tokens
    else:  # HTTP/1.0: persistent only when asked for (RFC 9112 §9.3)
        keep_alive = b"keep-alive" in connection_tokens
    if method in (b"GET", b"HEAD") and has_body:
        raise RemoteProtocolError(f"a {method.decode()} request must not carry a body", hint=400)
    if upgrade is not None and (b"upgrade" not in connection_tokens or has_body):
        upgrade = None
    return RequestHead(method, target, version, headers, keep_alive, expects_continue and has_body, upgrade)
