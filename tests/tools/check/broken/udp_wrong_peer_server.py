"""Broken UDP echo: replies to the first peer it ever heard from, whoever sent the datagram."""

import socket
import sys

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(sys.argv[1])))
print("listening on {}:{}".format(*sock.getsockname()), flush=True)
first = None
while True:
    data, addr = sock.recvfrom(65535)
    first = first or addr
    sock.sendto(data, first)
