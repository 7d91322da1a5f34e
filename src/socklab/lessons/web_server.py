"""Lesson web: a small HTTP/1.1 file server (the classic lab), one thread per connection.

Run:   python -m socklab.lessons.web_server 8080 ./www     (serves ./www; default: the cwd)
Try:   curl -v http://127.0.0.1:8080/      or a browser
Check: socklab check http 127.0.0.1:8080 --root ./www

A request is text lines ending in CRLF, then an empty line. It can arrive in pieces, and the
next request on the same connection can arrive with it: so the loop reads until the blank line
and keeps the rest. Content-Length tells the client where the body ends (keep-alive needs it).

At full strength: `socklab http serve DIR` adds ranges, conditional requests, chunked bodies,
limits against slow and huge requests, symlink policy, WebSocket, TLS and every engine.
"""

import socket
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(sys.argv[2] if len(sys.argv) > 2 else ".").resolve()


def respond(conn: socket.socket, status: str, body: bytes, send_body: bool, keep: bool) -> None:
    head = (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"  # bytes, not characters
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n")
    conn.sendall(head.encode() + (body if send_body else b""))


def answer(conn: socket.socket, head: bytes) -> bool:
    """Answer one request (its headers, without the blank line). True: keep the connection."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        respond(conn, "400 Bad Request", b"bad request\n", True, False)
        return False
    method, target, version = parts
    keep = version == "HTTP/1.1" and "connection: close" not in head.decode("latin-1").lower()
    if method not in ("GET", "HEAD"):
        respond(conn, "405 Method Not Allowed", b"GET or HEAD only\n", True, keep)
        return keep
    # Decode %xx, then resolve: ".." and symlinks are followed, so the check below sees the
    # real place. A path that ends up outside ROOT is refused (path traversal).
    path = (ROOT / unquote(target.split("?")[0]).lstrip("/")).resolve()
    if path.is_dir():
        path = path / "index.html"
    if not path.is_relative_to(ROOT) or not path.is_file():
        respond(conn, "404 Not Found", b"not found\n", method == "GET", keep)
    else:
        respond(conn, "200 OK", path.read_bytes(), method == "GET", keep)  # bytes: "rb"
    return keep


def serve(conn: socket.socket) -> None:
    buffer = b""
    with conn:
        try:
            while True:  # one turn per request: keep-alive
                while b"\r\n\r\n" not in buffer:  # read until the blank line that ends the headers
                    if len(buffer) > 16384:
                        return respond(conn, "431 Request Header Fields Too Large", b"", True, False)
                    chunk = conn.recv(4096)
                    if not chunk:  # the client closed: done
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")  # keep what follows: the next request
                if not answer(conn, head):
                    return
        except (OSError, ValueError) as exc:  # a reset, or a path with a NUL byte
            print(f"connection failed: {exc}", flush=True)


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
    print("listening on {}:{}".format(*listener.getsockname()), flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            conn.settimeout(30)  # a client that stops talking frees its thread after 30 s
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    except KeyboardInterrupt:  # Ctrl-C: leave quietly
        pass


if __name__ == "__main__":
    main()
