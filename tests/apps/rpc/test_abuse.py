"""Malformed and abusive requests: exact codes and shapes, and the server keeps serving others.

Each abusive message goes to one connection while a second, well-behaved client makes a call
after every one of them and must get its answer.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import requests

from socklab.apps.rpc.errors import RequestCancelled
from socklab.protocols.framing import CONTENT_LENGTH

from .helpers import Raw, rpc_server, tcp_port

JSON = {"content-type": "application/json"}  # a JSON-RPC POST without it gets 415

ERR = "error"


def error(code: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code}, "id": None}


def same_shape(answer: Any, expected: Any) -> bool:
    """Equal once the error objects are reduced to their codes (messages and data may vary)."""
    if isinstance(expected, list):
        return isinstance(answer, list) and len(answer) == len(expected) and all(
            same_shape(a, e) for a, e in zip(answer, expected, strict=True))
    if not isinstance(answer, dict) or set(answer) != {"jsonrpc", "error", "id"}:
        return False
    err = answer["error"]
    return (answer["jsonrpc"] == "2.0" and answer["id"] == expected["id"] and isinstance(err.get("message"), str)
            and err["code"] == expected["error"]["code"] and set(err) <= {"code", "message", "data"})


def req(method: str, params: Any = None, id: Any = 1) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode()


# (title, bytes sent on one line, expected answer) - the connection stays usable after each
CORPUS: list[tuple[str, bytes, Any]] = [
    ("empty batch", b"[]", error(-32600)),
    ("non-object batch members", b'[1, "x", null, [], true]', [error(-32600)] * 5),
    ("1,001-item batch", json.dumps([json.loads(req("add", [1, 2], i)) for i in range(1001)]).encode(),
     error(-32600)),
    ("'[' x 100,000", b"[" * 100_000, error(-32700)),
    ("'{\"a\":' x 100,000", b'{"a":' * 100_000, error(-32700)),
    ("deep nesting inside params", req("echo", None)[:-1] + b', "params": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     error(-32700)),
    ("100,000-digit number", req("echo", [int("9" * 50)]).replace(b"9" * 50, b"9" * 100_000), error(-32700)),
    ("100,000-digit fraction", req("echo", [0.5]).replace(b"0.5", b"0." + b"5" * 100_000), error(-32700)),
    ("NaN", b'{"jsonrpc": "2.0", "method": "echo", "params": [NaN], "id": 1}', error(-32700)),
    ("not UTF-8", b'{"jsonrpc": "2.0", "method": "echo\xff", "id": 1}', error(-32700)),
    ("jsonrpc 1.0", b'{"jsonrpc": "1.0", "method": "echo", "params": [1], "id": 1}',
     {"jsonrpc": "2.0", "error": {"code": -32600}, "id": 1}),
    ("boolean id", b'{"jsonrpc": "2.0", "method": "echo", "params": [1], "id": true}', error(-32600)),
    ("params a string", b'{"jsonrpc": "2.0", "method": "echo", "params": "x", "id": 7}',
     {"jsonrpc": "2.0", "error": {"code": -32600}, "id": 7}),
    ("a response sent as a request", b'{"jsonrpc": "2.0", "result": 1, "id": 1}',
     {"jsonrpc": "2.0", "error": {"code": -32600}, "id": 1}),
    ("wrong arity", req("subtract", [1]), {"jsonrpc": "2.0", "error": {"code": -32602}, "id": 1}),
    ("unknown named param", req("subtract", {"minuend": 1, "x": 2}),
     {"jsonrpc": "2.0", "error": {"code": -32602}, "id": 1}),
    ("handler exception", req("crash"), {"jsonrpc": "2.0", "error": {"code": -32603}, "id": 1}),
    ("reserved rpc. name", req("rpc.nothing"), {"jsonrpc": "2.0", "error": {"code": -32601}, "id": 1}),
]


def test_abuse_corpus_over_tcp(concurrent_engine: str) -> None:
    with rpc_server(concurrent_engine) as rs, Raw(tcp_port(rs)) as bad, Raw(tcp_port(rs)) as good:
        for i, (title, payload, expected) in enumerate(CORPUS):
            answer = bad.call(payload)
            assert same_shape(answer, expected), f"{title}: {str(answer)[:300]}"
            assert good.call(req("add", [i, 1], i)) == {"jsonrpc": "2.0", "result": i + 1, "id": i}, title
        # after all that, the abusive connection itself still works
        assert bad.call(req("subtract", [3, 1])) == {"jsonrpc": "2.0", "result": 2, "id": 1}


def test_internal_error_leaks_nothing() -> None:
    with rpc_server() as rs, Raw(tcp_port(rs)) as raw:
        answer = raw.call(req("crash"))
        assert answer == {"jsonrpc": "2.0", "error": {"code": -32603, "message": "Internal error"}, "id": 1}
        assert b"secret" not in json.dumps(answer).encode() and b"Traceback" not in json.dumps(answer).encode()


@pytest.mark.parametrize("mode", ["ndjson", CONTENT_LENGTH])
def test_frame_over_the_size_limit_is_refused_and_closed(concurrent_engine: str, mode: str) -> None:
    limit = 64 * 1024
    with rpc_server(concurrent_engine, max_message_size=limit) as rs, Raw(tcp_port(rs), mode) as bad, \
            Raw(tcp_port(rs)) as good:
        body = req("echo", ["x" * (limit + 10)])
        if mode == CONTENT_LENGTH:
            bad.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body))  # refused before the body
        else:
            bad.sock.sendall(body + b"\n")
        answer = json.loads(bad.recv_raw() or b"null")
        assert same_shape(answer, error(-32600)), answer
        assert "max_message_size" in answer["error"]["data"]
        assert bad.recv_raw() is None  # then the connection is closed
        assert good.call(req("add", [1, 1])) == {"jsonrpc": "2.0", "result": 2, "id": 1}


def test_bad_content_length_header() -> None:
    with rpc_server() as rs, Raw(tcp_port(rs), CONTENT_LENGTH) as bad:
        bad.sock.sendall(b"Content-Length: nope\r\n\r\n{}")
        assert same_shape(json.loads(bad.recv_raw() or b"null"), error(-32700))
        assert bad.recv_raw() is None


def test_half_message_then_eof_gets_a_parse_error(concurrent_engine: str) -> None:
    with rpc_server(concurrent_engine) as rs, Raw(tcp_port(rs)) as raw:
        raw.sock.sendall(b'{"jsonrpc": "2.0", "method": "sum", "params": [1,2], "id": 5}\n{"jsonrpc"')
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.recv() == {"jsonrpc": "2.0", "result": 3, "id": 5}
        assert same_shape(raw.recv(), error(-32700))
        assert raw.recv_raw() is None


def test_eof_waits_for_calls_in_flight(concurrent_engine: str) -> None:
    with rpc_server(concurrent_engine) as rs, Raw(tcp_port(rs)) as raw:
        raw.sock.sendall(req("sleep", [0.2], 1) + b"\n" + req("async_sleep", [0.2], 2) + b"\n")
        raw.sock.shutdown(socket.SHUT_WR)
        got = {raw.recv()["id"], raw.recv()["id"]}
        assert got == {1, 2}
        assert raw.recv_raw() is None


def test_call_timeout_and_cancellation(concurrent_engine: str) -> None:
    with rpc_server(concurrent_engine, call_timeout=0.3) as rs, Raw(tcp_port(rs)) as raw:
        answer = raw.call(req("async_sleep", [30], "slow"))
        assert answer["id"] == "slow" and answer["error"]["code"] == -32001
        raw.send(req("async_sleep", [30], "c1"))
        cancel = b'{"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "c1"}}'
        raw.send(cancel)
        answer = raw.recv()
        assert answer["id"] == "c1" and answer["error"]["code"] == RequestCancelled.default_code
        # idempotent: cancelling again, or an unknown id, answers nothing and breaks nothing
        raw.send(cancel)
        raw.send(b'{"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "never"}}')
        raw.send(b'{"jsonrpc": "2.0", "method": "$/cancelRequest", "params": [1, 2]}')
        assert raw.call(req("get_data", id="after")) == {"jsonrpc": "2.0", "result": ["hello", 5], "id": "after"}


def test_max_concurrent_calls_queues_instead_of_failing(concurrent_engine: str) -> None:
    with rpc_server(concurrent_engine, max_concurrent_calls=2, handler_threads=4) as rs, \
            Raw(tcp_port(rs)) as raw:
        raw.sock.sendall(b"".join(req("sleep", [0.05], i) + b"\n" for i in range(8)))
        ids = sorted(raw.recv()["id"] for _ in range(8))
        assert ids == list(range(8))
        assert rs.dispatcher.stats["timeouts"] == 0


def test_http_abuse() -> None:
    with rpc_server(max_message_size=4096) as rs:
        url = next(u for u in rs.urls if u.startswith("http://"))
        base = url.rsplit("/", 1)[0]
        with requests.Session() as http:
            http.headers["content-type"] = "application/json"
            assert http.get(url, timeout=10).status_code == 405
            assert http.post(base + "/elsewhere", data=b"{}", timeout=10).status_code == 404
            r = http.post(url, data=b"[" + b"1," * 5000 + b"1]", timeout=10)
            assert r.status_code == 413
        r = requests.post(url, data=b"[" * 4000, timeout=10, headers=JSON)
        assert r.status_code == 200 and same_shape(r.json(), error(-32700))
        r = requests.post(url, data=req("add", [1, 2]), timeout=10, headers=JSON)
        assert r.json() == {"jsonrpc": "2.0", "result": 3, "id": 1}


def test_websocket_message_over_the_limit_closes_1009() -> None:
    import queue

    from socklab.apps.rpc.channels import WsChannel, parse_url

    with rpc_server(max_message_size=4096) as rs:
        url = next(u for u in rs.urls if u.startswith("ws://"))
        lost: queue.Queue[BaseException] = queue.Queue()
        ch = WsChannel(parse_url(url), lambda payload: None, lost.put)
        try:
            ch.send(b"x" * 10000)
            assert "1009" in str(lost.get(timeout=10))
        finally:
            ch.close()


def test_graceful_shutdown_answers_calls_in_flight(concurrent_engine: str) -> None:
    import threading

    from socklab.apps.rpc.service import demo_service

    svc = demo_service()
    started, finish = threading.Event(), threading.Event()

    @svc.method
    def slow() -> str:
        started.set()
        finish.wait(10)
        return "done"

    with rpc_server(concurrent_engine, service=svc, listen=("tcp://127.0.0.1:0",)) as rs, \
            Raw(tcp_port(rs)) as raw:
        raw.send(req("slow", None, 1))
        assert started.wait(10)  # the call is running: now shut down
        stopper = threading.Thread(target=rs.shutdown, args=(5,))
        stopper.start()
        try:
            finish.set()
            assert raw.recv() == {"jsonrpc": "2.0", "result": "done", "id": 1}
            assert raw.recv_raw() is None  # then the server closes the idle connection
        finally:
            finish.set()
            stopper.join(10)


@pytest.mark.parametrize("partial", [b"", b"POST /rpc HTTP/1.1\r\nHost: x\r\n",
                                     b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"])
def test_http_slow_or_silent_client_is_cut_at_request_timeout(partial: bytes) -> None:
    with rpc_server(listen=("http://127.0.0.1:0/rpc",), request_timeout=0.3) as rs:
        port = int(rs.urls[0].rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(partial)
            assert requests.post(rs.urls[0], data=req("add", [1, 2]), timeout=10, headers=JSON).json()["result"] == 3
            answer = b""
            while chunk := slow.recv(4096):  # ends when the server closes (the socket timeout bounds it)
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") if partial else answer == b""


def test_one_clients_slow_batch_cannot_take_the_handler_pool(concurrent_engine: str) -> None:
    # before: a batch of 16 sleep(15) took all 4 threads, and another client's add waited ~15 s
    with rpc_server(concurrent_engine, handler_threads=4, call_timeout=60) as rs, \
            Raw(tcp_port(rs)) as hog, Raw(tcp_port(rs), timeout=10) as other:
        batch = b"[" + b",".join(req("sleep", [15], i) for i in range(16)) + b"]"
        hog.send(batch)
        deadline = time.monotonic() + 10
        while rs.dispatcher.stats["calls"] < 16:  # the hog's calls are in (no event to wait on: bounded poll)
            assert time.monotonic() < deadline, "the server never took the batch"
            time.sleep(0.01)
        # ...and the other client's call is answered at once, not after 15 s (its socket times out at 10 s)
        assert other.call(req("add", [2, 3], "mine")) == {"jsonrpc": "2.0", "result": 5, "id": "mine"}
        assert max(rs.dispatcher.pool._running.values(), default=0) <= 2
