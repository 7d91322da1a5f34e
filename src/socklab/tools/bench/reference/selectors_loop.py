"""Reference: an echo server as a plain ``selectors`` loop (epoll on Linux), written by hand.

Why this exists: it is the bar for socklab's ``select``, ``poll`` and ``epoll`` engines - one
thread, non-blocking sockets, the readiness loop every Python tutorial shows, done carefully:
one reused receive buffer (``recv_into``, never a big fresh allocation per call), send at once,
keep only the leftover and stop reading that peer until it is gone.

Usage: ``python reference/selectors_loop.py [--port 0]``
"""

from __future__ import annotations

import selectors
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready

READ_SIZE = 65536


def serve(listener: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    pending: dict[socket.socket, bytes] = {}

    def close(conn: socket.socket) -> None:
        sel.unregister(conn)
        pending.pop(conn, None)
        conn.close()

    while True:
        for key, mask in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data is None:  # the listener
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, "conn")
                continue
            if mask & selectors.EVENT_WRITE:  # flush the leftover, then read again
                try:
                    n = sock.send(pending[sock])
                except BlockingIOError:
                    continue
                except OSError:
                    close(sock)
                    continue
                rest = pending[sock][n:]
                if rest:
                    pending[sock] = rest
                else:
                    del pending[sock]
                    sel.modify(sock, selectors.EVENT_READ, "conn")
                continue
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                close(sock)
                continue
            if n == 0:
                close(sock)
                continue
            try:
                sent = sock.send(view[:n])
            except BlockingIOError:
                sent = 0
            except OSError:
                close(sock)
                continue
            if sent < n:
                pending[sock] = bytes(view[sent:n])
                sel.modify(sock, selectors.EVENT_WRITE, "conn")


def main() -> None:
    args = parse_args("selectors_loop")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(4096)
    listener.setblocking(False)
    ready("selectors_loop", args.host, listener.getsockname()[1])
    try:
        serve(listener)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


if __name__ == "__main__":
    main()
