"""Every HTTP listener socklab has, started the same way, so one test can run against each.

``http_listener(kind, engine)`` yields a :class:`Listener`: the port and a request that listener
answers with 200 (``GET /n`` on the static server, ``GET /healthz`` on the chat's web port, a JSON-RPC
``POST`` on ``rpc --listen http://``). ``kind`` is ``static``, ``chat`` or ``rpc``.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from socklab.apps.http.api import Request, Response, Router
from tests.apps.http.conftest import http_server

KINDS = ("static", "chat", "rpc")


@dataclass
class Listener:
    kind: str
    port: int
    request: Callable[[int], bytes]  # request number i -> its bytes (answered 200)
    check: Callable[[int, bytes], bool]  # (i, body) -> the body answers request i

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


def _numbered(req: Request) -> Response:
    return Response(200, [("content-type", "text/plain")], req.query.encode())


@contextlib.contextmanager
def http_listener(kind: str, engine: str = "epoll", **settings: Any) -> Iterator[Listener]:
    """A started listener of ``kind`` on 127.0.0.1:0, shut down after."""
    if kind == "static":
        router = Router()
        router.add_route("GET", "/n", _numbered)
        with http_server(None, engine, router=router, **settings) as srv:
            port = srv.port
            yield Listener(kind, port, lambda i: b"GET /n?%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (i, port),
                           lambda i, body: body == b"%d" % i)
    elif kind == "chat":
        from tests.apps.chat.helpers import chat_node

        with chat_node(engine, http_port=0, **settings) as node:
            port = node.http_port
            yield Listener(kind, port, lambda i: b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port,
                           lambda i, body: b'"members"' in body)
    elif kind == "rpc":
        from tests.apps.rpc.helpers import rpc_server

        with rpc_server(engine, listen=("http://127.0.0.1:0/rpc",), **settings) as rs:
            port = int(rs.urls[0].rsplit(":", 1)[1].split("/")[0])

            def rpc_request(i: int) -> bytes:
                body = b'{"jsonrpc":"2.0","method":"add","params":[%d,1],"id":%d}' % (i, i)
                return (b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % (port, len(body)) + body)

            yield Listener(kind, port, rpc_request,
                           lambda i, body: json.loads(body) == {"jsonrpc": "2.0", "result": i + 1, "id": i})
    else:
        raise ValueError(kind)


def read_responses(sock: socket.socket, n: int) -> list[tuple[int, bytes]]:
    """Read ``n`` complete responses (status, body) from ``sock``, or as many as came before EOF."""
    buf = bytearray()
    out: list[tuple[int, bytes]] = []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
            if len(buf) >= end + 4 + length:
                out.append((int(head[9:12]), bytes(buf[end + 4:end + 4 + length])))
                del buf[:end + 4 + length]
                continue
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        buf += data
    return out
