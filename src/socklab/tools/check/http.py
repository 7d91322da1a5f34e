"""``socklab check http``: probes for the classic web-server lab (HTTP/1.1 over a raw socket).

Why this exists: a lab web server that shows a page in the browser can still read the request
with one ``recv()`` (and fail when it arrives in pieces), omit ``Content-Length`` (so keep-alive
cannot work), send a body in answer to ``HEAD``, crash on garbage, or serve ``/etc/passwd`` to
``GET /../../etc/passwd``. Each probe provokes one of those with raw bytes on a socket - no HTTP
library in between that would fix the request up - and names the mistake.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import quote as url_quote

from socklab.core.sockets import Endpoint
from socklab.tools.check.net import connect
from socklab.tools.check.report import Probe, ProbeFailed, quote

__all__ = ["HttpResponse", "http_probes"]

ONE_RECV = ("the server reads the request with a single recv(): TCP is a byte stream, and a request can "
            "arrive in several pieces")
READ_LOOP = "recv() in a loop until the bytes received contain the blank line b'\\r\\n\\r\\n'"
MAX_READ = 64 << 20  # the grader reads at most this much of one response (a server may stream forever)
TRAVERSAL = [
    "/../../../../../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/%2fetc%2fpasswd",
    "/static/../../../../../../etc/passwd",
]


class HttpResponse:
    """A parsed response: status code, the status line, headers (lower-cased names) and body."""

    def __init__(self, status_line: str, headers: dict[str, str], body: bytes, closed: bool) -> None:
        self.status_line, self.headers, self.body, self.closed = status_line, headers, body, closed
        parts = status_line.split(" ", 2)
        self.status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


class HttpConn:
    """One connection to the server under test, with a read buffer and deadlines."""

    def __init__(self, target: Endpoint, timeout: float) -> None:
        self.sock = connect(target, timeout)
        self.timeout = timeout
        self.buffer = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more; False at EOF or the deadline."""
        left = deadline - time.monotonic()
        if left <= 0 or self.closed or len(self.buffer) > MAX_READ:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def anything_within(self, seconds: float) -> bool:
        """True if the server sent something (or closed) within ``seconds``."""
        if self.buffer:
            return True
        self._fill(time.monotonic() + seconds)
        return bool(self.buffer) or self.closed

    def response(self, head_only: bool = False, what: str = "the request") -> HttpResponse:
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                if self.buffer:
                    raise ProbeFailed(f"the response to {what} has no blank line ending its headers: "
                                      f"{quote(self.buffer)}",
                                      "headers end with an empty line, and HTTP lines end with \\r\\n",
                                      "send 'HTTP/1.1 200 OK\\r\\nContent-Length: N\\r\\n\\r\\n' then the body")
                happened = "closed the connection" if self.closed else f"sent nothing in {self.timeout:.0f} s"
                raise ProbeFailed(f"the server {happened} in answer to {what}",
                                  "the handler crashed or never answered (a traceback in the server's terminal?), "
                                  "or it waits for more than the request (reading until the client closes)",
                                  "read up to the blank line, then answer at once")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if not lines[0].startswith("HTTP/1."):
            raise ProbeFailed(f"the response to {what} starts with {quote(lines[0])}",
                              "a response starts with a status line", "send 'HTTP/1.1 200 OK\\r\\n' first")
        if head_only:
            return HttpResponse(lines[0], headers, b"", self.closed)
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            while len(self.buffer) < int(length) and self._fill(deadline):
                pass
            body, self.buffer = self.buffer[:int(length)], self.buffer[int(length):]
        else:
            while self._fill(deadline):
                pass
            body, self.buffer = self.buffer, b""
        return HttpResponse(lines[0], headers, body, self.closed)

    def __enter__(self) -> HttpConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()


def _request(method: str, url: str, host: str, extra: str = "") -> bytes:
    """A request as curl writes it (Host is the address dialled, as a browser sends it)."""
    return f"{method} {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: socklab-check\r\n{extra}\r\n".encode()


