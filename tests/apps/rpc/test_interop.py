"""Clients socklab did not write: curl (HTTP POST), jsonrpcclient + requests, netcat (TCP ndjson)."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
from jsonrpcclient import Error, Ok, notification_json, parse, parse_json, request, request_json

from .helpers import rpc_server, tcp_port

pytestmark = pytest.mark.interop


def curl(url: str, body: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json", "--data-binary", body,
                          "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=20, check=True)
    text, _, code = out.stdout.rpartition("\n")
    return int(code), text


def test_curl(concurrent_engine: str) -> None:
    with rpc_server(concurrent_engine) as rs:
        url = next(u for u in rs.urls if u.startswith("http://"))
        assert curl(url, '{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}') == \
            (200, '{"jsonrpc":"2.0","result":19,"id":1}')
        assert curl(url, '{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":"x"}') == \
            (200, '{"jsonrpc":"2.0","result":3,"id":"x"}')
        assert curl(url, '{"jsonrpc":"2.0","method":"update","params":[1]}') == (204, "")
        code, text = curl(url, "[" * 100_000)
        assert code == 200 and json.loads(text)["error"]["code"] == -32700


def test_jsonrpcclient_with_requests() -> None:
    with rpc_server() as rs:
        url = next(u for u in rs.urls if u.startswith("http://"))
        with requests.Session() as http:
            http.headers["content-type"] = "application/json"  # JSON-RPC POSTs must say so (else 415)
            resp = http.post(url, json=request("subtract", params={"minuend": 42, "subtrahend": 23}), timeout=10)
            assert isinstance(parse(resp.json()), Ok)
            assert parse(resp.json()).result == 19
            resp = http.post(url, data=request_json("async_add", params=[2, 3]), timeout=10)
            assert parse_json(resp.text).result == 5
            resp = http.post(url, data=request_json("fail", params=[-32050, "nope", [1]]), timeout=10)
            err = parse_json(resp.text)
            assert isinstance(err, Error) and (err.code, err.message, err.data) == (-32050, "nope", [1])
            batch = [request("sum", params=[1, 2]), request("get_data"), request("nope")]
            results = list(parse(http.post(url, json=batch, timeout=10).json()))
            assert isinstance(results, list) and len(results) == 3
            by_kind = sorted(type(r).__name__ for r in results)
            assert by_kind == ["Error", "Ok", "Ok"]
            assert http.post(url, data=notification_json("update"), timeout=10).status_code == 204


def test_netcat_ndjson() -> None:
    with rpc_server() as rs:
        lines = (b'{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":1}\n'
                 b'{"jsonrpc":"2.0","method":"get_data","id":2}\n')
        out = subprocess.run(["nc", "-N", "127.0.0.1", str(tcp_port(rs))], input=lines, capture_output=True,
                             timeout=20, check=True).stdout
        assert out.splitlines() == [b'{"jsonrpc":"2.0","result":7,"id":1}',
                                    b'{"jsonrpc":"2.0","result":["hello",5],"id":2}']
