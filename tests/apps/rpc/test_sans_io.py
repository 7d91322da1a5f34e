"""The sans-I/O layers: framing and JSON-RPC parsing/dispatch decisions, with hypothesis.

The h11 invariant: any input either parses or raises RemoteProtocolError - never anything else -
and feeding it whole or byte by byte gives the same events.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import LocalProtocolError, RemoteProtocolError
from socklab.protocols import jsonrpc as j
from socklab.protocols.framing import CONTENT_LENGTH, NDJSON, EndOfStream, Frame, FrameDecoder, encode_frame


def feed(chunks: list[bytes], **kw: Any) -> tuple[list[Any], str | None]:
    dec = FrameDecoder(**kw)
    events: list[Any] = []
    try:
        for c in [*chunks, b""]:
            dec.receive_data(c)
            while (ev := dec.next_event()) is not None:
                events.append(ev)
    except RemoteProtocolError as exc:
        events.append(("error", exc.hint))
    return events, dec.mode


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# ---- framing ---------------------------------------------------------------------------------
def test_detects_ndjson_and_content_length() -> None:
    events, mode = feed([b'  {"a":1}\n\n[2]\r\n'])
    assert mode == NDJSON and events == [Frame(b'{"a":1}'), Frame(b"[2]"), EndOfStream()]
    events, mode = feed([b"Content-Length: 7\r\nContent-Type: application/json\r\n\r\n{\"a\":1}"])
    assert mode == CONTENT_LENGTH and events == [Frame(b'{"a":1}'), EndOfStream()]


def test_last_line_without_newline_is_a_message() -> None:
    assert feed([b'{"a":1}'])[0] == [Frame(b'{"a":1}'), EndOfStream()]


@pytest.mark.parametrize("block,hint", [
    (b"Content-Length: x\r\n\r\n", -32700),
    (b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n", -32700),
    (b"Content-Type: a\r\n\r\n", -32700),
    (b"Content-Length: 99999999\r\n\r\n", -32600),
    (b"Content-Type: " + b"X" * 5000, -32700),
    (b"content-length: 2\r\nbad header\r\n\r\n{}", -32700),
])
def test_bad_headers(block: bytes, hint: int) -> None:
    assert feed([block], max_frame=1000)[0][-1] == ("error", hint)
    assert feed(bytewise(block), max_frame=1000)[0][-1] == ("error", hint)


def test_oversize_line() -> None:
    assert feed([b"[" + b"1" * 2000 + b"]\n"], max_frame=1000)[0] == [("error", -32600)]
    assert feed([b"[" + b"1" * 2000], max_frame=1000)[0] == [("error", -32600)]


def test_encode_frame() -> None:
    assert encode_frame(b"{}") == b"{}\n"
    assert encode_frame(b"{}", CONTENT_LENGTH) == b"Content-Length: 2\r\n\r\n{}"
    with pytest.raises(LocalProtocolError):
        encode_frame(b"{\n}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@given(st.lists(json_values, max_size=6), st.sampled_from([NDJSON, CONTENT_LENGTH]))
@settings(max_examples=150, deadline=None)
def test_framing_roundtrip_whole_and_bytewise(values: list[Any], mode: str) -> None:
    payloads = [json.dumps(v).encode() for v in values]
    stream = b"".join(encode_frame(p, mode) for p in payloads)
    whole, _ = feed([stream])
    one, _ = feed(bytewise(stream))
    frames = [e.data for e in whole if isinstance(e, Frame)]
    assert whole == one
    assert [json.loads(f) for f in frames] == values


@given(st.binary(max_size=300), st.integers(1, 50))
@settings(max_examples=300, deadline=None)
def test_framing_garbage_only_raises_protocol_errors(data: bytes, cut: int) -> None:
    whole, _ = feed([data], max_frame=100, max_header=64)
    chunks = [data[i:i + cut] for i in range(0, len(data), cut)]
    assert feed(chunks, max_frame=100, max_header=64)[0] == whole
    assert feed(bytewise(data), max_frame=100, max_header=64)[0] == whole


def test_framing_is_linear() -> None:
    # 1 MiB without a newline, fed in 1 KiB pieces: the scan never restarts from the beginning
    dec = FrameDecoder(max_frame=2 * 1024 * 1024)
    piece = b"[" + b"1," * 511 + b"1"
    for _ in range(1024):
        dec.receive_data(piece)
    assert dec.next_event() is None and dec.buffered == 1024 * len(piece)


# ---- JSON-RPC ------------------------------------------------------------------------------------
def test_safe_loads_limits() -> None:
    limits = j.Limits(max_depth=3, max_number_length=5)
    assert j.safe_loads(b'[[["]]]]]"]]]', limits) == [[["]]]]]"]]]
    for bad in (b"[[[[1]]]]", b"123456", b"1.23456", b'{"a":{"b":{"c":{}}}}', b"NaN", b"\xff"):
        with pytest.raises(RemoteProtocolError) as info:
            j.safe_loads(bad, limits)
        assert info.value.hint == j.PARSE_ERROR


def test_bind_params() -> None:
    def f(a: int, b: int = 2, *, c: int = 3) -> None: ...
    sig = inspect.signature(f)
    assert j.bind_params(sig, [1]) == ((1,), {})
    assert j.bind_params(sig, {"a": 1, "c": 4}) == ((), {"a": 1, "c": 4})
    for bad in ([], [1, 2, 3], {"b": 1}, {"a": 1, "z": 1}):
        with pytest.raises(RemoteProtocolError) as info:
            j.bind_params(sig, bad)
        assert info.value.hint == j.INVALID_PARAMS


def test_reply_collector_notifications_only_sends_nothing() -> None:
    inc = j.parse_incoming(b'[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"}]')
    col = j.ReplyCollector(inc)
    col.add(0, None)
    col.add(1, None)
    assert col.done and col.payload() is None


def test_unserializable_result_is_an_internal_error() -> None:
    out = json.loads(j.encode(j.Response(1, object())))
    assert out["error"]["code"] == j.INTERNAL_ERROR and out["id"] == 1


def test_parse_replies() -> None:
    got = j.parse_replies(b'[{"jsonrpc":"2.0","result":1,"id":1},'
                          b'{"jsonrpc":"2.0","error":{"code":-1,"message":"m","data":[1]},"id":"x"}]')
    assert got[0] == j.Response(1, 1) and got[1].id == "x" and isinstance(got[1], j.ErrorResponse)
    assert got[1].error.data == [1]
    for bad in (b"1", b'{"jsonrpc":"2.0","id":1}', b'{"jsonrpc":"2.0","error":{"code":"x"},"id":1}'):
        with pytest.raises(RemoteProtocolError):
            j.parse_replies(bad)


requests_st = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", 2])},
    optional={"method": st.sampled_from(["sum", "nope", 1, None]),
              "params": st.one_of(st.lists(st.integers(-5, 5), max_size=3), st.text(max_size=3),
                                  st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2)),
              "id": st.one_of(st.integers(), st.text(max_size=3), st.none(), st.booleans(), st.floats(0, 1))})


@given(st.one_of(requests_st, st.lists(st.one_of(requests_st, json_values), max_size=5), json_values))
@settings(max_examples=300, deadline=None)
def test_dispatch_decisions_are_total_and_spec_shaped(message: Any) -> None:
    data = json.dumps(message).encode()
    inc = j.parse_incoming(data)
    col = j.ReplyCollector(inc)
    for slot, item in enumerate(inc.items):
        if isinstance(item, j.Request):
            col.add(slot, None if item.is_notification else j.error_response(item.id, j.METHOD_NOT_FOUND))
    payload = col.payload()
    if payload is None:  # only notifications: nothing to send, and that needs a non-empty batch/object
        assert all(isinstance(i, j.Request) and i.is_notification for i in inc.items)
        return
    out = json.loads(payload)
    assert isinstance(out, list) == inc.batch
    for reply in out if isinstance(out, list) else [out]:
        assert reply["jsonrpc"] == "2.0" and "error" in reply and set(reply) == {"jsonrpc", "error", "id"}


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_parse_incoming_never_raises_on_garbage(data: bytes) -> None:
    inc = j.parse_incoming(data)
    assert inc.items


def test_huge_inputs_are_refused_fast_without_recursion() -> None:
    # no timing assertion: the limits refuse these before json.loads recurses or int() goes quadratic
    for data in (b"[" * 1_000_000, b'{"a":' * 200_000, b"9" * 1_000_000):
        inc = j.parse_incoming(data, j.Limits(max_message_size=2_000_000))
        assert inc.items[0].error.code == j.PARSE_ERROR  # type: ignore[union-attr]


def test_one_mebibyte_of_random_input() -> None:
    import random

    data = random.Random(8).randbytes(1024 * 1024)
    for mode in (None, CONTENT_LENGTH):
        events, _ = feed([data[i:i + 4096] for i in range(0, len(data), 4096)], max_frame=2 * 1024 * 1024,
                         mode=mode)
        for ev in events:
            if isinstance(ev, Frame):
                assert j.parse_incoming(ev.data, j.Limits(max_message_size=2 * 1024 * 1024)).items
    assert j.parse_incoming(data, j.Limits(max_message_size=2 * 1024 * 1024)).items
