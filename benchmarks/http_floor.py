"""The floor for benchmarks/http_cpu.py: a plain ``selectors`` loop answering every read with one canned response.

Why this exists: server CPU per request on a loaded, shared machine is inflated by the load
itself (cache contention, steal). This server does only what any Python server must - epoll,
``recv``, ``send`` of a prebuilt 1 KiB response - so its CPU per request, measured the same way
and minutes apart, is the floor against which socklab's figure is judged. Prints its port.

    .venv/bin/python benchmarks/http_floor.py        # then: wrk -t1 -c50 -d5s http://127.0.0.1:PORT/
"""

from __future__ import annotations

import selectors
import socket

BODY = b"x" * 1024
RESPONSE = (b"HTTP/1.1 200 OK\r\ndate: Sat, 21 Nov 2026 14:00:00 GMT\r\nserver: floor\r\n"
            b"content-type: application/octet-stream\r\ncontent-length: 1024\r\n\r\n" + BODY)


def main() -> None:
    sel = selectors.DefaultSelector()
    ls = socket.create_server(("127.0.0.1", 0), backlog=1024)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    print(f"floor listening on http://127.0.0.1:{ls.getsockname()[1]}", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is ls:
                try:
                    conn, _addr = ls.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            sock.send(RESPONSE * data.count(b"\r\n\r\n"))  # one response per request head (pipelining)


if __name__ == "__main__":
    main()
