"""The mesh's sans-I/O pieces: gossip frames, file bodies, dedupe, history, backoff, discovery datagrams."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from socklab.protocols import discovery as d
from socklab.protocols import gossip as g

ID = "0123456789abcdef"
SHA = "ab" * 32

FRAMES: list[g.Frame] = [
    g.Hello(ID, "ann", "10.77.0.2:7000"),
    g.Members((g.Member(ID, "ann", "10.77.0.2:7000"), g.Member("fedcba9876543210", "bob", "[::1]:7001"))),
    g.Members(()),
    g.Msg("9" * 32, ID, "ann", 8, ("ann",), "héllo \"world\" \\ :)"),
    g.Offer("8" * 32, ID, "ann", 3, ("ann", "bob"), "notes.txt", 1234, SHA, "10.77.0.2:7000"),
    g.Ping(3, 12.5), g.Pong(3, 12.5), g.CatchUp(100), g.CaughtUp(0), g.Want(SHA), g.Refused("no such file"),
    g.Transfer(SHA, 40123),
]


def feed(data: bytes, chunk: int | None) -> list[object]:
    conn = g.GossipConnection()
    out: list[object] = []
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        out.extend(conn.events())
    return out


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_every_frame_round_trips_whole_and_in_pieces(chunk: int | None) -> None:
    wire = b"".join(g.encode_frame(f) for f in FRAMES)
    assert feed(wire, chunk) == [*FRAMES, g.EndOfStream()]


def test_eof_inside_a_frame_is_the_peers_fault_and_blank_lines_are_skipped() -> None:
    assert feed(b"\n\r\n  \n" * 50_000 + g.encode_frame(g.CatchUp(1)), None) == [g.CatchUp(1), g.EndOfStream()]
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        feed(b'{"t":"ping"', None)


@pytest.mark.parametrize("line", [
    b"nope", b"[]", b'{"t":"what"}', b'{"t":"hello","id":"XYZ","name":"a","listen":"h:1"}',
    b'{"t":"msg","mid":"0123456789","origin":"0123456789","from":"a","hops":300,"path":[],"text":"x"}',
    b'{"t":"msg","mid":"0123456789","origin":"0123456789","from":"a","hops":true,"path":[],"text":"x"}',
    b'{"t":"msg","mid":"0123456789","origin":"0123456789","from":"a","hops":1,"path":[1],"text":"x"}',
    b'{"t":"want","sha256":"abc"}', b'{"t":"ping","seq":-1,"ts":1}', b'{"t":"ping","seq":1,"ts":NaN}',
    b'{"t":"transfer","sha256":"' + SHA.encode() + b'","port":0}',
])
def test_malformed_frames_are_remote_errors(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        feed(line + b"\n", None)


def test_an_oversized_frame_is_refused_before_its_newline() -> None:
    conn = g.GossipConnection(max_frame=100)
    conn.receive_data(b"x" * 200)
    with pytest.raises(RemoteProtocolError, match="longer than 100") as info:
        conn.next_event()
    assert info.value.hint == 413
    with pytest.raises(RemoteProtocolError):  # the connection stays failed
        conn.next_event()


def test_sending_an_invalid_frame_is_our_error() -> None:
    with pytest.raises(LocalProtocolError):
        g.encode_frame(g.Want("not-a-sha"))
    with pytest.raises(LocalProtocolError):
        g.encode_frame(g.Msg("short", ID, "ann", 1, (), "x"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_parses_or_raises_protocol_error_and_both_feeds_agree(data: bytes) -> None:
    results = []
    for chunk in (None, 1):
        try:
            results.append(("ok", feed(data, chunk)))
        except ProtocolError as exc:
            results.append(("error", type(exc).__name__))
    assert results[0] == results[1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(FRAMES), max_size=8), st.integers(min_value=1, max_value=50))
def test_frame_sequences_survive_any_split(frames: list[g.Frame], chunk: int) -> None:
    wire = b"".join(g.encode_frame(f) for f in frames)
    assert feed(wire, chunk) == [*frames, g.EndOfStream()]


def test_a_mebibyte_of_small_frames_decodes_without_quadratic_copying() -> None:
    wire = g.encode_frame(g.Ping(1, 1.0)) * ((1 << 20) // 28)
    conn = g.GossipConnection()
    conn.receive_data(wire)  # one big read holding ~37,000 frames
    assert sum(1 for _ in conn.events()) == (1 << 20) // 28


def test_a_mebibyte_of_random_bytes_is_handled_fast() -> None:
    import random

    data = random.Random(7).randbytes(1 << 20).replace(b"\n", b" ")
    conn = g.GossipConnection(max_frame=2 << 20)
    for i in range(0, len(data), 4096):
        conn.receive_data(data[i:i + 4096])
        assert conn.next_event() is None  # no newline: one growing frame, scanned once
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"\n")
        conn.next_event()


# ---- flooding logic -------------------------------------------------------------------------------
def test_forward_decrements_hops_appends_the_path_and_stops_at_the_limit() -> None:
    m = g.Msg("9" * 32, ID, "ann", 3, ("ann",), "x")
    m2 = g.forward(m, "bob")
    assert m2 is not None and m2.hops == 2 and m2.path == ("ann", "bob")
    m3 = g.forward(m2, "cat")
    assert m3 is not None and m3.hops == 1
    assert g.forward(m3, "dan") is None


def test_seen_cache_drops_repeats_evicts_the_oldest_and_forgets_old_ids() -> None:
    cache = g.SeenCache(capacity=3)
    assert [cache.first_time(x, 0.0) for x in "abca"] == [True, True, True, False]
    assert cache.duplicates == 1
    cache.first_time("d", 0.0)  # "b" is now the least recently seen: evicted
    assert "b" not in cache and "a" in cache and len(cache) == 3
    aged = g.SeenCache(capacity=10, max_age=5.0)
    aged.first_time("x", 100.0)
    assert not aged.first_time("x", 104.0)  # seen again: remembered until 109
    assert not aged.first_time("x", 108.0)
    assert aged.first_time("x", 113.5)  # not seen for more than 5 s: forgotten


def test_history_is_a_bounded_ring() -> None:
    h = g.History(3)
    frames = [g.Msg(f"{i:032x}", ID, "ann", 1, ("ann",), str(i)) for i in range(5)]
    for f in frames:
        h.add(f)
    assert h.recent(10) == frames[2:] and h.recent(1) == frames[4:] and h.recent(0) == []


def test_backoff_doubles_caps_and_jitters_within_half_to_full() -> None:
    assert g.backoff_delay(0, base=0.5, cap=10, jitter=0.0) == 0.25
    assert g.backoff_delay(0, base=0.5, cap=10, jitter=1.0) == 0.5
    assert g.backoff_delay(3, base=0.5, cap=10, jitter=1.0) == 4.0
    assert g.backoff_delay(50, base=0.5, cap=10, jitter=0.5) == 7.5


# ---- discovery datagrams --------------------------------------------------------------------------
def test_announces_round_trip_and_our_own_is_ignored() -> None:
    me = d.Announce(ID, "ann", "10.77.0.2:7000")
    logic = d.Discovery(me, ("239.255.77.77", 7799))
    [(data, addr)] = logic.announce()
    assert addr == ("239.255.77.77", 7799) and data.startswith(d.MAGIC)
    assert logic.datagram_received(data, ("10.77.0.2", 7799)) is None
    other = d.encode_announce(d.Announce("fedcba9876543210", "bob", "10.77.0.3:7000"))
    assert logic.datagram_received(other, ("10.77.0.3", 7799)) == d.Announce("fedcba9876543210", "bob",
                                                                             "10.77.0.3:7000")


def test_a_wildcard_listen_address_becomes_the_senders_address() -> None:
    logic = d.Discovery(d.Announce(ID, "ann", "0.0.0.0:1"))
    data = d.encode_announce(d.Announce("fedcba9876543210", "bob", "0.0.0.0:7000"))
    assert logic.datagram_received(data, ("10.77.0.9", 7799)).listen == "10.77.0.9:7000"  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_datagrams_are_ignored_and_counted(data: bytes) -> None:
    logic = d.Discovery(d.Announce(ID, "ann", "h:1"))
    result = logic.datagram_received(d.MAGIC + data, ("10.0.0.1", 1))
    assert result is None or isinstance(result, d.Announce)
    with pytest.raises(RemoteProtocolError):
        d.decode_announce(b"HELLO" + data)
