"""Broken web server: reads the request with a single recv() and sends no Content-Length (closes instead)."""

import socket
import sys
from pathlib import Path

root = Path(sys.argv[2])
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*listener.getsockname()), flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        try:
            request = conn.recv(4096).decode("latin-1")  # one recv: the whole request, it hopes
            path = root / request.split(" ")[1].lstrip("/")
            body = path.read_bytes() if path.is_file() else b"not found"
            status = "200 OK" if path.is_file() else "404 Not Found"
        except (IndexError, OSError):
            status, body = "400 Bad Request", b"bad"
        conn.sendall(f"HTTP/1.1 {status}\r\n\r\n".encode() + body)  # no Content-Length
