"""The stream adapter and dispatcher over a fake transport: whole vs byte-by-byte feeds agree.

Only the specification's inline methods (``subtract``, ``sum``, ``get_data``...) are used, so every
answer is written during ``data_received`` and the test needs no engine and no thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.apps.rpc.dispatch import Dispatcher
from socklab.apps.rpc.server import RpcStreamProtocol
from socklab.apps.rpc.service import demo_service
from socklab.core.transport import Transport
from socklab.protocols import jsonrpc as j
from socklab.protocols.framing import CONTENT_LENGTH, NDJSON, Frame, FrameDecoder, encode_frame


class _Timer:
    def cancel(self) -> None:
        pass


class FakeTransport(Transport):
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        return _Timer()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def can_write_eof(self) -> bool:
        return False  # like TLS: the HTTP layer closes at once instead of lingering


DISPATCHER = Dispatcher(demo_service(), lambda cb: cb(), limits=j.Limits(max_message_size=4096))


def run(chunks: list[bytes]) -> tuple[bytes, bool]:
    proto = RpcStreamProtocol(DISPATCHER)
    t = FakeTransport()
    proto.connection_made(t)
    for c in chunks:
        if t.closed:
            break
        proto.data_received(c)
    if not t.closed and not proto.eof_received():
        t.close()
    proto.connection_lost(None)
    return bytes(t.out), t.closed


calls = st.fixed_dictionaries({"jsonrpc": st.just("2.0"),
                               "method": st.sampled_from(["subtract", "sum", "get_data", "update", "nope"]),
                               "params": st.lists(st.integers(-100, 100), max_size=3)},
                              optional={"id": st.one_of(st.integers(0, 9), st.text("ab", max_size=2))})
messages = st.one_of(calls, st.lists(calls, min_size=0, max_size=4)).map(lambda m: json.dumps(m).encode())
junk = st.binary(max_size=30).filter(lambda b: b"\n" not in b)


@given(st.lists(st.one_of(messages, messages, junk), max_size=6), st.sampled_from([NDJSON, CONTENT_LENGTH]))
@settings(max_examples=200, deadline=None)
def test_whole_and_bytewise_feeds_give_the_same_answers(items: list[bytes], mode: str) -> None:
    stream = b"".join(encode_frame(i, mode) if mode == CONTENT_LENGTH or b"\n" not in i else b"" for i in items)
    whole = run([stream])
    assert run([stream[i:i + 1] for i in range(len(stream))]) == whole
    # every answer is a well-formed JSON-RPC response, framed the way the server detected the
    # client's framing from its first bytes (ndjson junk that begins "content-" reads as headers)
    detector = FrameDecoder()
    detector.receive_data(stream)
    dec = FrameDecoder(mode=detector.mode if stream.strip() else None)
    dec.receive_data(whole[0])
    dec.receive_data(b"")
    while (ev := dec.next_event()) is not None:
        if isinstance(ev, Frame):
            for reply in j.parse_replies(ev.data):
                assert isinstance(reply, (j.Response, j.ErrorResponse))


def test_ndjson_junk_that_reads_as_a_header_is_answered_in_content_length_framing() -> None:
    out, _ = run([b"content-\n"])
    dec = FrameDecoder(mode=CONTENT_LENGTH)
    dec.receive_data(out)
    ev = dec.next_event()
    assert isinstance(ev, Frame)
    assert json.loads(ev.data)["error"]["code"] in (j.PARSE_ERROR, j.INVALID_REQUEST)


def test_oversize_frame_answers_then_closes() -> None:
    out, closed = run([b'{"a":"' + b"x" * 5000])
    assert closed
    assert json.loads(out)["error"]["code"] == j.INVALID_REQUEST


def run_http(chunks: list[bytes]) -> tuple[bytes, bool]:
    from socklab.apps.http.api import HttpProtocol, Router
    from socklab.apps.rpc.server import RpcSettings, http_handler

    router = Router()
    router.add_route("POST", "/rpc", http_handler(DISPATCHER))
    proto = HttpProtocol(router, RpcSettings(max_message_size=4096).http_settings())
    t = FakeTransport()
    proto.connection_made(t)
    for c in chunks:
        if t.closed:
            break
        proto.data_received(c)
    if not t.closed and not proto.eof_received():
        t.close()
    proto.connection_lost(None)
    return re.sub(rb"\r\ndate: [^\r]*", b"", bytes(t.out)), t.closed  # the Date may tick between two runs


def http_post(body: bytes) -> bytes:
    return (b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body)


@given(st.lists(st.one_of(messages.map(http_post), messages.map(http_post), st.binary(max_size=40)), max_size=4))
@settings(max_examples=100, deadline=None)
def test_http_adapter_whole_and_bytewise(items: list[bytes]) -> None:
    stream = b"".join(items)
    whole = run_http([stream])
    assert run_http([stream[i:i + 1] for i in range(len(stream))]) == whole
    assert whole[0] == b"" or whole[0].startswith(b"HTTP/1.1 ")


def test_http_adapter_keepalive_pipeline() -> None:
    body = b'{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}'
    out, _ = run_http([http_post(body) * 3])
    assert out.count(b"HTTP/1.1 200 OK") == 3 and out.count(b'"result":19') == 3
