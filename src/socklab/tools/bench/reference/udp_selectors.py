"""Reference: a UDP echo server as a plain ``selectors`` loop on a non-blocking socket.

Why this exists: the readiness-loop shape of socklab's ``select``/``poll``/``epoll`` engines,
written the way a tutorial would: wait until readable, then read every queued datagram
(until BlockingIOError) and echo each at once. Every datagram goes back, an empty one too.

Usage: ``python reference/udp_selectors.py [--port 0]``
"""

from __future__ import annotations

import selectors
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready


def main() -> None:
    args = parse_args("udp_selectors")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    ready("udp_selectors", args.host, sock.getsockname()[1], "udp")
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        sel.select()
        while True:
            try:
                data, peer = recvfrom(65536)
            except BlockingIOError:
                break
            try:
                sendto(data, peer)
            except BlockingIOError:  # the send buffer is full: drop, as UDP may
                pass


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
