"""Reference: a TLS echo server on ``socketserver.ThreadingTCPServer`` (a thread per connection).

Why this exists: it is the TLS bar for socklab's ``threads``, ``pool`` and ``iterative`` engines -
the same mechanism as ``threading_tcpserver.py`` (blocking sockets, a thread each) with the
standard library's ``SSLContext.wrap_socket`` on the accepted socket, as the ``ssl`` documentation
shows it: the handshake, then a plain ``recv``/``sendall`` loop. TLS 1.2 or newer; the certificate
and key are given on the command line (the benchmark makes a throwaway self-signed pair).

Usage: ``python reference/tls_threading_tcpserver.py --cert C.pem --key K.pem [--port 0]``
"""

from __future__ import annotations

import signal
import socket
import socketserver
import ssl
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready

CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with CONTEXT.wrap_socket(sock, server_side=True) as tls:
                recv, sendall = tls.recv, tls.sendall
                while data := recv(65536):
                    sendall(data)
        except OSError:  # ssl.SSLError included: a failed handshake or a reset ends this client
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 4096


def _take(flag: str) -> str:
    i = sys.argv.index(flag)
    value = sys.argv[i + 1]
    del sys.argv[i:i + 2]
    return value


def main() -> None:
    cert, key = _take("--cert"), _take("--key")
    args = parse_args("tls_threading_tcpserver")
    CONTEXT.minimum_version = ssl.TLSVersion.TLSv1_2
    CONTEXT.load_cert_chain(cert, key)
    threading.stack_size(256 * 1024)
    with Server((args.host, args.port), EchoHandler) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        ready("tls_threading_tcpserver", args.host, server.server_address[1], "tls")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    sys.exit(0)


if __name__ == "__main__":
    main()
