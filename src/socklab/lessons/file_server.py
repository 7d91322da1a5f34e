"""Lesson file: send a file over TCP with a length header, so the receiver knows when it is done.

Run:   python -m socklab.lessons.file_server 7090 ./shared    (serves files from ./shared)
Try:   python -m socklab.lessons.file_client 127.0.0.1 7090 notes.txt ./downloads

Protocol: the client sends a file name and "\\n"; the server answers "OK SIZE\\n" and exactly SIZE
bytes, or "ERR reason\\n". With the size up front, the client can tell a complete file from a
connection that broke half-way - EOF alone cannot tell those apart.

At full strength: `socklab send` / `socklab receive` add checksums (BLAKE3), resume after a
cut, directories, atomic writes (.part, fsync, rename) and speed; read docs/transfer.md.
"""

import socket
import sys
import threading
from pathlib import Path

ROOT = Path(sys.argv[2] if len(sys.argv) > 2 else ".").resolve()


def read_line(conn: socket.socket, limit: int = 1024) -> bytes:
    """Bytes up to "\\n": recv() may return the name in pieces."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)  # one byte at a time: simple, and we never read past the line
        if not chunk or len(data) > limit:
            raise ConnectionError("no complete file name received")
        data += chunk
    return data[:-1]


def serve(conn: socket.socket) -> None:
    with conn:
        try:
            name = read_line(conn).decode("utf-8", "replace")
            path = (ROOT / name).resolve()
            if not path.is_relative_to(ROOT) or not path.is_file():  # no ../ escape from ROOT
                conn.sendall(b"ERR no such file\n")
                return
            size = path.stat().st_size
            conn.sendall(f"OK {size}\n".encode())
            with path.open("rb") as f:
                conn.sendfile(f)  # the kernel copies file -> socket (sendall in a loop otherwise)
        except OSError as exc:
            print(f"transfer failed: {exc}", flush=True)


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 7090))
    print("listening on {}:{}".format(*listener.getsockname()), flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            conn.settimeout(30)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    except KeyboardInterrupt:  # Ctrl-C: leave quietly
        pass


if __name__ == "__main__":
    main()
