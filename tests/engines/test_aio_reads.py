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
import threading
from types import FrameType
from typing import Any

import pytest

import socklab
from socklab.apps.echo.protocol import EchoProtocol
from tests.conftest import roundtrip, running_server
from tests.engines.test_behaviour import SmallBufferEcho, recv_exactly

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


@pytest.mark.parametrize("engine", ["asyncio", "uvloop"])
def test_an_app_that_lends_its_buffer_gets_the_loops_receive_path(engine: str) -> None:
    """The bridge turns into an ``asyncio.BufferedProtocol`` once it knows the app lends its buffer
    (both loops choose their read path by the protocol's class) and re-registers with the loop,
    which keeps the bound ``get_buffer``/``buffer_updated``. (Over TLS, where the app sits behind
    socklab's TLS layer: test_behaviour's ``test_an_app_that_lends_its_buffer_gets_the_plaintext_over_tls``,
    on every engine.)"""
    payload = bytes(range(256)) * 400
    with running_server(SmallBufferEcho, engine) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=20) as c:
        c.sendall(payload)
        assert recv_exactly(c, len(payload)) == payload
