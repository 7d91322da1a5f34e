"""Pipelined requests (RFC 9112 §9.3.2): thousands in one read, answered in order, in bounded memory.

Issue 14: each finished response re-entered request processing recursively, so ~245 requests in
one read raised RecursionError and the connection was reset. Now the requests already received
are answered by a loop, and the server stops reading a client whose answers it cannot send.
"""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.apps.http.api import HttpProtocol, HttpSettings, Request, Response, Router
from tests.apps.http.listeners import KINDS, http_listener, read_responses
from tests.apps.http.test_protocol_fake import FakeTransport

pytestmark = pytest.mark.timeout(60)


def pipeline(kind: str, engine: str, n: int) -> None:
    with http_listener(kind, engine) as lis:
        data = b"".join(lis.request(i) for i in range(n))
        with socket.create_connection(("127.0.0.1", lis.port), timeout=20) as s:
            # sent from another thread: the server stops reading while we do not read its answers
            sender = threading.Thread(target=s.sendall, args=(data,), daemon=True)
            sender.start()
            got = read_responses(s, n)
            sender.join(20)
        assert len(got) == n, f"{len(got)} of {n} answered"
        bad = [i for i, (status, body) in enumerate(got) if status != 200 or not lis.check(i, body)]
        assert not bad, f"wrong or out of order from request {bad[0]}: {got[bad[0]]!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_ten_thousand_pipelined_requests_in_order(kind: str) -> None:
    pipeline(kind, "epoll", 10_000)


@pytest.mark.parametrize("kind", ["static", "rpc"])
def test_pipelined_requests_on_every_engine(kind: str, engine: str) -> None:
    pipeline(kind, engine, 2_000)


def test_ten_thousand_on_asyncio() -> None:
    pipeline("static", "asyncio", 10_000)


class SlowReaderTransport(FakeTransport):
    """A client that reads nothing: the write buffer is 'full' after the first response."""

    def __init__(self) -> None:
        super().__init__()
        self.proto: HttpProtocol | None = None
        self.writes = 0

    def write(self, data: object) -> None:
        super().write(data)
        self.writes += 1
        if self.writes == 1 and self.proto is not None:
            self.proto.pause_writing()


def test_a_client_that_does_not_read_is_not_parsed_ahead() -> None:
    """Answers the client does not take stop the parsing, and past max_pipelined the reading."""
    router = Router()
    handled: list[str] = []

    def numbered(req: Request) -> Response:
        handled.append(req.query)
        return Response(200, [("content-type", "text/plain")], req.query.encode())

    router.add_route("GET", "/n", numbered)
    proto = HttpProtocol(router, HttpSettings(log_format="none", max_pipelined=4096))
    t = SlowReaderTransport()
    t.proto = proto
    proto.connection_made(t)
    requests = b"".join(b"GET /n?%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(10_000))
    for i in range(0, len(requests), 65536):
        proto.data_received(requests[i:i + 65536])
        if not t.reading:
            break
    assert len(handled) == 1 and not t.reading  # one answer written, the rest waits unparsed
    sent = i + 65536
    while len(handled) < 10_000:  # the client reads: everything is answered, in order
        proto.resume_writing()
        t.writes = 0
        if t.reading and sent < len(requests):
            proto.data_received(requests[sent:sent + 65536])
            sent += 65536
    assert handled == [str(i) for i in range(10_000)]
    assert bytes(t.out).count(b"HTTP/1.1 200 OK") == 10_000 and not t.closed


@pytest.mark.parametrize("kind", KINDS)
def test_requests_sent_before_the_clients_eof_are_all_answered(kind: str) -> None:
    """``nc -N``: the client sends its requests and half-closes; every one is answered, then the server closes."""
    n = 3_000
    with http_listener(kind) as lis:
        data = b"".join(lis.request(i) for i in range(n))
        with socket.create_connection(("127.0.0.1", lis.port), timeout=20) as s:
            def send_then_eof() -> None:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send_then_eof, daemon=True)
            sender.start()
            got = read_responses(s, n + 1)  # one more than sent: returns at the server's close
            sender.join(20)
        assert len(got) == n and all(status == 200 and lis.check(i, body) for i, (status, body) in enumerate(got))


@given(n=st.integers(1, 60), cuts=st.lists(st.integers(1, 400), max_size=30),
       stalls=st.lists(st.booleans(), max_size=60))
@settings(max_examples=150, deadline=None)
def test_any_chunking_and_any_stalls_answer_everything_in_order(n: int, cuts: list[int], stalls: list[bool]) -> None:
    """Requests cut anywhere, the client stalling after any answer: every request answered once, in order."""
    router = Router()
    router.add_route("GET", "/n", lambda req: Response(200, [("content-type", "text/plain")], req.query.encode()))
    proto = HttpProtocol(router, HttpSettings(log_format="none", max_pipelined=256))
    t = FakeTransport()
    writes = [0]
    stall_plan = list(stalls)

    def write(data: object) -> None:
        FakeTransport.write(t, data)
        writes[0] += 1
        if stall_plan and stall_plan.pop(0):
            proto.pause_writing()  # the client's window is full after this answer

    t.write = write  # type: ignore[method-assign]
    proto.connection_made(t)
    data = b"".join(b"GET /n?%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(n))
    pos = 0
    pieces = []
    for c in cuts:
        pieces.append(data[pos:pos + c])
        pos += c
    pieces.append(data[pos:])
    pending = [p for p in pieces if p]
    for _ in range(10_000):
        if proto._write_paused:
            proto.resume_writing()
        elif pending and t.reading:
            proto.data_received(pending.pop(0))
        elif not pending:
            break
        else:  # not reading while nothing is paused: a stall the protocol never lifts
            raise AssertionError("reading paused with no answer outstanding")
    bodies = [m.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0] for m in bytes(t.out).split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"%d" % i for i in range(n)] and not t.closed