def _existing(root: Path | None, url: str | None) -> tuple[str, bytes | None]:
    """A URL that exists, and its content when the served directory is known."""
    if url is not None:
        return url, None
    if root is None:
        return "/", None
    for path in sorted(root.rglob("*"), key=lambda p: (len(p.parts), str(p))):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < (16 << 20):
            return "/" + url_quote(path.relative_to(root).as_posix()), path.read_bytes()
    return "/", None


def http_probes(target: Endpoint, root: Path | None = None, url: str | None = None,
                timeout: float = 5.0) -> list[Probe]:
    """Every HTTP probe, in the order they run."""
    path, content = _existing(root, url)
    host = str(target)

    def fetch(method: str, url: str, extra: str = "", head_only: bool = False) -> HttpResponse:
        with HttpConn(target, timeout) as c:
            c.send(_request(method, url, host, extra))
            return c.response(head_only, f"{method} {url}")

    def expect_ok(r: HttpResponse, what: str) -> None:
        if r.status != 200:
            guess = "" if root or url else " (or / has no index.html: name a file with --root DIR or --path URL)"
            raise ProbeFailed(f"{what} answered {quote(r.status_line)}, not 200{guess}",
                              "the server maps the URL to the wrong file (relative to its working directory, "
                              "or with the leading / kept)" if r.status == 404 else
                              "an error while serving the file", "map /NAME to ROOT/NAME and send 200 OK")
        if content is not None and r.body != content:
            raise ProbeFailed(f"{what}: the body ({len(r.body)} bytes) differs from {root}{path} "
                              f"({len(content)} bytes)", "the file was read as text, or only partly",
                              "open the file in binary mode ('rb') and send all of it")

    def get() -> str:
        r = fetch("GET", path)
        expect_ok(r, f"GET {path}")
        return f"GET {path} answered 200" + (" with the file's exact bytes" if content is not None else "")

    def content_length() -> str:
        with HttpConn(target, timeout) as c:
            c.send(_request("GET", path, host, "Connection: close\r\n"))
            r = c.response(what=f"GET {path}")
            deadline = time.monotonic() + timeout
            while c._fill(deadline):  # everything the server sent, up to its close
                pass
            sent = len(r.body) + len(c.buffer)
        length = r.headers.get("content-length")
        if length is None:
            raise ProbeFailed(f"GET {path} answered without a Content-Length header",
                              "without Content-Length the client can only find the end of the body when "
                              "the server closes, so a connection serves one request (no keep-alive)",
                              "send Content-Length: the body's length in bytes")
        if not length.isdigit() or int(length) != sent:
            raise ProbeFailed(f"Content-Length says {quote(length)} but {sent} bytes of body followed",
                              "the length counts characters, not bytes (len(text) instead of "
                              "len(text.encode())), or belongs to another body", "Content-Length: len(body_bytes)")
        expect_ok(r, f"GET {path}")
        return f"Content-Length: {length} matches the body"

    def pieces() -> str:
        with HttpConn(target, timeout) as c:
            request = _request("GET", path, host)
            for start, end in ((0, 7), (7, len(request) // 2), (len(request) // 2, len(request))):
                if start and c.anything_within(min(1.5, timeout)):
                    seen = "closed the connection" if not c.buffer else f"answered {quote(c.buffer[:30])}"
                    raise ProbeFailed(f"after {start} of the request's {len(request)} bytes the server {seen}",
                                      ONE_RECV, READ_LOOP)
                c.send(request[start:end])
            expect_ok(c.response(what="a request sent in three pieces"), "a request sent in three pieces")
        return "a request sent in three pieces got one full answer"

    def keep_alive() -> str:
        with HttpConn(target, timeout) as c:
            c.send(_request("GET", path, host))
            first = c.response(what=f"GET {path}")
            second = None
            if not c.closed:
                try:
                    c.send(_request("GET", path, host))
                    second = c.response(what="a second request on the same connection")
                except (ProbeFailed, OSError):
                    if not c.closed:
                        raise
            if second is None:
                said = " (it said Connection: close)" if "close" in first.headers.get("connection", "") else ""
                nolen = "" if "content-length" in first.headers else " and the first had no Content-Length"
                raise ProbeFailed(f"the server closed the connection after the first response{said}{nolen}",
                                  "it handles one request per connection; HTTP/1.1 connections stay open "
                                  "unless one side says Connection: close",
                                  "loop: read a request, answer it (with Content-Length), until the client closes")
            expect_ok(second, "the second request on one connection")
        return "two requests on one connection got two answers"

    def not_found() -> str:
        missing = "/no-such-file-" + os.urandom(4).hex() + ".html"
        r = fetch("GET", missing)
        if r.status != 404:
            raise ProbeFailed(f"GET {missing} answered {quote(r.status_line)}",
                              "a missing file must be 404 Not Found; an exception (FileNotFoundError) became "
                              "another status", "catch FileNotFoundError (or check is_file()) and send 404")
        return "a missing file got 404"

    def head() -> str:
        with HttpConn(target, timeout) as c:
            c.send(_request("HEAD", path, host))
            r = c.response(head_only=True, what=f"HEAD {path}")
            if r.status != 200 or "content-length" not in r.headers:
                raise ProbeFailed(f"HEAD {path} answered {quote(r.status_line)}"
                                  + ("" if r.status != 200 else " without Content-Length"),
                                  "HEAD must get the same status and headers as GET, without the body",
                                  "handle HEAD like GET but do not send the body")
            c.send(_request("GET", path, host, "Connection: close\r\n"))
            c.anything_within(timeout)
            if c.buffer and not c.buffer.startswith(b"HTTP/1."):
                raise ProbeFailed(f"after the HEAD response's headers came {quote(c.buffer[:30])}",
                                  "the server sent the body in answer to HEAD", "send headers only for HEAD")
        return "HEAD got 200 and Content-Length, and no body"

    def bad_request() -> str:
        c = HttpConn(target, timeout)
        try:
            c.send(b"HELLO\r\n\r\n")
            r = c.response(what="a request line that is not HTTP ('HELLO')")
        except ProbeFailed as fail:
            raise ProbeFailed(fail.happened, "a request that does not parse crashed the handler (an IndexError "
                              "or ValueError from split()) or was ignored", "answer 400 Bad Request, then close")
        finally:
            c.close()
        if r.status != 400:
            raise ProbeFailed(f"'HELLO' was answered {quote(r.status_line)}", "the request line is not checked",
                              "a request line is METHOD SP TARGET SP HTTP/1.x: otherwise answer 400")
        return "garbage got 400 Bad Request"

    def traversal() -> str:
        for bad in TRAVERSAL:
            try:
                r = fetch("GET", bad)
            except ProbeFailed as fail:
                raise ProbeFailed(f"GET {bad}: {fail.happened}", "the server crashed on a path outside its root",
                                  "refuse such paths with 403 or 404") from None
            if b"root:" in r.body and b":0:0:" in r.body:
                raise ProbeFailed(f"GET {bad} returned /etc/passwd",
                                  "path traversal: the URL path is joined to the root without checking the "
                                  "result stays inside it (../ and %2e%2e/ after decoding; an absolute path makes "
                                  "os.path.join drop the root)",
                                  "resolve the joined path and refuse it unless it is_relative_to(root)")
        return f"{len(TRAVERSAL)} traversal attempts (../, %2e%2e/, ..%2f, //) served nothing outside the root"

    return [
        Probe("get", "GET of an existing file answers 200 with the file", get),
        Probe("content_length", "Content-Length is present and right", content_length),
        Probe("pieces", "a request arriving in pieces is answered once, whole", pieces),
        Probe("keep_alive", "two requests on one keep-alive connection", keep_alive),
        Probe("not_found", "a missing file is 404", not_found),
        Probe("head", "HEAD: headers without a body", head),
        Probe("bad_request", "garbage is 400", bad_request),
        Probe("traversal", "no path traversal out of the served directory", traversal),
    ]
