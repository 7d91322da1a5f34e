"""Test helpers: a chat node on port 0, and a blocking line client that waits for given lines."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

from socklab.apps.chat.server import ChatServer
from socklab.apps.chat.settings import ChatSettings
from socklab.protocols.chat import ServerEvent, parse_event


@contextlib.contextmanager
def chat_node(engine: str = "epoll", **overrides: Any) -> Iterator[ChatServer]:
    """A started node on 127.0.0.1, TCP and HTTP on port 0, an in-memory store unless told otherwise."""
    values: dict[str, Any] = {"host": "127.0.0.1", "tcp_port": 0, "http_port": -1, "store": ":memory:",
                              "engine": engine, "shutdown_timeout": 2.0}
    values.update(overrides)
    node = ChatServer(ChatSettings(**values))
    try:
        node.start()
        yield node
    finally:
        node.shutdown(2.0)


class LineClient:
    """A line-protocol client over a blocking socket; every wait is bounded by ``timeout``."""

    def __init__(self, port: int, nick: str | None = None, *, timeout: float = 10.0,
                 rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.seen: list[str] = []
        self.expect("HELLO")
        if nick is not None:
            self.send(f"/nick {nick}")
            self.expect("SYNC")

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode()
        self.sock.sendall(data + b"\n")

    def read_line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; last lines: {self.seen[-5:]}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        text = line.decode()
        self.seen.append(text)
        return text

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """Read until a line starting with ``prefix`` (skipping others); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.read_line()
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r}; saw {self.seen[-10:]}")

    def event(self, prefix: str) -> ServerEvent:
        return parse_event(self.expect(prefix))

    def read_until_closed(self) -> list[str]:
        out = []
        with contextlib.suppress(EOFError, ConnectionResetError):
            while True:
                out.append(self.read_line())
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
