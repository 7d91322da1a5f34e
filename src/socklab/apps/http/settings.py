"""HttpSettings: every limit of the HTTP server, named once, with its default.

Why this exists: a web server on the open internet must bound everything a client controls -
how long it may take to send its headers, how big they may be, how long it may sit idle or stop
reading. Each bound is a field here; the CLI options and docs/http.md are generated from or
written against these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from socklab.core.errors import UsageError
from socklab.core.settings import ServerSettings, setting

__all__ = ["HttpSettings", "overflow_response"]


def overflow_response() -> bytes:
    """The complete 503 answer sent to connections refused for ``max_connections``."""
    body = b"503 Service Unavailable: server full (max_connections reached), try again later\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() +
            b"\r\n\r\n" + body)


@dataclass
class HttpSettings(ServerSettings):
    """Settings of ``socklab http serve`` and of :func:`socklab.apps.http.api.serve_http`."""

    header_timeout: float = setting(10.0, "Absolute deadline, seconds, from accept (or from the first byte of a "
                                          "later request) to the end of the request headers; never reset by "
                                          "data (slowloris).")
    keepalive_timeout: float = setting(5.0, "Close a keep-alive connection idle between requests for this many "
                                            "seconds.")
    body_timeout: float = setting(30.0, "Deadline, seconds, to receive a request body once its headers arrived.")
    send_timeout: float = setting(30.0, "Close a connection whose client has not accepted any response bytes "
                                        "for this many seconds (a client that stopped reading).")
    linger_timeout: float = setting(2.0, "After answering with a close, seconds to keep reading (and discarding) "
                                         "what the client still sends, so its unread data does not turn into an "
                                         "RST that destroys the response (nginx's lingering close; 0 = close at "
                                         "once).")
    max_request_line: int = setting(8192, "Longest request line, bytes; longer gets 414.")
    max_headers_size: int = setting(65536, "Largest request head (request line + header fields), bytes; larger "
                                           "gets 431.")
    max_body: int = setting(1 << 20, "Largest request body accepted, bytes; larger gets 413.")
    max_pipelined: int = setting(65536, "Bytes of pipelined requests buffered while a response is being sent; "
                                        "above it the server stops reading that client.")
    ws_max_message: int = setting(1 << 20, "Largest WebSocket message, bytes; larger closes with 1009.")
    ws_ping_interval: float = setting(20.0, "Send a WebSocket ping after this many idle seconds (0 = never).")
    ws_ping_timeout: float = setting(20.0, "Close a WebSocket whose pong has not come within this many seconds.")
    ws_max_queue: int = setting(64, "WebSocket messages buffered for a handler before the connection is paused.")
    follow_symlinks: bool = setting(False, "Serve symlinks whose target is outside the served directory (off: "
                                           "they are refused, checked on the real path after opening).")
    listing: bool = setting(True, "Show a directory listing when a directory has no index.html.")
    log_format: str = setting("common", "Access log format on stdout: common (CLF), json, or none.",
                              choices=("common", "json", "none"))
    sendfile: bool = setting(True, "Send file bodies with sendfile() where the engine allows.")
    file_cache: int = setting(8 << 20, "Bytes of small files (<= 16 KiB) kept in memory between requests, "
                                       "revalidated by fstat of the opened file on every request; 0 = off.")
    max_connections_per_ip: int = setting(64, "Connections one client address may hold at once; the excess gets "
                                              "503 and a close (0 = no cap). Behind a proxy every client shares "
                                              "its address: raise it.")
    allow_host: tuple[str, ...] = setting((), "A Host name (NAME or NAME:PORT) to answer on a loopback connection "
                                              "besides localhost, 127.x and [::1] (against DNS rebinding; others "
                                              "get 421). Repeatable.", metavar="NAME")
    allow_origin: tuple[str, ...] = setting((), "A web page origin (http://host:port) allowed to open WebSockets "
                                                "besides this server's own; '*' allows all (others get 403). "
                                                "Repeatable.", metavar="ORIGIN")
    parser: str = setting("auto", "HTTP/1.1 parser under the strict head framer: httptools (llhttp, C), h11 (pure "
                                  "Python), or auto (httptools when installed).", choices=("auto", "httptools", "h11"))

    def __post_init__(self) -> None:
        if self.overflow_message == ServerSettings.overflow_message:
            self.overflow_message = overflow_response()

    def validate(self) -> None:
        super().validate()
        for name in ("max_request_line", "max_headers_size", "max_body", "ws_max_message", "max_pipelined",
                     "ws_max_queue"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.max_connections_per_ip < 0:
            raise UsageError("max_connections_per_ip cannot be negative (0 = no cap)")
        if self.file_cache < 0:
            raise UsageError("file_cache cannot be negative")
        if self.parser == "httptools":
            from socklab.protocols.http1 import default_backend

            if default_backend() != "httptools":
                raise UsageError("--parser httptools: httptools is not installed (pip install httptools)")
        if self.max_request_line > self.max_headers_size:
            raise UsageError("max_request_line cannot exceed max_headers_size")
        for name in ("header_timeout", "keepalive_timeout", "body_timeout", "send_timeout", "linger_timeout",
                     "ws_ping_interval",
                     "ws_ping_timeout"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} cannot be negative")
