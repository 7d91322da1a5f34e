"""Requests, responses and the router: what an app mounting handlers on the HTTP layer sees.

Why this exists: the static file server, the chat's web page and WebSocket endpoint and JSON-RPC
over HTTP all share one connection handler (:class:`~socklab.apps.http.protocol.HttpProtocol`).
They differ only in what answers a request, so that part is a plain function from
:class:`Request` to :class:`Response`, registered on a :class:`Router`::

    router = Router()

    @router.route("GET", "/hello")
    def hello(req: Request) -> Response:
        return Response(200, [("content-type", "text/plain")], b"hi")

Handlers are synchronous and run on the engine, serialized with the protocol callbacks: a slow
handler blocks every connection of that engine (or, on the threaded engines, holds the engine
lock). Keep them short; hand long work to a thread and answer later over a WebSocket.

A handler whose answer comes later (JSON-RPC calls running on a thread pool) returns a
:class:`Pending` and calls ``pending.resolve(response)`` on the engine thread when it is ready;
the connection answers nothing else meanwhile (HTTP/1.1 answers in order) and stops reading the
client once ``max_pipelined`` bytes wait. ``request.connection`` lets a handler keep state for
the connection (``connection.conn_state``) and learn when it closes (``connection.on_close``).

A ``HEAD`` request is answered by the ``GET`` handler with the body dropped (RFC 9110 §9.3.2).
"""

from __future__ import annotations

import os
import sys
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Union

from socklab.apps.http.guards import PeerCount
from socklab.protocols.text import escape_peer_text

if TYPE_CHECKING:
    from socklab.apps.http.static import StaticFiles
    from socklab.apps.http.websocket import WebSocket

__all__ = ["Body", "FileSpan", "Handler", "Pending", "Request", "Response", "Router", "WebSocketHandler"]


@dataclass(frozen=True)
class FileSpan:
    """``length`` bytes of an open binary file from ``offset``: sent in bounded chunks or by sendfile."""

    file: IO[bytes]
    offset: int
    length: int


Body = Union[bytes, FileSpan, list[bytes | FileSpan], str, "os.PathLike[str]", IO[bytes]]


