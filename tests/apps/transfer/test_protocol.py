"""The native transfer wire format without sockets: a whole session fed whole and byte by byte,
name confinement, hashes, and the fuzzing invariant (only ProtocolError escapes)."""

from __future__ import annotations

import json
import os

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from socklab.protocols import transfer as tp


def session_segments(payload: bytes, offset: int = 0, chunk: int = 4096) -> tuple[list[bytes], list[tp.Event]]:
    """What a sender puts on the wire for one file, turn by turn (it waits for the receiver
    between turns), and the events a receiver must see."""
    s = tp.TransferConnection("sender")
    h = tp.FileHasher(chunk)
    h.update(payload)
    trailer = tp.Trailer(h.hexdigest(), h.final_chunks())
    entry = tp.Entry("dir/f.bin", "file", len(payload), 0o640, 1700000000.5)
    hello = s.send(tp.Hello(chunk_size=chunk))
    s.state = "idle"  # as if the receiver's HELLO came
    ent = s.send(entry)
    s.state = "idle"
    data = s.send(tp.Start(offset)) + payload[offset:] + s.send(trailer)
    s.state = "idle"
    done = s.send(tp.Done())
    events: list[tp.Event] = [tp.Hello(chunk_size=chunk), entry, tp.Start(offset)]
    if payload[offset:]:
        events.append(tp.RawData(payload[offset:]))
    events += [trailer, tp.Done()]
    return [hello, ent, data, done], events


def session_bytes(payload: bytes, offset: int = 0) -> tuple[bytes, list[tp.Event]]:
    segments, events = session_segments(payload, offset)
    return b"".join(segments), events


def feed(segments: list[bytes], step: int) -> list[tp.Event]:
    r = tp.TransferConnection("receiver")
    events: list[tp.Event] = []
    for wire in segments:
        for i in range(0, len(wire), step or len(wire)):
            r.receive_data(wire[i:i + (step or len(wire))])
            while (ev := r.next_event()) is not None:
                events.append(ev)
        # the receiver's turn
        if isinstance(events[-1], tp.Entry):
            r.send(tp.Offer(0, ()))
        if isinstance(events[-1], tp.Trailer):
            r.send(tp.Result(True))
    return events


def merge_raw(events: list[tp.Event]) -> list[tp.Event]:
    out: list[tp.Event] = []
    for ev in events:
        if isinstance(ev, tp.RawData) and out and isinstance(out[-1], tp.RawData):
            out[-1] = tp.RawData(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 50_000])
def test_session_whole_and_byte_by_byte(size: int) -> None:
    payload = os.urandom(size)
    segments, expected = session_segments(payload)
    assert merge_raw(feed(segments, 0)) == expected
    assert merge_raw(feed(segments, 1)) == expected
    assert merge_raw(feed(segments, 977)) == expected


def test_resume_offset_and_raw_accounting() -> None:
    payload = os.urandom(10_000)
    segments, expected = session_segments(payload, offset=8192)
    assert merge_raw(feed(segments, 3)) == expected
    assert expected[3] == tp.RawData(payload[8192:])


def test_zero_copy_path_reports_raw_bytes() -> None:
    r = tp.TransferConnection("receiver")
    r.receive_data(tp.TransferConnection("sender").send(tp.Hello()))
    s = tp.TransferConnection("sender", state="idle")
    r.receive_data(s.send(tp.Entry("f", "file", 100)))
    assert isinstance(r.next_event(), tp.Hello) and isinstance(r.next_event(), tp.Entry)
    r.send(tp.Offer())
    r.receive_data(s.send(tp.Start(0)))
    assert r.next_event() == tp.Start(0) and r.raw_remaining == 100
    r.raw_received(60)  # the adapter recv_into'd its own buffer
    r.raw_received(40)
    with pytest.raises(LocalProtocolError):
        r.raw_received(1)
    r.receive_data(s.send(tp.Trailer("x", ())))
    assert r.next_event() == tp.Trailer("x", ())


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "a//b", "./a", "a/.", "a\\..\\b",
                                  "nul\0x", ".."])
