"""Lesson select: one thread, many clients, with select() saying which socket is ready.

Run:   python -m socklab.lessons.select_server 7007
Check: socklab check echo 127.0.0.1:7007

select(readers, writers, [], timeout) blocks until at least one socket can be read (or written)
without blocking, and returns those. The listening socket is "readable" when a client waits to
be accepted. Never block on one client: recv() is only called on a socket select() returned.

At full strength: `socklab echo serve --engine select` (or `poll`, `epoll`) is this loop grown up:
non-blocking sockets, write buffering for slow readers, timers, limits, and a trace.
"""

import select
import socket
import sys


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7007
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    host, port = listener.getsockname()
    print(f"listening on {host}:{port}", flush=True)
    clients: list[socket.socket] = []  # every connected client's socket
    try:
        while True:  # the event loop: wait for readiness, handle it, repeat
            readable, _, _ = select.select([listener, *clients], [], [])
            for sock in readable:
                if sock is listener:
                    conn, _addr = listener.accept()  # ready: accept() will not block
                    clients.append(conn)
                    continue
                try:
                    data = sock.recv(4096)  # ready: returns at once (data, or b"" at EOF)
                    if data:
                        # sendall() can block if this client does not read its replies; the
                        # selectors lesson explains how a real event loop buffers instead.
                        sock.sendall(data)
                        continue
                except OSError as exc:  # ConnectionResetError: the client vanished
                    print(f"client failed: {exc}", flush=True)
                # EOF or error: forget the client AND close its socket. Forgetting the close
                # leaves it in CLOSE_WAIT; forgetting the remove makes select() report it forever.
                clients.remove(sock)
                sock.close()
    except KeyboardInterrupt:
        pass
    finally:
        for sock in clients:
            sock.close()
        listener.close()


if __name__ == "__main__":
    main()
