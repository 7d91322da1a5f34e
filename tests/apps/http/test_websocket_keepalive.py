"""WebSocket keep-alive on a fake transport: no timer per message, a ping only after a silent interval.

Fails on the old code (before the framing change): it cancelled and re-armed the ping timer on
every read, so 200 messages created 200 more timers.
"""

from __future__ import annotations

import pytest

from socklab.apps.http.api import HttpProtocol, HttpSettings, Router, WebSocket
from tests.apps.http.test_protocol_fake import FakeTransport

pytestmark = pytest.mark.timeout(60)

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(op: int, payload: bytes) -> bytes:
    """A final masked client frame (payload < 126 bytes), built here so the file also runs on the old code."""
    mask = b"\x01\x02\x03\x04"
    return bytes((0x80 | op, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_ws(**kw: float) -> tuple[HttpProtocol, FakeTransport, list[tuple[int, str]]]:
    router = Router()
    closes: list[tuple[int, str]] = []

    @router.websocket("/ws")
    def on_ws(ws: WebSocket) -> None:
        ws.on_message = ws.send
        ws.on_close = lambda code, reason: closes.append((code, reason))

    proto = HttpProtocol(router, HttpSettings(log_format="none", **kw))  # type: ignore[arg-type]
    t = FakeTransport()
    proto.connection_made(t)
    proto.data_received(UPGRADE)
    assert bytes(t.out).startswith(b"HTTP/1.1 101")
    t.out.clear()
    return proto, t, closes


def live(t: FakeTransport) -> int:
    return sum(1 for _, _, cancelled in t.timers if not cancelled[0])


def test_busy_connection_arms_no_timer_per_message() -> None:
    proto, t, _ = open_ws(ws_ping_interval=20.0, ws_ping_timeout=20.0)
    before = len(t.timers)
    for i in range(200):
        proto.data_received(client_frame(1, f"m{i}".encode()))
    assert bytes(t.out).count(b"\x81") >= 200  # every message echoed
    assert len(t.timers) == before  # the old code: +200 (one cancel-and-rearm per read)


def test_ping_only_after_a_whole_silent_interval_then_pong_missing_closes() -> None:
    proto, t, closes = open_ws(ws_ping_interval=20.0, ws_ping_timeout=20.0)
    proto.data_received(client_frame(1, b"hi"))
    t.out.clear()
    t.fire_timers()  # first check: the connection was active -> no ping, checked again later
    assert b"\x89" not in t.out and live(t) == 1
    t.fire_timers()  # a whole interval without a frame -> ping, and the pong deadline starts
    assert bytes(t.out).startswith(b"\x89\x07socklab")
    assert live(t) == 2
    proto.data_received(client_frame(10, b"socklab"))  # the pong cancels the deadline
    assert live(t) == 1 and not closes
    t.out.clear()
    t.fire_timers()  # active (the pong) -> no ping
    t.fire_timers()  # silent -> ping; then nothing answers
    assert b"\x89" in t.out
    t.fire_timers()
    t.fire_timers()
    assert closes == [(1001, "no pong within ws_ping_timeout")] and t.closed


def test_peer_close_is_answered_with_its_code_and_errors_with_theirs() -> None:
    proto, t, closes = open_ws()
    proto.data_received(client_frame(1, b"a") + client_frame(8, b"\x0f\xa0bye") + client_frame(1, b"late"))
    assert bytes(t.out) == b"\x81\x01a" + b"\x88\x02\x0f\xa0" and closes == [(4000, "bye")] and t.closed
    proto, t, closes = open_ws()
    proto.data_received(client_frame(1, b"ok") + client_frame(1, b"\xff"))
    assert bytes(t.out).startswith(b"\x81\x02ok\x88") and closes[0][0] == 1007 and t.closed
