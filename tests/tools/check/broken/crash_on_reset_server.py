"""Broken: an iterative echo server with no error handling; a client's reset kills it."""

import socket
import sys

listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*listener.getsockname()), flush=True)
while True:
    conn, _ = listener.accept()
    while data := conn.recv(4096):  # ConnectionResetError escapes: the process dies
        conn.sendall(data)
    conn.close()
