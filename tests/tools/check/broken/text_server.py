"""Broken: decodes what it receives as text and strips it (binary data and newlines change)."""

import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data.decode("utf-8", "replace").strip().encode() + b"\n")


listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*listener.getsockname()), flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
