"""The sans-I/O HTTP pieces: the strict request parser, path confinement, Range - fed whole and byte by byte."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import ProtocolError, RemoteProtocolError
from socklab.protocols.http1 import Http1Parser, RequestComplete, RequestHead
from socklab.protocols.http_paths import parse_target
from socklab.protocols.ranges import Unsatisfiable, parse_range

BACKENDS = ["httptools", "h11"]


def events(data: bytes, *, chunk: int | None = None, eof: bool = False, backend: str = "auto",
           **limits: int) -> list[RequestHead | RequestComplete]:
    p = Http1Parser(backend=backend, **limits)
    out: list[RequestHead | RequestComplete] = []
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    if eof:
        pieces.append(b"")
    for piece in pieces:
        p.receive_data(piece)
        while (ev := p.next_event()) is not None:
            out.append(ev)
            if isinstance(ev, RequestComplete) and ev.head.upgrade:
                return out
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipelined_requests_with_bodies(backend: str) -> None:
    data = (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /c HTTP/1.0\r\n\r\n")
    for chunk in (None, 1, 7):
        evs = [e for e in events(data, chunk=chunk, backend=backend) if isinstance(e, RequestComplete)]
        assert [(e.head.target, e.body) for e in evs] == [(b"/a", b"hello"), (b"/b", b"abc"), (b"/c", b"")]
        assert [e.head.keep_alive for e in evs] == [True, True, False]


def test_expect_continue_and_upgrade_leftover() -> None:
    evs = events(b"POST /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert isinstance(evs[0], RequestHead) and evs[0].expects_continue
    p = Http1Parser()
    p.receive_data(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00")
    ev = p.next_event()
    assert isinstance(ev, RequestComplete) and ev.head.upgrade == b"websocket"
    assert p.take_leftover() == b"\x81\x00"


# Each one: refused with this status, never parsed as something else (request smuggling corpus).
INVALID = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\nX: y\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Padding: \x01\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\n\tX: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host (RFC 9112 §3.2)
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
    (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX\x7f: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab", 400),  # body on GET
    (b"HEAD / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS ClientHello
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n" + b"a" * 1100000, 413),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),  # llhttp said 400, h11 505: now both 505
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400),
]


@pytest.mark.parametrize("data,status", INVALID, ids=[str(i) for i in range(len(INVALID))])
@pytest.mark.parametrize("chunk", [None, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_corpus(data: bytes, status: int, chunk: int | None, backend: str) -> None:
    if chunk == 1 and len(data) > 20000:
        chunk = 4096  # same path, fewer calls
    with pytest.raises(RemoteProtocolError) as info:
        events(data, chunk=chunk, backend=backend)
    assert info.value.hint == status


def test_truncated_head_or_body_at_eof_is_an_error() -> None:
    with pytest.raises(RemoteProtocolError):
        events(b"GET / HTTP/1.1\r\nHo", eof=True)
    with pytest.raises(RemoteProtocolError):
        events(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab", eof=True)
    assert events(b"", eof=True) == []


def _feed(data: bytes, chunk: int | None, backend: str = "auto") -> tuple[str, object]:
    try:
        evs = events(data, chunk=chunk, eof=True, backend=backend, max_request_line=200, max_head_size=1000,
                     max_body=500)
    except ProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError) and exc.hint is not None and 400 <= exc.hint < 600
        return ("error", None)
    return ("ok", evs)


request_like = st.builds(
    lambda m, t, hdrs, body: m + b" " + t + b" HTTP/1.1\r\n" + b"".join(hdrs) + b"\r\n" + body,
    st.sampled_from([b"GET", b"POST", b"HEAD", b"G T", b""]),
    st.binary(max_size=40),
    st.lists(st.sampled_from([b"Host: a\r\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
                              b"X: y\r\n", b" fold\r\n", b"\n", b"Connection: close\r\n", b"Bad\r\n"]),
             max_size=6),
    st.binary(max_size=30))


@settings(max_examples=int(os.environ.get("SOCKLAB_FUZZ_EXAMPLES", "300")), deadline=None)
@given(st.one_of(request_like, st.binary(max_size=300)))
def test_fuzz_whole_and_byte_by_byte(data: bytes) -> None:
    """Both feeds give the same events, and both backends agree (accept the same requests, same events)."""
    whole = _feed(data, None, "httptools")
    assert _feed(data, 1, "httptools") == whole
    assert _feed(data, None, "h11") == whole
    assert _feed(data, 1, "h11") == whole


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_fuzz_request_path_parse_or_4xx(raw: bytes) -> None:
    """Any request-target: parsed into safe segments, or refused with a 4xx - never another exception."""
    for target in (raw, b"/" + raw):
        try:
            tp = parse_target(target)
        except RemoteProtocolError as exc:
            assert exc.hint == 400
            continue
        for seg in tp.segments:
            assert seg not in ("", ".", "..") and "/" not in seg and "\\" not in seg and "\x00" not in seg
            assert all(ord(c) >= 0x20 and c != "\x7f" for c in seg)
        # the whole path fed to the server parser, whole and byte by byte, gives the same outcome
        req = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        assert _feed(req, None) == _feed(req, 1)


TRAVERSAL = [b"/..", b"/../etc/passwd", b"/%2e%2e/etc/passwd", b"/%2E%2E/x", b"/..%2fetc", b"/sub/..%2f..%2f",
             b"/%252e%252e/x", b"/..\\etc", b"/sub\\..\\..\\x", b"/%5c..%5cx", b"/%c0%ae%c0%ae/x", b"/%e0%80%ae/x",
             b"/a%00b", b"/a%0ab", b"/./x", b"/%2e/x", b"/sub/.", b"/%", b"/%zz", b"/%2", b"/%2fetc/passwd",
             b"//etc/passwd/..", b"/x#/../../"]


@pytest.mark.parametrize("target", TRAVERSAL)
def test_traversal_targets_refused(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_target(target)
    assert info.value.hint == 400


def test_targets_accepted() -> None:
    assert parse_target(b"/a%20b/c?x=1").segments == ("a b", "c")
    assert parse_target(b"/a%20b/c?x=1").query == b"x=1"
    assert parse_target(b"//evil.example/x/").path == "/evil.example/x/"
    assert parse_target(b"/caf%C3%A9").segments == ("café",)
    for bad in (b"http://a/x", b"a/x", b"*"):
        with pytest.raises(RemoteProtocolError):
            parse_target(bad)
    assert parse_target(b"*", b"OPTIONS").segments == ()


@pytest.mark.parametrize("header,size,expected", [
    ("bytes=0-99", 1000, [(0, 99)]),
    ("bytes=900-", 1000, [(900, 999)]),
    ("bytes=-100", 1000, [(900, 999)]),
    ("bytes=-2000", 1000, [(0, 999)]),
    ("bytes=0-0,2-3", 10, [(0, 0), (2, 3)]),
    ("bytes=0-5,3-8", 10, [(0, 8)]),
    ("bytes=5-20", 10, [(5, 9)]),
    ("bytes=5-2", 10, None),
    ("items=0-1", 10, None),
    ("bytes=abc", 10, None),
    ("bytes=" + ",".join(["0-1"] * 40), 10, None),
    (b"bytes=1-2", 10, [(1, 2)]),
])
def test_parse_range(header: str | bytes, size: int, expected: list[tuple[int, int]] | None) -> None:
    assert parse_range(header, size) == expected


def test_unsatisfiable_range() -> None:
    for header, size in (("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)):
        with pytest.raises(Unsatisfiable) as info:
            parse_range(header, size)
        assert info.value.hint == 416


def test_random_megabyte_is_linear() -> None:
    """1 MiB of garbage, and a head dribbled one byte at a time, are refused without quadratic work."""
    import os
    import time

    data = os.urandom(1 << 20)
    t0 = time.process_time()
    for chunk in (None, 4096):
        try:
            events(data, chunk=chunk)
        except RemoteProtocolError:
            pass
    p = Http1Parser(max_request_line=8192, max_head_size=65536)
    p.receive_data(b"GET / HTTP/1.1\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        for _ in range(70000):
            p.receive_data(b"a")
            p.next_event()
    assert info.value.hint == 431
    assert time.process_time() - t0 < 5  # generous: quadratic scanning takes minutes here