def test_check_name_refuses_escapes(name: str) -> None:
    with pytest.raises(RemoteProtocolError):
        tp.check_name(name)


def test_check_name_accepts_plain_relative_names() -> None:
    assert tp.check_name("a/b/c.txt") == ["a", "b", "c.txt"]
    assert tp.check_name(".hidden") == [".hidden"]


def test_hasher_chunks_and_whole() -> None:
    data = os.urandom(10_000)
    h = tp.FileHasher(4096)
    for i in range(0, len(data), 333):
        h.update(data[i:i + 333])
    chunks = [data[:4096], data[4096:8192], data[8192:]]
    assert h.final_digests() == [blake3(c).digest() for c in chunks]
    assert h.final_chunks() == tuple(blake3(c).digest()[:16].hex() for c in chunks)
    # the root: BLAKE3 over size, chunk size and the full chunk digests (an independent recomputation)
    head = b"socklab-blake3-tree\0" + (10_000).to_bytes(8, "big") + (4096).to_bytes(8, "big")
    assert h.hexdigest() == blake3(head + b"".join(blake3(c).digest() for c in chunks)).hexdigest()
    # fed whole, or with the first chunk's digest computed elsewhere (a resumed prefix): same result
    whole = tp.FileHasher(4096)
    whole.update(data)
    resumed = tp.FileHasher(4096)
    resumed.add_chunk(tp.chunk_digest(data[:4096]))
    resumed.update(data[4096:])
    assert whole.hexdigest() == resumed.hexdigest() == h.hexdigest()
    with pytest.raises(LocalProtocolError):
        resumed.add_chunk(b"x" * 32)  # in the middle of a chunk


def test_root_depends_on_every_byte_and_the_length() -> None:
    data = bytearray(os.urandom(9000))
    base = tp.FileHasher(4096)
    base.update(data)
    data[5000] ^= 1
    flipped = tp.FileHasher(4096)
    flipped.update(data)
    assert flipped.hexdigest() != base.hexdigest()
    assert flipped.final_chunks()[0] == base.final_chunks()[0] and flipped.final_chunks()[1] != base.final_chunks()[1]
    empty, zero = tp.FileHasher(4096), tp.FileHasher(4096)
    zero.update(b"\0" * 4096)
    assert empty.hexdigest() != zero.hexdigest()


@pytest.mark.parametrize("hello", [
    {"magic": tp.MAGIC, "version": 1, "chunk_size": 4096},  # a version-1 peer (SHA-256 + CRC-32)
    {"magic": tp.MAGIC, "version": 2, "chunk_size": 4096, "hash": "sha256"},
    {"magic": tp.MAGIC, "version": 2, "chunk_size": 4096},
])
def test_hello_negotiates_the_hash(hello: dict[str, object]) -> None:
    body = json.dumps(hello).encode()
    r = tp.TransferConnection("receiver")
    with pytest.raises(RemoteProtocolError, match="blake3-tree"):
        r.receive_data(b"H" + len(body).to_bytes(4, "big") + body)
    assert json.loads(tp.TransferConnection("sender").send(tp.Hello())[5:])["hash"] == "blake3-tree"


def test_offer_and_trailer_digests_round_trip_and_are_checked() -> None:
    digests = ("ab" * 16, "0f" * 16)
    s = tp.TransferConnection("sender")
    s.receive_data(tp.TransferConnection("receiver").send(tp.Hello()))
    assert s.next_event() == tp.Hello()
    s.send(tp.Entry("f", "file", 10))
    r = tp.TransferConnection("receiver", state="offer-sent")
    s.receive_data(r.send(tp.Offer(2, digests)))
    assert s.next_event() == tp.Offer(2, digests)
    for bad in ({"have": 2, "chunks": "ab" * 16}, {"have": 1, "chunks": "zz" * 16}, {"have": 1, "chunks": 5},
                {"have": 1, "chunks": "AB" * 16}):
        s = tp.TransferConnection("sender", state="answer")
        body = json.dumps(bad).encode()
        with pytest.raises(RemoteProtocolError, match="malformed offer"):
            s.receive_data(b"O" + len(body).to_bytes(4, "big") + body)


