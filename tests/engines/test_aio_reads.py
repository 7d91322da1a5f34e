"""The asyncio/uvloop read paths (issue 19): no socklab code per message; a lent buffer is used.

On plain TCP the loop calls the app's ``data_received`` itself, bound after the app's
``connection_made``; for the echo app that *is* the loop transport's ``write``. So a round trip
runs asyncio's (or uvloop's) code only, as in a hand-written asyncio server - the engine cannot be
slower than that server by its own work. Before, every read went through two adapter callbacks,
a copy out of a reused buffer and the echo app's ``data_received`` (0.85-0.89x the warm plain
asyncio server at 1 KiB). A profiler on the loop's thread records every Python call while 200
messages go back and forth.
"""

from __future__ import annotations

import socket
import ssl
import threading
from types import FrameType
from typing import Any

import pytest

import socklab
from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.protocol import BufferedProtocol
from tests.conftest import roundtrip, running_server

pytestmark = pytest.mark.timeout(60)

SOCKLAB = socklab.__file__.rsplit("/", 1)[0] + "/"


@pytest.mark.parametrize("engine", ["asyncio", "uvloop"])
def test_an_echo_round_trip_runs_no_socklab_code(engine: str) -> None:
    recording = threading.Event()
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and recording.is_set() and frame.f_code.co_filename.startswith(SOCKLAB):
            calls.append(f"{frame.f_code.co_filename[len(SOCKLAB):]}:{frame.f_code.co_name}")

    threading.setprofile(profile)  # every thread started from now on: the engine's loop thread
    try:
        # idle_timeout=0: no idle sweep (a timer of the engine's own) can fall inside the window
        with running_server(EchoProtocol, engine, idle_timeout=0) as srv, \
                socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
            assert roundtrip(c, b"connected") == b"connected"  # connection_made and the binding are done
            recording.set()
            for i in range(200):
                message = bytes([i % 256]) * 1024
                assert roundtrip(c, message) == message
            recording.clear()
    finally:
        threading.setprofile(None)
    assert calls == [], f"socklab code on the {engine} data path: {sorted(set(calls))}"


class _TinyBufferEcho(BufferedProtocol):
    """Lends a 7-byte bytearray of its own, so one read (one TLS record) takes many rounds."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = bytearray(7)

    def get_buffer(self, sizehint: int) -> bytearray:
        assert sizehint > 0  # the engines never pass asyncio's -1 through
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buf[:nbytes]))

    def eof_received(self) -> bool:
        self.transport.close()
        return False


@pytest.mark.parametrize("engine", ["asyncio", "uvloop"])
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_an_app_that_lends_its_buffer_gets_the_loops_receive_path(engine: str, tls: bool,
                                                                 tls_files: dict[str, str]) -> None:
    """The bridge turns into an ``asyncio.BufferedProtocol`` once it knows the app lends its buffer
    (both loops choose their read path by the protocol's class) and re-registers with the loop,
    which keeps the bound ``get_buffer``/``buffer_updated``. Over TLS the app sits behind
    socklab's TLS layer, which copies the plaintext into the app's buffer."""
    payload = bytes(range(256)) * 400
    certs: dict[str, Any] = {"tls_cert": tls_files["cert"], "tls_key": tls_files["key"]} if tls else {}
    with running_server(_TinyBufferEcho, engine, **certs) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=20) as raw:
        c = ssl.create_default_context(cafile=tls_files["ca"]).wrap_socket(raw, server_hostname="localhost") \
            if tls else raw
        with c:
            c.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                chunk = c.recv(65536)
                assert chunk, f"closed after {len(got)} of {len(payload)} bytes"
                got += chunk
        assert got == payload
