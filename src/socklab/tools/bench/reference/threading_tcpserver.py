"""Reference: an echo server on ``socketserver.ThreadingTCPServer`` (a thread per connection).

Why this exists: it is the bar for socklab's ``threads``, ``pool`` and ``iterative`` engines -
the standard library's blocking-socket server, used as its documentation shows, with a plain
``recv``/``sendall`` loop (not the line-buffered ``StreamRequestHandler``, which would echo
line by line rather than byte-exact) and TCP_NODELAY like every other server here.

Usage: ``python reference/threading_tcpserver.py [--port 0]``
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, sendall = sock.recv, sock.sendall
        try:
            while data := recv(65536):
                sendall(data)
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 4096


def serve(name: str, handler: type[socketserver.BaseRequestHandler], args: argparse.Namespace,
          scheme: str = "tcp") -> None:
    """Serve ``handler`` a thread per connection until SIGTERM or Ctrl-C (also the TLS reference's)."""
    threading.stack_size(256 * 1024)  # 10,000 threads for the sweep; the default 8 MiB is only virtual
    with Server((args.host, args.port), handler) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        ready(name, args.host, server.server_address[1], scheme)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    sys.exit(0)


def main() -> None:
    serve("threading_tcpserver", EchoHandler, parse_args("threading_tcpserver"))


if __name__ == "__main__":
    main()
