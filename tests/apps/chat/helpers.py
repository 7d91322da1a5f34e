"""Test helpers: a chat node on port 0, a blocking line client that waits for given lines, a plain HTTP GET."""

from __future__ import annotations

import contextlib
import socket
import threading
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
                 rcvbuf: int | None = None, source: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:  # another loopback address (127.0.0.2...): another client address
            self.sock.bind((source, 0))
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
        with contextlib.suppress(EOFError, OSError):
            while True:
                out.append(self.read_line())
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refused(port: int, source: str = "127.0.0.1") -> bytes:
    """Connect from ``source`` and read everything until the server closes (bounded by 10 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                data += chunk
        return data


def http_get(port: int, path: str = "/", timeout: float = 10.0) -> bytes:
    """``GET path`` on 127.0.0.1:port with ``Connection: close``: the whole response, read until the
    server closes (or ``timeout`` runs out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % (path.encode(), port))
        data = b""
        deadline = time.monotonic() + timeout
        while (chunk := s.recv(65536)) and time.monotonic() < deadline:
            data += chunk
        return data


class Pump(threading.Thread):
    """Reads a client's socket as fast as it can (C-speed recv into a list) until told to stop.

    A Python loop parsing each line is slower than the server's fan-out: a test that needs a
    client that surely keeps up (next to a deliberately slow one) reads with this instead.
    """

    def __init__(self, client: LineClient, marker: bytes, count: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.marker = marker
        self.count = count
        self.chunks: list[bytes] = [client.buf]
        self.seen = client.buf.count(marker)
        self.done = threading.Event()
        self.progress = threading.Condition()
        client.buf = b""

    def run(self) -> None:
        try:
            while self.seen < self.count:
                chunk = self.client.sock.recv(1 << 20)
                if not chunk:
                    break
                self.chunks.append(chunk)
                with self.progress:
                    self.seen += chunk.count(self.marker)
                    self.progress.notify_all()
        except OSError:
            pass
        finally:
            self.done.set()
            with self.progress:
                self.progress.notify_all()

    def wait_count(self, n: int, timeout: float = 30.0) -> None:
        """Block until ``n`` markers arrived (or the connection ended, or ``timeout``)."""
        with self.progress:
            self.progress.wait_for(lambda: self.seen >= n or self.done.is_set(), timeout)

    def lines(self, timeout: float = 30.0) -> list[str]:
        """Wait for ``count`` markers (or the end), then every complete line received."""
        self.done.wait(timeout)
        self.join(5)
        data = b"".join(self.chunks)
        complete, _, rest = data.rpartition(b"\n")
        self.client.buf = rest + self.client.buf
        return complete.decode().split("\n") if complete else []
