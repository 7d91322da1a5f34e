"""socklab.protocols.wsframe: RFC 6455 checks, hypothesis fed whole / byte by byte / in chunks, wsproto as the oracle.

The keep-alive test at the end drives a real WebSocket on a fake transport: a busy connection
must not create a timer per message (the old code cancelled and re-armed one per read).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.events import Ping as WPing
from wsproto.events import Pong as WPong

from socklab.core.errors import RemoteProtocolError
from socklab.protocols.wsframe import Close, FrameParser, Ping, Pong, WsProtocolError, close_frame, data_frame

pytestmark = pytest.mark.timeout(60)
BIG = 1 << 24


def client_frame(op: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = b"abcd",
                 length_form: int | None = None) -> bytes:
    """A client frame; ``length_form`` 126/127 forces the long length encodings (even when not needed)."""
    n = len(payload)
    form = length_form or (n if n < 126 else 126 if n < 65536 else 127)
    b1 = (0x80 if mask is not None else 0) | form
    head = bytes(((0x80 if fin else 0) | rsv << 4 | op, b1))
    if form == 126:
        head += struct.pack("!H", n)
    elif form == 127:
        head += struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def run(data: bytes, chunks: list[int] | None = None, max_message: int = BIG) -> tuple[list[Any], int | None]:
    """Feed ``data`` (whole, or cut at ``chunks`` sizes, cycling) -> (events, close code of a violation)."""
    p = FrameParser(max_message)
    events: list[Any] = []
    pos, i = 0, 0
    while pos < len(data) or pos == 0:
        step = len(data) if not chunks else max(1, chunks[i % len(chunks)])
        piece, pos, i = data[pos:pos + step], pos + step, i + 1
        try:
            events += p.feed(piece)
        except WsProtocolError as exc:
            return events + exc.events, exc.code
        if not data:
            break
    return events, None


def test_messages_controls_and_fragments() -> None:
    data = (client_frame(1, "héllo".encode()) + client_frame(2, b"\x00\xff")
            + client_frame(1, "hé".encode()[:2], fin=False) + client_frame(9, b"p")
            + client_frame(0, "hé".encode()[2:]) + client_frame(10, b"")
            + client_frame(2, os.urandom(70_000)[:0] + b"x" * 70_000)
            + client_frame(8, struct.pack("!H", 1000) + b"bye") + b"ignored after close")
    events, code = run(data)
    assert code is None
    assert events == ["héllo", b"\x00\xff", Ping(b"p"), "hé", Pong(b""), b"x" * 70_000, Close(1000, "bye")]
    assert run(data, [1]) == (events, None)


@pytest.mark.parametrize(("data", "code"), [
    (client_frame(1, b"hi", mask=None), 1002),                      # clients must mask
    (client_frame(1, b"hi", rsv=4), 1002),                          # RSV1 without an extension
    (client_frame(3, b"hi"), 1002),                                 # reserved data opcode
    (client_frame(11, b""), 1002),                                  # reserved control opcode
    (client_frame(9, b"x" * 126), 1002),                            # control frame > 125 bytes
    (client_frame(9, b"x", fin=False), 1002),                       # fragmented control frame
    (client_frame(0, b"x"), 1002),                                  # continuation of nothing
    (client_frame(1, b"a", fin=False) + client_frame(1, b"b"), 1002),  # new message inside one
    (client_frame(1, b"short", length_form=126), 1002),             # non-minimal length
    (client_frame(1, b"x" * 200, length_form=127), 1002),           # non-minimal length
    (bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 63) + b"abcd", 1002),  # top bit of a 64-bit length
    (client_frame(1, b"\xff"), 1007),                               # invalid UTF-8
    (client_frame(1, b"ok\xe2", fin=False) + client_frame(0, b"(\xa1"), 1007),  # across fragments
    (client_frame(8, b"\x03"), 1002),                               # 1-byte close payload
    (client_frame(8, struct.pack("!H", 1005)), 1002),               # local-only close code
    (client_frame(8, struct.pack("!H", 999)), 1002),
    (client_frame(8, struct.pack("!H", 2000)), 1002),               # reserved, unassigned
    (client_frame(8, struct.pack("!H", 1000) + b"\xff"), 1007),     # reason not UTF-8
])
def test_each_violation_closes_with_its_code(data: bytes, code: int) -> None:
    assert run(data)[1] == code
    assert run(data, [1])[1] == code
    with pytest.raises(RemoteProtocolError) as info:  # the project's own error, code as the hint
        FrameParser(BIG).feed(data)
    assert info.value.hint == code


def test_size_limit_before_the_payload_is_read() -> None:
    header_only = client_frame(2, b"x" * 5000)[:8]  # the length says 5000; no payload sent yet
    assert run(header_only, max_message=4096) == ([], 1009)
    frags = client_frame(2, b"x" * 3000, fin=False) + client_frame(0, b"x" * 1097)[:8]
    assert run(frags, max_message=4096) == ([], 1009)
    assert run(client_frame(2, b"x" * 4096), max_message=4096) == ([b"x" * 4096], None)
    assert run(client_frame(9, b"x" * 100), max_message=10) == ([Ping(b"x" * 100)], None)  # controls are apart


def test_server_frames_and_close_frame_cut() -> None:
    assert data_frame("hi") == b"\x81\x02hi"
    assert data_frame(b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert data_frame(b"x" * 70_000)[:2] == b"\x82\x7f"
    long = close_frame(1000, "é" * 100)  # 200 bytes of reason: cut to whole characters within 125
    assert len(long) <= 127 and long[4:].decode("utf-8") == "é" * 61
    assert close_frame(None) == b"\x88\x00"


frames = st.builds(
    client_frame,
    op=st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11]),
    payload=st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode),
                      st.sampled_from([b"\xe2\x82", b"\xac", struct.pack("!H", 1000), struct.pack("!H", 1006),
                                       b"x" * 130, b"y" * 70_000])),
    fin=st.booleans().map(lambda b: b or False) | st.just(True),
    rsv=st.sampled_from([0, 0, 0, 1]),
    mask=st.sampled_from([b"abcd", b"\x00\x00\x00\x00", None]) | st.binary(min_size=4, max_size=4),
)
streams = st.lists(frames, max_size=8).map(b"".join) | st.binary(max_size=200)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams, chunks=st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_any_bytes_parse_or_close_the_same_way_however_they_are_cut(data: bytes, chunks: list[int]) -> None:
    whole = run(data)  # only WsProtocolError may leave feed(): anything else fails the test
    assert run(data, [1]) == whole
    assert run(data, chunks) == whole
    _events, code = whole
    assert code in (None, 1002, 1007, 1009)


def wsproto_view(data: bytes) -> tuple[list[Any], int | None]:
    """The same bytes through wsproto's server-side connection: (events, close code of a violation)."""
    conn = Connection(ConnectionType.SERVER)
    conn.receive_data(data)
    events: list[Any] = []
    parts: list[Any] = []
    for ev in conn.events():
        if isinstance(ev, (TextMessage, BytesMessage)):
            parts.append(ev.data)
            if ev.message_finished:
                events.append("".join(parts) if isinstance(ev, TextMessage) else b"".join(parts))
                parts = []
        elif isinstance(ev, WPing):
            events.append(Ping(bytes(ev.payload)))
        elif isinstance(ev, WPong):
            events.append(Pong(bytes(ev.payload)))
        elif isinstance(ev, CloseConnection):  # a peer's close moves wsproto on; a parse failure does not
            if conn.state is ConnectionState.REMOTE_CLOSING:
                events.append(Close(int(ev.code), ev.reason or ""))
                return events, None
            return events, int(ev.code)
    return events, None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(frames, max_size=8).map(b"".join))
def test_same_events_and_codes_as_wsproto(data: bytes) -> None:
    assert run(data) == wsproto_view(data)


@given(data=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4))
def test_the_pure_python_mask_matches_the_c_one(data: bytes, mask: bytes) -> None:
    from socklab.protocols.wsframe import _py_mask, apply_mask

    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert _py_mask(data, mask) == expected == apply_mask(data, mask)
    assert _py_mask(memoryview(b"!" + data)[1:], mask) == expected
