"""BoundaryNotes: exact notes on how recv() cut a declared framing's messages (issue 15 item 7).

The notes are checked against a reference computed from the message spans: for each recv()'s
byte range, which messages it touched and whether it began inside one. Fed whole, byte by byte
and cut at random points.
"""

from __future__ import annotations

import itertools
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socklab.core.trace import BoundaryNotes

bodies = st.lists(st.binary(max_size=20), min_size=1, max_size=8)


def _encode(framing: str, messages: list[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    stream, spans = b"", []
    for body in messages:
        msg = body.replace(b"\n", b"") + b"\n" if framing == "lines" else struct.pack(">I", len(body)) + body
        spans.append((len(stream), len(stream) + len(msg)))
        stream += msg
    return stream, spans


def _expected(spans: list[tuple[int, int]], a: int, b: int) -> tuple[bool, int]:
    continued = any(start < a < end for start, end in spans)
    touched = sum(1 for start, end in spans if start < b and a < end)
    return continued, touched


def _check(framing: str, stream: bytes, spans: list[tuple[int, int]], cuts: list[int]) -> None:
    notes = BoundaryNotes(framing)
    points = [0, *sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]
    for a, b in itertools.pairwise(points):
        got = notes.feed(stream[a:b])
        continued, touched = _expected(spans, a, b)
        assert any("continues a" in n for n in got) == continued, (a, b, got)
        merged = [n for n in got if "TCP merged" in n]
        if touched > 1:
            assert len(merged) == 1 and re.search(rf"held {touched} ", merged[0]), (a, b, got)
        else:
            assert merged == [], (a, b, got)


@pytest.mark.parametrize("framing", ["lines", "u32-length"])
@given(messages=bodies, cuts=st.lists(st.integers(0, 400), max_size=10))
def test_notes_match_the_message_spans(framing: str, messages: list[bytes], cuts: list[int]) -> None:
    stream, spans = _encode(framing, messages)
    _check(framing, stream, spans, cuts)


@pytest.mark.parametrize("framing", ["lines", "u32-length"])
@given(messages=bodies)
def test_whole_and_byte_by_byte(framing: str, messages: list[bytes]) -> None:
    stream, spans = _encode(framing, messages)
    _check(framing, stream, spans, [])  # one recv() with everything
    _check(framing, stream, spans, list(range(len(stream))))  # one byte per recv()


def test_an_unknown_framing_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown framing"):
        BoundaryNotes("xml")


def test_two_lines_in_one_read_and_a_split_one() -> None:
    notes = BoundaryNotes("lines")
    assert notes.feed(b"one\ntwo\n") == [
        "this recv() held 2 lines: TCP merged several messages into one read; a protocol must find "
        "message boundaries itself"]
    assert notes.feed(b"thr") == []
    assert notes.feed(b"ee\n") == ["this recv() continues a line begun in an earlier recv(): one message "
                                   "split across reads"]