def test_out_of_order_and_bad_frames() -> None:
    r = tp.TransferConnection("receiver")
    with pytest.raises(RemoteProtocolError, match="unexpected entry"):
        r.receive_data(tp.TransferConnection("sender", state="idle").send(tp.Entry("f")))
    r = tp.TransferConnection("receiver")
    with pytest.raises(RemoteProtocolError, match="magic"):
        r.receive_data(b"H\x00\x00\x00\x02{}")
    with pytest.raises(RemoteProtocolError, match="unknown frame"):
        tp.TransferConnection("receiver").receive_data(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        tp.TransferConnection("receiver", max_frame=10).receive_data(b"H\x00\x01\x00\x00")
    with pytest.raises(LocalProtocolError):
        tp.TransferConnection("sender").send(tp.Done())


def test_eof_mid_file_is_an_error_but_between_entries_is_not() -> None:
    payload = os.urandom(5000)
    wire, _ = session_bytes(payload)
    r = tp.TransferConnection("receiver")
    r.receive_data(wire[:200])
    with pytest.raises(RemoteProtocolError, match="closed in the middle"):
        r.receive_data(b"")
    r = tp.TransferConnection("receiver")
    r.receive_data(tp.TransferConnection("sender").send(tp.Hello()))
    r.receive_data(b"")


def test_error_frame_is_an_event_in_any_state() -> None:
    s = tp.TransferConnection("sender", state="sending")
    s.receive_data(tp.TransferConnection("receiver").send(tp.ErrorFrame("disk full", "disk")))
    assert s.next_event() == tp.ErrorFrame("disk full", "disk") and s.state == "closed"


def _events_or_error(setup: list[bytes], wire: bytes, step: int) -> tuple[list[tp.Event], bool]:
    r = tp.TransferConnection("receiver")
    for seg in setup:
        r.receive_data(seg)
        while r.next_event() is not None:
            pass
    r.send(tp.Offer())
    events: list[tp.Event] = []
    try:
        for i in range(0, len(wire), step):
            r.receive_data(wire[i:i + step])
            while (ev := r.next_event()) is not None:
                events.append(ev)
    except ProtocolError:
        return merge_raw(events), True
    return merge_raw(events), False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400), st.binary(max_size=8))
def test_fuzz_only_protocol_errors_and_same_events_whole_or_bytewise(junk: bytes, cut: int, splice: bytes) -> None:
    segments, _ = session_segments(os.urandom(64))
    wire = segments[2] + segments[3]
    mutated = wire[:cut] + splice + wire[cut + len(splice):] + junk
    whole = _events_or_error(segments[:2], mutated, max(1, len(mutated)))
    bytewise = _events_or_error(segments[:2], mutated, 1)
    assert whole[1] == bytewise[1]
    if not whole[1]:
        assert whole[0] == bytewise[0]


def test_a_megabyte_of_garbage_is_rejected_fast() -> None:
    r = tp.TransferConnection("receiver")
    with pytest.raises(RemoteProtocolError):
        r.receive_data(os.urandom(1 << 20))


# ---- what a receiver may take from an ENTRY (issue 14) ------------------------------------------------
def entry_frame(obj: dict[str, object]) -> bytes:
    body = json.dumps(obj).encode()  # NaN/Infinity written as Python's json does
    return b"E" + len(body).to_bytes(4, "big") + body


def receiver_after_hello() -> tp.TransferConnection:
    r = tp.TransferConnection("receiver")
    r.receive_data(tp.TransferConnection("sender").send(tp.Hello()))
    assert isinstance(r.next_event(), tp.Hello)
    return r


