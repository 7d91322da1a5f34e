"""Broken chat: answers /nick and /join, but sends each message back to its sender only."""

import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn, conn.makefile("rb") as lines:
        for raw in lines:
            conn.sendall(b"OK " + raw)  # '/nick x' -> 'OK /nick x' contains the nick and the room


listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*listener.getsockname()), flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
