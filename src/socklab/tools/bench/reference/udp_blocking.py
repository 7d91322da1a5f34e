"""Reference: a UDP echo server as a plain blocking ``recvfrom``/``sendto`` loop.

Why this exists: it is the bar for socklab's UDP echo on the ``threads``, ``pool``, ``iterative``,
``select``, ``poll`` and ``epoll`` engines. One socket needs no multiplexing, so this loop is the
fastest plain Python UDP server there is; an engine's readiness loop has to keep up with it.
Every datagram goes back to its sender, an empty one too.

Usage: ``python reference/udp_blocking.py [--port 0]``
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready


def main() -> None:
    args = parse_args("udp_blocking")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    ready("udp_blocking", args.host, sock.getsockname()[1], "udp")
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, peer = recvfrom(65536)
        sendto(data, peer)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