def test_mtime_range_and_types() -> None:
    assert tp.check_mtime(None) is None
    assert tp.check_mtime(tp.MTIME_MIN) == tp.MTIME_MIN and tp.check_mtime(tp.MTIME_MAX) == tp.MTIME_MAX
    assert tp.check_mtime(1_700_000_000.25) == 1_700_000_000.25
    import datetime
    for t in (tp.MTIME_MIN, tp.MTIME_MAX):  # the range is what datetime and os.utime take
        datetime.datetime.fromtimestamp(t, datetime.UTC)
    for bad in (float("nan"), float("inf"), -float("inf"), 1e300, -1e18, tp.MTIME_MAX + 1, tp.MTIME_MIN - 0.5,
                10**400, "1", True, None.__class__, [1]):
        with pytest.raises(ValueError, match="mtime"):
            tp.check_mtime(bad)


def test_a_bad_entry_is_an_event_and_the_session_goes_on() -> None:
    s = tp.TransferConnection("sender", state="idle")
    turns = [entry_frame({"name": "a", "kind": "file", "size": 1, "mtime": float("nan")}),
             entry_frame({"name": "b", "kind": "dir", "mode": 0o17777}),
             s.send(tp.Entry("c", "file", 0, 0o644, 5.0))]
    for step in (0, 1):
        r = receiver_after_hello()
        events: list[tp.Event] = []
        for wire in turns:  # the sender waits for the receiver's answer between entries
            for i in range(0, len(wire), step or len(wire)):
                r.receive_data(wire[i:i + (step or len(wire))])
            while (ev := r.next_event()) is not None:
                events.append(ev)
                if isinstance(ev, tp.BadEntry):
                    assert r.state == "result-pending"
                    r.send(tp.Result(False, ev.reason, "invalid"))  # the receiver's answer; then the next
        assert [type(e) for e in events] == [tp.BadEntry, tp.BadEntry, tp.Entry], events
        assert events[0] == tp.BadEntry("a", "file", "mtime nan is not a finite number")
        assert isinstance(events[1], tp.BadEntry) and "mode" in events[1].reason
        assert events[2] == tp.Entry("c", "file", 0, 0o644, 5.0) and r.state == "offer-sent"


_JSONISH = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                     st.lists(st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(mtime=_JSONISH, mode=_JSONISH, size=_JSONISH, kind=st.sampled_from(["file", "dir", "stream", "x", 3]),
       name=st.one_of(st.text(max_size=8), st.integers()))
def test_fuzz_entry_header_whole_and_bytewise(mtime: object, mode: object, size: object, kind: object,
                                              name: object) -> None:
    wire = entry_frame({"name": name, "kind": kind, "size": size, "mode": mode, "mtime": mtime})
    outcomes: list[tuple[object, str | None]] = []
    for step in (len(wire), 1):
        r = receiver_after_hello()
        try:
            for i in range(0, len(wire), step):
                r.receive_data(wire[i:i + step])
            outcomes.append((r.next_event(), r.state))
        except ProtocolError as exc:  # nothing else may escape
            outcomes.append((type(exc), None))
    assert outcomes[0] == outcomes[1]
    event, state = outcomes[0]
    if isinstance(event, tp.Entry):
        assert event.mtime is None or tp.MTIME_MIN <= event.mtime <= tp.MTIME_MAX
        assert 0 <= event.mode <= 0o7777
        assert state in ("offer-sent", "result-pending")
    elif isinstance(event, tp.BadEntry):
        assert state == "result-pending" and event.reason


def test_offer_present_round_trip_and_checks() -> None:
    r = tp.TransferConnection("receiver", state="offer-sent")
    wire = r.send(tp.Offer(0, (), present=True))
    assert json.loads(wire[5:]) == {"have": 0, "chunks": "", "present": True}
    assert "present" not in json.loads(tp.TransferConnection("receiver", state="offer-sent").send(tp.Offer())[5:])
    s = tp.TransferConnection("sender", state="answer")
    s.receive_data(wire)
    assert s.next_event() == tp.Offer(0, (), present=True)
    for bad in ({"have": 0, "chunks": "", "present": "yes"}, {"have": 1, "chunks": "ab" * 16, "present": True}):
        s = tp.TransferConnection("sender", state="answer")
        body = json.dumps(bad).encode()
        with pytest.raises(RemoteProtocolError, match="malformed offer"):
            s.receive_data(b"O" + len(body).to_bytes(4, "big") + body)
