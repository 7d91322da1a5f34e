"""Every example of the JSON-RPC 2.0 specification, section 7, as a transcript against the server.

Each ``-->`` is sent verbatim (newlines folded for ndjson; verbatim with Content-Length framing)
and the answer compared with the ``<--``. The optional ``data`` member is left out of the
comparison (the specification's examples do not show it), and batch answers are compared in any
order (section 6 allows it). Where the specification expects nothing, a probe request follows
and its answer must be the next message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from socklab.protocols.framing import CONTENT_LENGTH, NDJSON

from .helpers import Raw, canonical, rpc_server, tcp_port

NOTHING = object()

# (title, request text, expected answer or NOTHING) - copied from https://www.jsonrpc.org/specification#examples
TRANSCRIPTS: list[tuple[str, str, Any]] = [
    ("positional 1", '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ("positional 2", '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     {"jsonrpc": "2.0", "result": -19, "id": 2}),
    ("named 1", '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
     {"jsonrpc": "2.0", "result": 19, "id": 3}),
    ("named 2", '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
     {"jsonrpc": "2.0", "result": 19, "id": 4}),
    ("notification 1", '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', NOTHING),
    ("notification 2", '{"jsonrpc": "2.0", "method": "foobar"}', NOTHING),
    ("non-existent method", '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
    ("invalid JSON", '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ("invalid Request object", '{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ("batch, invalid JSON", """[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]""", {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ("empty Array", "[]", {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ("invalid Batch (but not empty)", "[1]",
     [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]),
    ("invalid Batch", "[1,2,3]",
     [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3),
    ("Batch", """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]""", [
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
    ]),
    ("Batch (all notifications)", """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]""", NOTHING),
]

PROBE = b'{"jsonrpc": "2.0", "method": "get_data", "id": "probe"}'
PROBE_ANSWER = {"jsonrpc": "2.0", "result": ["hello", 5], "id": "probe"}


def run_transcripts(raw: Raw) -> None:
    for title, request, expected in TRANSCRIPTS:
        raw.send(request.encode())
        if expected is NOTHING:
            assert raw.call(PROBE) == PROBE_ANSWER, title
            continue
        answer = raw.recv()
        assert canonical(answer) == canonical(expected), title
        if isinstance(expected, list):
            assert isinstance(answer, list) and len(answer) == len(expected), title
        else:
            assert isinstance(answer, dict), f"{title}: a single answer, not an array"


@pytest.mark.parametrize("framing", [NDJSON, CONTENT_LENGTH])
def test_spec_examples_over_tcp(engine: str, framing: str) -> None:
    with rpc_server(engine) as rs, Raw(tcp_port(rs), framing) as raw:
        run_transcripts(raw)


def test_spec_examples_over_http() -> None:
    with rpc_server() as rs:
        url = next(u for u in rs.urls if u.startswith("http://"))
        with requests.Session() as http:
            for title, request, expected in TRANSCRIPTS:
                resp = http.post(url, data=request.encode(), headers={"content-type": "application/json"},
                                 timeout=10)
                if expected is NOTHING:
                    assert resp.status_code == 204 and resp.content == b"", title
                    continue
                assert resp.status_code == 200, title
                assert resp.headers["content-type"] == "application/json"
                assert canonical(resp.json()) == canonical(expected), title


def test_spec_examples_over_websocket() -> None:
    from socklab.apps.rpc.channels import WsChannel, parse_url

    with rpc_server() as rs:
        url = next(u for u in rs.urls if u.startswith("ws://"))
        import queue

        got: queue.Queue[bytes] = queue.Queue()
        ch = WsChannel(parse_url(url), got.put, lambda exc: None)
        try:
            for title, request, expected in TRANSCRIPTS:
                ch.send(request.encode())
                if expected is NOTHING:
                    ch.send(PROBE)
                    assert json.loads(got.get(timeout=10)) == PROBE_ANSWER, title
                    continue
                assert canonical(json.loads(got.get(timeout=10))) == canonical(expected), title
        finally:
            ch.close()
