"""Lesson rpc: call a function in another process: one JSON request per line, one reply per line.

Run:   python -m socklab.lessons.rpc_server 7095
Try:   python -m socklab.lessons.rpc_client 127.0.0.1 7095 add 2 3

Request:  {"id": 1, "method": "add", "params": [2, 3]}
Reply:    {"id": 1, "result": 5}   or   {"id": 1, "error": "unknown method 'sub'"}
Framing is the whole trick: TCP carries bytes, a newline says where each JSON message ends
(json.dumps never writes a raw newline). The id pairs each reply with its request.

At full strength: `socklab rpc serve --demo` speaks JSON-RPC 2.0 over TCP, HTTP and WebSocket,
with batches, notifications, pipelining, error codes, limits and timeouts (docs/rpc.md).
"""

import json
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

METHODS: dict[str, Callable[..., Any]] = {
    "add": lambda a, b: a + b,
    "upper": lambda text: text.upper(),
    "echo": lambda *args: list(args),
}


def call(line: bytes) -> dict[str, Any]:
    """One request line -> one reply object. A bad request is answered, never fatal."""
    try:
        request = json.loads(line)
        method = METHODS[request["method"]]
        return {"id": request.get("id"), "result": method(*request.get("params", []))}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"id": None, "error": f"{type(exc).__name__}: {exc}"}


def serve(conn: socket.socket) -> None:
    with conn:
        buffer = b""
        try:
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:  # every complete request in the buffer
                    line, buffer = buffer.split(b"\n", 1)
                    conn.sendall(json.dumps(call(line)).encode() + b"\n")
        except OSError as exc:
            print(f"client failed: {exc}", flush=True)


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 7095))
    print("listening on {}:{}".format(*listener.getsockname()), flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    except KeyboardInterrupt:  # Ctrl-C: leave quietly
        pass


if __name__ == "__main__":
    main()
