"""A tiny lossy UDP relay that understands TFTP's transfer IDs, for the per-TID server mode.

``socklab tap`` relays each client through one *connected* upstream socket, so it cannot carry a
server that answers from a new port (RFC 1350 section 4). This relay can: for every server port it
hears from, it opens a client-facing socket of its own, so the client sees one distinct TID per
server TID, exactly as without the relay. Faults (loss, duplication, reordering by a short hold)
are drawn from one seeded generator. Test-only; runs on a thread with a selector, stopped by a
socketpair wake-up (no polling).
"""

from __future__ import annotations

import heapq
import random
import selectors
import socket
import threading
import time
from typing import Any


class TidProxy:
    def __init__(self, server: tuple[str, int], *, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 hold: float = 0.005, seed: int = 1) -> None:
        self.server = server
        self.loss, self.dup, self.reorder, self.hold = loss, dup, reorder, hold
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.front = self._sock()
        self.port = self.front.getsockname()[1]
        self.upstream: dict[Any, socket.socket] = {}  # client addr -> socket facing the server
        self.faces: dict[tuple[Any, int], socket.socket] = {}  # (client, server port) -> client-facing socket
        self.route: dict[socket.socket, tuple[str, Any]] = {}
        self.dropped = 0
        self.queue: list[tuple[float, int, socket.socket, bytes, Any]] = []
        self._n = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ)
        self.sel.register(self.front, selectors.EVENT_READ)
        self.route[self.front] = ("front", None)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sock(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        return s

    def _send(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        delay = self.hold if self.rng.random() < self.reorder else 0.0
        for _ in range(copies):
            if delay:
                self._n += 1
                heapq.heappush(self.queue, (time.monotonic() + delay, self._n, sock, data, addr))
            else:
                self._sendto(sock, data, addr)

    @staticmethod
    def _sendto(sock: socket.socket, data: bytes, addr: Any) -> None:
        try:
            sock.sendto(data, addr)
        except OSError:
            pass  # a full buffer or an ICMP error: the datagram is lost, as on a real network

    def _run(self) -> None:
        while not self._stop:
            timeout = max(0.0, self.queue[0][0] - time.monotonic()) if self.queue else None
            for key, _ in self.sel.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    return
                assert isinstance(sock, socket.socket)
                while True:
                    try:
                        data, addr = sock.recvfrom(70000)
                    except OSError:  # would block, or an ICMP error from an earlier send
                        break
                    self._relay(sock, data, addr)
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, _, s, data, addr = heapq.heappop(self.queue)
                self._sendto(s, data, addr)

    def _relay(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        kind, client = self.route[sock]
        if kind == "front":  # a request from a client
            up = self.upstream.get(addr)
            if up is None:
                up = self.upstream[addr] = self._sock()
                self.route[up] = ("up", addr)
                self.sel.register(up, selectors.EVENT_READ)
            self._send(up, data, self.server)
        elif kind == "up":  # from the server (its listening port or a transfer's TID)
            key = (client, addr[1])
            face = self.faces.get(key)
            if face is None:
                face = self.faces[key] = self._sock()
                self.route[face] = ("face", (client, addr))
                self.sel.register(face, selectors.EVENT_READ)
            self._send(face, data, client)
        else:  # from the client to one server TID
            client_addr, server_addr = client
            self._send(self.upstream[client_addr], data, server_addr)

    def __enter__(self) -> TidProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self.thread.join(5)
        for s in [self.front, *self.upstream.values(), *self.faces.values(), self._wake_r, self._wake_w]:
            s.close()
        self.sel.close()
