"""Lesson rpc: the client side - a remote call looks like a local one, until the network fails.

Run:   python -m socklab.lessons.rpc_client 127.0.0.1 7095 add 2 3

At full strength: `socklab rpc call 127.0.0.1:7095 add 2 3` (JSON-RPC 2.0, docs/rpc.md) adds
batches, notifications, pipelined calls and a timeout per call.
"""

import json
import socket
import sys
from typing import Any


def remote_call(sock: socket.socket, buffer: list[bytes], method: str, *params: Any) -> Any:
    request = {"id": 1, "method": method, "params": list(params)}
    sock.sendall(json.dumps(request).encode() + b"\n")
    data = buffer[0]
    while b"\n" not in data:  # a reply can arrive in pieces: read up to its newline
        chunk = sock.recv(4096)  # a timeout here means: we do not know if the call ran!
        if not chunk:
            raise ConnectionError("the server closed before replying")
        data += chunk
    line, buffer[0] = data.split(b"\n", 1)  # keep any bytes after the line for the next call
    reply = json.loads(line)
    if "error" in reply:
        raise RuntimeError(json.dumps(reply["error"]))
    return reply["result"]


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit("usage: rpc_client.py HOST PORT METHOD [ARG...]   (numbers are sent as numbers)")
    params = [int(a) if a.lstrip("-").isdigit() else a for a in sys.argv[4:]]
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as sock:
        try:  # json.dumps escapes control characters: the server's text cannot drive the terminal
            print(json.dumps(remote_call(sock, [b""], sys.argv[3], *params)))
        except TimeoutError:
            sys.exit("no reply in 5 s: the call may or may not have run on the server")
        except (OSError, RuntimeError) as exc:
            sys.exit(f"call failed: {exc}")


if __name__ == "__main__":
    main()
