"""A socket-level TFTP client for tests: every packet visible, every step under the test's control.

``RawClient`` binds where the test says (``127.0.0.2`` is "another client" on loopback), sends a
request, and lets the test read each reply and decide what to answer - or not answer at all (a
stalled client), or answer later (a transfer still in flight at SIGTERM).
"""

from __future__ import annotations

import socket
from typing import Any

from socklab.protocols import tftp


class RawClient:
    def __init__(self, port: int, *, host: str = "127.0.0.1", bind: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.server = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.sock.settimeout(timeout)
        self.tid: Any = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, name: str, *, write: bool = False, **options: str) -> None:
        self.sock.sendto(tftp.encode_packet(tftp.Request(name, "octet", dict(options), write=write)), self.server)

    def recv(self) -> tftp.Packet:
        """The next packet from the server (its first reply fixes the transfer's TID)."""
        raw, addr = self.sock.recvfrom(65536)
        if self.tid is None and addr != self.server:
            self.tid = addr
        return tftp.parse_packet(raw)

    def send(self, packet: tftp.Packet) -> None:
        self.sock.sendto(tftp.encode_packet(packet), self.tid or self.server)

    def get_rest(self, first: tftp.Packet, blksize: int = 512) -> bytes:
        """Finish a lock-step download whose first reply was ``first`` (DATA 1, or an OACK)."""
        data = b""
        packet = first
        expected = 1
        while True:
            if isinstance(packet, tftp.OAck):
                blksize = int(packet.options.get("blksize", blksize))
                self.send(tftp.Ack(0))
            elif isinstance(packet, tftp.Data):
                if packet.block == expected & 0xFFFF:  # (else a duplicate: acknowledge it again)
                    data += packet.payload
                    expected += 1
                self.send(tftp.Ack(packet.block))
                if packet.block == (expected - 1) & 0xFFFF and len(packet.payload) < blksize:
                    return data
            else:
                raise AssertionError(f"unexpected {packet!r}")
            packet = self.recv()

    def get(self, name: str) -> bytes:
        self.request(name)
        return self.get_rest(self.recv())
