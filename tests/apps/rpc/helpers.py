"""Helpers for the RPC tests: a demo server on every listener, and a raw framed socket client."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

from socklab.apps.rpc.server import RpcServer, RpcSettings, serve
from socklab.apps.rpc.service import Service, demo_service
from socklab.protocols.framing import CONTENT_LENGTH, NDJSON, EndOfStream, Frame, FrameDecoder, encode_frame


@contextlib.contextmanager
def rpc_server(engine: str = "epoll", service: Service | None = None, listen: tuple[str, ...] = (
        "tcp://127.0.0.1:0", "http://127.0.0.1:0/rpc", "ws://127.0.0.1:0/ws"), **settings: Any
               ) -> Iterator[RpcServer]:
    """The demo service (unless told otherwise) on tcp, http and ws listeners, port 0, shut down after."""
    rs = serve(service or demo_service(), list(listen), RpcSettings(engine=engine, **settings))
    try:
        rs.start()
        yield rs
    finally:
        rs.shutdown(2)


def tcp_port(rs: RpcServer) -> int:
    return int(next(u for u in rs.urls if u.startswith("tcp://")).rsplit(":", 1)[1])


class Raw:
    """A raw TCP client that sends bytes and reads whole framed messages (with a deadline)."""

    def __init__(self, port: int, mode: str = NDJSON, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.mode = mode
        self.decoder = FrameDecoder(max_frame=64 * 1024 * 1024, mode=mode)

    def send(self, payload: bytes) -> None:
        if self.mode == CONTENT_LENGTH:
            self.sock.sendall(encode_frame(payload, CONTENT_LENGTH))
        else:
            self.sock.sendall(payload.replace(b"\n", b" ") + b"\n")

    def recv_raw(self) -> bytes | None:
        """The next message's bytes, or ``None`` at EOF."""
        while True:
            ev = self.decoder.next_event()
            if isinstance(ev, Frame):
                return ev.data
            if isinstance(ev, EndOfStream):
                return None
            data = self.sock.recv(65536)
            self.decoder.receive_data(data)

    def recv(self) -> Any:
        raw = self.recv_raw()
        assert raw is not None, "the server closed the connection"
        return json.loads(raw)

    def call(self, payload: bytes) -> Any:
        self.send(payload)
        return self.recv()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def strip_data(reply: Any) -> Any:
    """A reply with the optional ``data`` members removed (the specification's examples omit them)."""
    if isinstance(reply, list):
        return [strip_data(r) for r in reply]
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        reply = dict(reply)
        reply["error"] = {k: v for k, v in reply["error"].items() if k != "data"}
    return reply


def canonical(reply: Any) -> Any:
    """Batch answers may come in any order (spec section 6): sort them for comparison."""
    reply = strip_data(reply)
    if isinstance(reply, list):
        return sorted(reply, key=lambda r: json.dumps(r, sort_keys=True))
    return reply
