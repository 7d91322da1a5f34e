"""The trace's notes tell the truth, on every engine (issue 15 items 7 and 9).

- a "pausing ... no longer reading this peer" note is followed by a "resuming" note once the
  peer catches up (before the fix there was none);
- notes about message boundaries appear only where the framing is known.
"""

from __future__ import annotations

import random
import socket
import threading
from typing import Any

import pytest

from socklab.core.protocol import Protocol
from socklab.core.trace import TraceEvent, Tracer
from socklab.core.transport import Transport
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)

FLOOD = 16 * 1024 * 1024  # more than loopback socket buffers hold
HIGH = 64 * 1024


class _Notes:
    """A trace sink that signals when a note containing some text arrives."""

    def __init__(self, tracer: Tracer) -> None:
        self.notes: list[str] = []
        self._cond = threading.Condition()
        tracer.add_sink(self)

    def __call__(self, event: TraceEvent) -> None:
        with self._cond:
            if event.op == "note" and event.detail:
                self.notes.append(event.detail)
            self.notes.extend(event.notes)
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in n for n in self.notes), timeout)


class _Flood(Protocol):
    """Writes 16 MiB at once to a client that does not read yet: the buffer passes the high-water mark."""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        transport.write(b"x" * FLOOD)
        transport.close()


def test_a_pause_note_is_followed_by_a_resume_note(engine: str) -> None:
    tracer = Tracer(engine=engine)
    notes = _Notes(tracer)
    with running_server(_Flood, engine, tracer=tracer, max_buffer=HIGH) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as c:
            assert notes.wait_for("no longer reading this peer"), notes.notes
            got = 0
            while True:  # now the peer reads: the buffer drains below the low-water mark
                chunk = c.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
            assert got == FLOOD
        assert notes.wait_for("reading this peer again"), notes.notes
    paused = [i for i, n in enumerate(notes.notes) if "no longer reading this peer" in n]
    resumed = [i for i, n in enumerate(notes.notes) if "reading this peer again" in n]
    assert paused[0] < resumed[0]
    assert len(resumed) == len(paused)


# ---- message boundaries ---------------------------------------------------------------------------
def _boundary_notes(notes: list[str]) -> list[str]:
    return [n for n in notes if "TCP merged" in n or "continues a line" in n or "split" in n]


def _echo_session(engine: str, chunks: list[bytes], **server: Any) -> list[str]:
    from socklab.apps.echo.protocol import EchoProtocol

    tracer = Tracer(engine=engine)
    notes = _Notes(tracer)
    total = sum(len(c) for c in chunks)
    with running_server(EchoProtocol, engine, tracer=tracer, **server) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as c:
            got = 0
            for chunk in chunks:  # one message per round trip: each recv() holds exactly one
                c.sendall(chunk)
                want = got + len(chunk)
                while got < want:
                    data = c.recv(65536)
                    assert data
                    got += len(data)
            assert got == total
    return notes.notes


def _binary_messages() -> list[bytes]:
    """Ping-mode payloads: random bytes, here each with several newlines and none at the end."""
    rnd = random.Random(15)
    return [bytes(rnd.getrandbits(8) for _ in range(60)) + b"\n\n\x00" + bytes([i]) for i in range(8)]


def test_binary_traffic_gets_no_boundary_notes(engine: str) -> None:
    # Each recv() on the server holds exactly one ping message; the old echo server claimed every
    # one was "merged" (several newlines) or "continued" (no newline at the end).
    notes = _echo_session(engine, _binary_messages())
    assert _boundary_notes(notes) == []


class _LineEcho(Protocol):
    """A line protocol that says so: the trace may then note how TCP cut its lines."""

    framing = "lines"

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def test_a_line_protocol_gets_exact_boundary_notes(engine: str) -> None:
    tracer = Tracer(engine=engine)
    notes = _Notes(tracer)
    with running_server(_LineEcho, engine, tracer=tracer) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as c:
            for chunk in (b"one\ntwo\n", b"thr", b"ee\n"):  # each waits for its echo: one recv() each
                c.sendall(chunk)
                got = b""
                while len(got) < len(chunk):
                    data = c.recv(100)
                    assert data
                    got += data
            assert notes.wait_for("continues a line begun in an earlier recv()")
    merged = [n for n in notes.notes if "TCP merged" in n]
    assert len(merged) == 1 and "held 2 lines" in merged[0], notes.notes
    assert len([n for n in notes.notes if "continues a line" in n]) == 1, notes.notes
