"""Broken: answers one recv() and hangs up (a thread per client, so only that mistake shows)."""

import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        data = conn.recv(4096)
        conn.sendall(data)


listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*listener.getsockname()), flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
