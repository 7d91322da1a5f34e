"""Every HTTP listener socklab has (static files, the chat's web port, JSON-RPC over http://) under one corpus.

Issue 14: the RPC http:// listener had its own h11 adapter, which accepted Content-Length with
Transfer-Encoding (and kept the connection open), duplicate Content-Length, obs-fold, bare LF,
HTTP/1.2 and HTTP/2.0. One HTTP layer now serves all three; the static server's smuggling and
malformed-request corpus runs against each. Then what a web page on the same machine must not
reach (DNS rebinding, cross-site WebSockets, text/plain POSTs) and the per-address cap.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apps.http.conftest import raw_exchange
from tests.apps.http.listeners import KINDS, http_listener, read_responses
from tests.apps.http.test_protocols import INVALID

pytestmark = pytest.mark.timeout(60)

# The cases first (each was answered 200 and/or kept open by the old RPC listener), then the corpus.
EXTRA = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
]


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12])


@pytest.mark.parametrize("kind", KINDS)
def test_smuggling_and_malformed_corpus_on_every_listener(kind: str) -> None:
    with http_listener(kind) as lis:
        for data, status in EXTRA + INVALID:
            # a valid request right behind: it must never be parsed out of the refused one's framing
            out, closed = raw_exchange(lis.port, data + lis.request(7))
            assert status_of(out) == status, (kind, data[:90], out[:200])
            assert b"connection: close" in out and closed, (kind, data[:90])
            assert out.count(b"\nHTTP/1.1 ") == 0, (kind, data[:90])


def ws_handshake(port: int, path: str, origin: str | None, host: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


@contextlib.contextmanager
def ws_listener(kind: str, **settings: object) -> Iterator[tuple[int, str]]:
    if kind == "chat":
        from tests.apps.chat.helpers import chat_node

        with chat_node(http_port=0, **settings) as node:
            yield node.http_port, "/ws"
    else:
        from tests.apps.rpc.helpers import rpc_server

        with rpc_server(listen=("ws://127.0.0.1:0/ws",), **settings) as rs:
            yield int(rs.urls[0].rsplit(":", 1)[1].split("/")[0]), "/ws"


@pytest.mark.parametrize("kind", ["rpc", "chat"])
def test_websocket_from_another_origin_is_refused(kind: str) -> None:
    with ws_listener(kind) as (port, path):
        for evil in ("http://evil.example", "null", f"http://evil.example:{port}", f"https://127.0.0.1:{port}"):
            got = ws_handshake(port, path, evil)
            assert got.startswith(b"HTTP/1.1 403 "), (evil, got[:200])
        for fine in (None, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            host = f"localhost:{port}" if fine and "localhost" in fine else None
            got = ws_handshake(port, path, fine, host)
            assert got.startswith(b"HTTP/1.1 101 "), (fine, got[:200])


def test_allow_origin_admits_a_listed_page() -> None:
    with ws_listener("rpc", allow_origin=("http://app.example:8080",)) as (port, path):
        assert ws_handshake(port, path, "http://app.example:8080").startswith(b"HTTP/1.1 101 ")
        assert ws_handshake(port, path, "http://evil.example").startswith(b"HTTP/1.1 403 ")


def rpc_post(port: int, content_type: str | None, host: str | None = None) -> bytes:
    body = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}'
    head = f"POST /rpc HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    out, _ = raw_exchange(port, head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return out


def test_json_rpc_post_needs_a_json_content_type() -> None:
    with http_listener("rpc") as lis:
        for simple in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                       "multipart/form-data; boundary=x", None):
            out = rpc_post(lis.port, simple)
            assert status_of(out) == 415 and b'"result"' not in out, simple
        for json_type in ("application/json", "Application/JSON; charset=utf-8", "application/json-rpc"):
            out = rpc_post(lis.port, json_type)
            assert status_of(out) == 200 and out.endswith(b'"result":3,"id":1}'), json_type


@pytest.mark.parametrize("kind", KINDS)
def test_dns_rebinding_host_is_refused_on_loopback(kind: str) -> None:
    with http_listener(kind, **({"allow_host": ()} if kind == "static" else {})) as lis:
        for bad in ("attacker.example", f"attacker.example:{lis.port}", "127.0.0.1:1", "localhost",
                    f"127.0.0.1.attacker.example:{lis.port}", "[::1]:1"):
            req = lis.request(3).replace(f"Host: 127.0.0.1:{lis.port}".encode(), f"Host: {bad}".encode())
            out, closed = raw_exchange(lis.port, req)
            assert status_of(out) == 421 and closed, (bad, out[:200])
        for good in (f"127.0.0.1:{lis.port}", f"localhost:{lis.port}", f"[::1]:{lis.port}",
                     f"127.1.2.3:{lis.port}"):
            req = lis.request(3).replace(f"Host: 127.0.0.1:{lis.port}".encode(), f"Host: {good}".encode())
            out, _ = raw_exchange(lis.port, req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            assert status_of(out) == 200, (good, out[:200])


def test_allow_host_admits_a_named_host() -> None:
    with http_listener("rpc", allow_host=("myapp.test",)) as lis:
        req = lis.request(3).replace(f"Host: 127.0.0.1:{lis.port}".encode(), b"Host: myapp.test")
        out, _ = raw_exchange(lis.port, req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        assert status_of(out) == 200
    with http_listener("static", allow_host=("myapp.test:80",)) as lis:
        for host, status in ((b"myapp.test:80", 200), (b"myapp.test:81", 421)):
            req = lis.request(3).replace(f"Host: 127.0.0.1:{lis.port}".encode(), b"Host: " + host)
            out, _ = raw_exchange(lis.port, req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            assert status_of(out) == status, host


def connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


@pytest.mark.parametrize("kind", KINDS)
def test_one_address_cannot_take_every_slot(kind: str) -> None:
    """Connections from one address up to the cap are served and held; the next is refused, another address served.

    The static and RPC listeners get a cap of 4 (half-sent requests hold those slots); the chat's web port
    keeps its own cap, found by opening kept-alive connections until one is refused.
    """
    settings = {"max_connections_per_ip": 4} if kind != "chat" else {}
    with http_listener(kind, **settings) as lis:
        held: list[socket.socket] = []
        try:
            while True:
                assert len(held) <= 200, "no per-address cap"
                s = connect_from("127.0.0.1", lis.port)
                s.sendall(lis.request(1))
                got = read_responses(s, 1)
                if got and got[0][0] == 503:
                    with contextlib.suppress(ConnectionResetError):
                        assert s.recv(100) == b""  # and closed
                    s.close()
                    break
                assert got and got[0][0] == 200, got
                held.append(s)  # kept alive: it holds its slot
            if kind != "chat":
                assert len(held) == 4
                for s in held:  # half-sent requests hold their slots just the same
                    s.sendall(lis.request(2)[:20])
                probe = connect_from("127.0.0.1", lis.port)
                assert [status for status, _ in read_responses(probe, 1)] == [503]
                probe.close()
            other = connect_from("127.0.0.2", lis.port)
            other.sendall(lis.request(5))
            answer = read_responses(other, 1)
            other.close()
            assert answer and answer[0][0] == 200 and lis.check(5, answer[0][1]), answer
        finally:
            for s in held:
                s.close()


def test_http_serve_options(spawn: Any) -> None:
    """``socklab http serve`` takes the new options; a bad value is one line naming the option, exit 2."""
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "socklab", "http", "serve", "--max-connections-per-ip", "-1"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "max_connections_per_ip" in bad.stderr
    p = spawn("http", "serve", ".", "--port", "0", "--log-format", "none", "--allow-host", "myapp.test",
              "--allow-host", "other.test:8", "--max-connections-per-ip", "2")
    port = int(p.wait_for(r"127\.0\.0\.1:(\d+)").group(1))
    for host, status in ((b"myapp.test", 404), (b"other.test:8", 404), (b"other.test:9", 421), (b"evil.test", 421)):
        out, _ = raw_exchange(port, b"GET /no-such-file HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert status_of(out) == status, host
