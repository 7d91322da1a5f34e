"""Lesson selectors: poll/epoll through the `selectors` module, with non-blocking sockets.

Run:   python -m socklab.lessons.selectors_server 7007
Check: socklab check echo 127.0.0.1:7007

select() scans every socket on every call and stops at 1024 file descriptors. poll() and Linux's
epoll do not; `selectors.DefaultSelector` picks the best one the system has. Sockets are
non-blocking here, so a client that stops reading cannot freeze the loop: what it cannot take
yet waits in its own buffer, and we ask to be told when it becomes writable.

At full strength: `socklab echo serve --engine epoll` (also `poll`) adds high-water marks, idle
timeouts, connection limits, graceful shutdown and a trace; read src/socklab/engines/reactor.py.
"""

import selectors
import socket
import sys

sel = selectors.DefaultSelector()  # epoll on Linux, kqueue on BSD/macOS, else poll or select
pending: dict[socket.socket, bytes] = {}  # per client: bytes received but not yet sent back


def on_readable(conn: socket.socket) -> None:
    try:
        data = conn.recv(65536)
    except BlockingIOError:
        return  # a spurious wake-up: nothing to read after all
    except OSError:
        data = b""  # reset by the client: treat it like EOF
    if not data:
        sel.unregister(conn)  # stop watching it, then close it (no CLOSE_WAIT left behind)
        pending.pop(conn, None)
        conn.close()
        return
    pending[conn] += data
    flush(conn)


def flush(conn: socket.socket) -> None:
    """Send what this client can take now; watch for writability only while bytes remain."""
    try:
        sent = conn.send(pending[conn])  # non-blocking: may send only part (or raise)
    except BlockingIOError:
        sent = 0
    except OSError:
        sent = len(pending[conn])  # the client is gone; its reset will show up as a read
    pending[conn] = pending[conn][sent:]
    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[conn] else 0)
    sel.modify(conn, events)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7007
    listener = socket.create_server(("127.0.0.1", port), backlog=128)  # socket+bind+listen
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    host, port = listener.getsockname()
    print(f"listening on {host}:{port}", flush=True)
    try:
        while True:
            for key, mask in sel.select():  # blocks until some socket is ready
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    conn, _ = listener.accept()
                    conn.setblocking(False)  # never let one client block the loop
                    pending[conn] = b""
                    sel.register(conn, selectors.EVENT_READ)
                elif mask & selectors.EVENT_READ:
                    on_readable(sock)
                elif mask & selectors.EVENT_WRITE:
                    flush(sock)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
