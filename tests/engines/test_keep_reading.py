"""``transport.keep_reading_when_full()``: a client reads its server's bytes while its own writes back up.

A socklab server stops reading a peer whose answers it cannot send (its write buffer is above
high water). A client under the same rule would deadlock with it as soon as both directions fill:
each side waits for the other to read. So a client transport may lift the rule: pause_writing
still comes, reading goes on. Here the peer never reads and sends 1 MiB; the client writes 8 MiB
first (paused at once) and must still receive the whole 1 MiB - on every engine, plain and TLS.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest

from socklab.core.protocol import Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.runtime.client import BlockingClient

SENT = 1 << 20  # what the peer sends
WRITTEN = 8 << 20  # what the client writes: far more than the kernel buffers take from a peer that never reads


class Flooder(Protocol):
    def __init__(self) -> None:
        self.got = 0
        self.paused = threading.Event()
        self.all_in = threading.Event()
        self.kept: bool | None = None

    def connection_made(self, transport: Any) -> None:
        transport.set_write_buffer_limits(high=64 * 1024)
        self.kept = transport.keep_reading_when_full()
        chunk = b"x" * (64 * 1024)
        for _ in range(WRITTEN // len(chunk)):  # in pieces: asyncio's TLS pauses the app only once
            transport.write(chunk)  # its own TCP transport pushed back (a first write is taken whole)

    def pause_writing(self) -> None:
        self.paused.set()

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= SENT:
            self.all_in.set()


def never_reading_peer(tls: ssl.SSLContext | None) -> tuple[socket.socket, threading.Event, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def run() -> None:
        conn, _ = listener.accept()
        peer = tls.wrap_socket(conn, server_side=True) if tls is not None else conn
        with peer:
            peer.sendall(b"y" * SENT)  # and never reads
            done.wait(30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, done, thread


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_reading_goes_on_while_writes_are_paused(engine: str, tls: bool, tls_files: dict[str, str]) -> None:
    server_ctx = None
    if tls:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(tls_files["cert"], tls_files["key"])
    listener, done, thread = never_reading_peer(server_ctx)
    proto = Flooder()
    try:
        settings = ClientSettings(connect_timeout=5, tls=tls, cafile=tls_files["ca"] if tls else None)
        with BlockingClient(settings, engine=engine) as client:
            client.connect(Endpoint("127.0.0.1", listener.getsockname()[1]), lambda: proto)
            assert proto.paused.wait(20), "the client's writes never backed up"
            assert proto.all_in.wait(20), f"only {proto.got} of {SENT} bytes were read while the writes waited"
            assert proto.kept is True
    finally:
        done.set()
        thread.join(10)
        listener.close()
