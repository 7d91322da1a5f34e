"""Broken: accepts connections and never reads or answers (the grader must fail, never hang)."""

import socket
import sys

listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*listener.getsockname()), flush=True)
kept = []
while True:
    kept.append(listener.accept()[0])
