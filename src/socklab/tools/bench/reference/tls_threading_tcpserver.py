"""Reference: a TLS echo server on ``socketserver.ThreadingTCPServer`` (a thread per connection).

Why this exists: it is the TLS bar for socklab's ``threads``, ``pool`` and ``iterative`` engines -
the same mechanism as ``threading_tcpserver.py`` (its server, blocking sockets, a thread each) with the
standard library's ``SSLContext.wrap_socket`` on the accepted socket, as the ``ssl`` documentation
shows it: the handshake, then a plain ``recv``/``sendall`` loop. TLS 1.2 or newer; the certificate
and key are given on the command line (the benchmark makes a throwaway self-signed pair).

Usage: ``python reference/tls_threading_tcpserver.py --cert C.pem --key K.pem [--port 0]``
"""

from __future__ import annotations

import socket
import socketserver
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # checked as part of the package; run by its path, the modules beside it likewise
    from ._common import parse_args, tls_context
    from .threading_tcpserver import serve
else:
    from _common import parse_args, tls_context
    from threading_tcpserver import serve


class EchoHandler(socketserver.BaseRequestHandler):
    context: ssl.SSLContext  # made from --cert/--key in main()

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with self.context.wrap_socket(sock, server_side=True) as tls:
                recv, sendall = tls.recv, tls.sendall
                while data := recv(65536):
                    sendall(data)
        except OSError:  # ssl.SSLError included: a failed handshake or a reset ends this client
            pass


def main() -> None:
    args = parse_args("tls_threading_tcpserver", tls=True)
    EchoHandler.context = tls_context(args)
    serve("tls_threading_tcpserver", EchoHandler, args, "tls")


if __name__ == "__main__":
    main()
