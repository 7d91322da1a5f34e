"""Broken: sees EOF (recv() returned b'') but never closes the socket, which stays in CLOSE_WAIT."""

import socket
import sys
import threading

kept: list[socket.socket] = []  # the mistake: connections are kept and never closed


def serve(conn: socket.socket) -> None:
    kept.append(conn)
    while True:
        data = conn.recv(4096)
        if not data:
            return  # forgot conn.close()
        conn.sendall(data)


listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*listener.getsockname()), flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