@dataclass
class Request:
    """One HTTP request as a handler sees it.

    Attributes:
        method: ``"GET"``, ``"POST"``...
        target: the raw request-target (``/a%20b?x=1``), decoded as latin-1.
        path: the decoded, confined path (``/a b``); never contains ``..`` or control characters.
        query: the raw query string (after ``?``), not decoded.
        headers: ``(lowercase name, value)`` byte pairs in arrival order.
        body: the whole body (at most ``max_body`` bytes).
        client: the peer address.
        http_version: ``"1.1"`` or ``"1.0"``.
        connection: the connection it came on (``conn_state`` dict, ``on_close(callback)``,
            ``transport``), or ``None`` outside a server.
    """

    method: str
    target: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    client: Any = None
    http_version: str = "1.1"
    segments: tuple[str, ...] = ()
    trailing_slash: bool = False
    connection: Any = field(default=None, repr=False, compare=False)
    _index: dict[bytes, bytes] | None = field(default=None, repr=False, compare=False)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as latin-1."""
        index = self._index
        if index is None:
            index = self._index = {}
            for n, v in self.headers:
                if n not in index:
                    index[n] = v
        value = index.get(name.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    @property
    def query_params(self) -> dict[str, list[str]]:
        """The query string parsed (``?a=1&a=2`` → ``{"a": ["1", "2"]}``)."""
        return urllib.parse.parse_qs(self.query, keep_blank_values=True)


class Response:
    """An HTTP response.

    Args:
        status: the status code.
        headers: ``(name, value)`` pairs, str or bytes; ``content-length`` is computed for you.
        body: ``bytes``; ``str`` (sent as UTF-8); a path (``pathlib.Path`` or any ``PathLike``)
            or an open binary file (sent in bounded chunks, or with sendfile where the engine
            allows); a :class:`FileSpan`; or a list of ``bytes`` and :class:`FileSpan` parts sent
            one after the other.
        close: close the connection after this response.
        head_block: header lines already encoded, each ending with CRLF, written as they are
            before ``headers`` (precomputed by trusted code such as the static files: they are
            not checked for CR/LF or framing fields, unlike ``headers``).
    """

    __slots__ = ("body", "close", "head_block", "headers", "status")

    def __init__(self, status: int = 200, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]] | None = None,
                 body: Body = b"", *, close: bool = False, head_block: bytes = b"") -> None:
        self.status = status
        self.headers: list[tuple[Any, Any]] = list(headers) if headers else []
        self.body = body
        self.close = close
        self.head_block = head_block

    @classmethod
    def text(cls, status: int, text: str, *, close: bool = False) -> Response:
        """A ``text/plain`` response."""
        return cls(status, [("content-type", "text/plain; charset=utf-8")], text.encode(), close=close)

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        """An ``application/json`` response."""
        import json

        return cls(status, [("content-type", "application/json")], json.dumps(data).encode())

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers!r})"


class Pending:
    """A response a handler gives later: return it, then call :meth:`resolve` on the engine thread."""

    __slots__ = ("_deliver", "response")

    def __init__(self) -> None:
        self.response: Response | None = None
        self._deliver: Callable[[Response], None] | None = None

    def resolve(self, response: Response) -> None:
        """Send ``response`` (once; later calls are ignored, as are calls after the connection closed)."""
        if self.response is not None:
            return
        self.response = response
        deliver, self._deliver = self._deliver, None
        if deliver is not None:
            deliver(response)

    def on_resolved(self, deliver: Callable[[Response], None]) -> None:
        """Called by the HTTP protocol: ``deliver`` gets the response (now, if it is already there)."""
        if self.response is not None:
            deliver(self.response)
        else:
            self._deliver = deliver

    def cancel(self) -> None:
        """The connection closed: drop the delivery."""
        self._deliver = None


Handler = Callable[[Request], Response | Pending]
WebSocketHandler = Callable[["WebSocket"], None]


@dataclass
class Router:
    """Maps (method, path) to handlers, paths to WebSocket handlers, and prefixes to static files."""

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    ws_routes: dict[str, WebSocketHandler] = field(default_factory=dict)
    mounts: list[tuple[tuple[str, ...], StaticFiles]] = field(default_factory=list)
    peers: PeerCount = field(default_factory=PeerCount)  # connections per client address (every listener)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` (exact path match) with ``handler``."""
        self.routes[(method.upper(), path)] = handler

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add_route`."""
        def deco(handler: Handler) -> Handler:
            self.add_route(method, path, handler)
            return handler
        return deco

    def websocket(self, path: str) -> Callable[[WebSocketHandler], WebSocketHandler]:
        """Decorator: accept WebSocket upgrades on ``path``; ``handler(ws)`` runs once it is open."""
        def deco(handler: WebSocketHandler) -> WebSocketHandler:
            self.ws_routes[path] = handler
            return handler
        return deco

    def static(self, prefix: str, directory: str | os.PathLike[str], *, follow_symlinks: bool = False,
               listing: bool = True, cache_bytes: int | None = None) -> StaticFiles:
        """Serve the files under ``directory`` at URL ``prefix`` (confined: see docs/http.md).

        ``cache_bytes`` bounds the small files kept in memory (``None``: the default, 8 MiB; 0: off).
        """
        from socklab.apps.http.static import StaticFiles

        files = StaticFiles(directory, follow_symlinks=follow_symlinks, listing=listing, cache_bytes=cache_bytes)
        key = tuple(s for s in prefix.split("/") if s)
        self.mounts.append((key, files))
        self.mounts.sort(key=lambda m: -len(m[0]))  # longest prefix first
        return files

    def handle(self, request: Request) -> Response | Pending:
        """The response to ``request``: a route, else a static mount, else 404/405."""
        method = "GET" if request.method == "HEAD" else request.method
        handler = self.routes.get((method, request.path))
        if handler is None and request.method == "HEAD":
            handler = self.routes.get(("HEAD", request.path))
        if handler is not None:
            try:
                return handler(request)
            except Exception:  # a handler bug: 500 for the client, the traceback for the operator
                print(f"socklab http: handler for {escape_peer_text(request.method)} {escape_peer_text(request.path)} "
                      "failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                return Response.text(500, "500 Internal Server Error\n")
        allowed = sorted({m for (m, p) in self.routes if p == request.path}) if self.routes else []
        if allowed:  # the path is a route, not this method (RFC 9110 §15.5.6)
            if "GET" in allowed:
                allowed.append("HEAD")
            return Response(405, [("allow", ", ".join(allowed)), ("content-type", "text/plain")],
                            b"405 Method Not Allowed\n")
        for prefix, files in self.mounts:
            if request.segments[:len(prefix)] == prefix:
                if method != "GET":
                    return Response(405, [("allow", "GET, HEAD"), ("content-type", "text/plain")],
                                    b"405 Method Not Allowed\n")
                return files.serve(request, prefix)
        return Response.text(404, "404 Not Found\n")
