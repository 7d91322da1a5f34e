"""An RPC server's http:// and ws:// listeners get HTTP settings derived from the RPC settings.

Issue 18: "rpc copies four fields into a second HttpSettings and silently defaults the rest".
Now every field the two share is carried over, a named few are computed from RPC settings
(HTTP_FROM_RPC), and the rest are HTTP defaults on purpose, each with its reason (HTTP_DEFAULTS):
the three together are every HttpSettings field, so a new one cannot be defaulted silently. Then
a value set on the ``rpc serve`` command line is seen at work in the HTTP layer.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from socklab.apps.http.settings import HttpSettings
from socklab.apps.rpc.server import HTTP_DEFAULTS, HTTP_FROM_RPC, RpcSettings
from socklab.core.settings import ENGINE_NAMES

HTTP = {f.name for f in dataclasses.fields(HttpSettings)}
RPC = {f.name for f in dataclasses.fields(RpcSettings)}


def test_every_http_field_is_shared_computed_or_a_default_with_a_reason() -> None:
    shared = (HTTP & RPC) - set(HTTP_FROM_RPC)
    assert set(HTTP_FROM_RPC) <= HTTP and set(HTTP_DEFAULTS) <= HTTP
    assert not set(HTTP_DEFAULTS) & RPC, "an RPC setting of that name would be ignored"
    assert not set(HTTP_DEFAULTS) & set(HTTP_FROM_RPC)
    unaccounted = HTTP - shared - set(HTTP_FROM_RPC) - set(HTTP_DEFAULTS)
    assert not unaccounted, f"HttpSettings fields an RPC listener would default silently: {sorted(unaccounted)}"
    assert all(reason.strip() for reason in (*HTTP_DEFAULTS.values(), *HTTP_FROM_RPC.values()))


def other_value(field: dataclasses.Field[Any]) -> Any:
    """A valid value for ``field`` that is not its default."""
    default = field.default
    if field.name == "engine":
        return next(e for e in ENGINE_NAMES if e != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default + 1.5
    if isinstance(default, bytes):
        return default + b"!"
    if isinstance(default, tuple):
        return (*default, "other.test")
    if isinstance(default, str) or default is None:
        return {"host": "127.0.0.2", "unix": None, "tls_cert": "/x/cert.pem", "tls_key": "/x/key.pem"}.get(
            field.name, "other")
    raise AssertionError(f"no other value for {field.name}")


def test_every_shared_field_reaches_the_http_layer() -> None:
    fields = [f for f in dataclasses.fields(RpcSettings) if f.name in HTTP and f.name not in HTTP_FROM_RPC]
    changed = {f.name: other_value(f) for f in fields}
    rpc = RpcSettings(**changed)
    hs = rpc.http_settings()
    differs = {name: (getattr(hs, name), value) for name, value in changed.items() if getattr(hs, name) != value}
    assert not differs, f"set on the RPC settings, lost on the way to the HTTP layer: {differs}"


def test_computed_fields() -> None:
    hs = RpcSettings(max_message_size=5000, request_timeout=7.0).http_settings()
    assert (hs.max_body, hs.ws_max_message) == (5000, 5000)
    assert (hs.header_timeout, hs.body_timeout, hs.keepalive_timeout) == (7.0, 7.0, 7.0)
    assert hs.log_format == "none"


def post(port: int) -> tuple[socket.socket, bytes]:
    """A kept-alive connection with one answered call: (the connection, the answer's first bytes)."""
    body = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}'
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))
    return conn, conn.recv(65536)


def test_a_value_set_on_the_rpc_command_line_works_in_the_http_layer(spawn: Callable[..., Any]) -> None:
    p = spawn("rpc", "serve", "--demo", "--listen", "http://127.0.0.1:0/rpc", "--max-connections-per-ip", "1")
    url = p.wait_for(r"socklab rpc listening on (\S+) \(engine").group(1)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    first, answer = post(port)
    with first:
        assert answer.startswith(b"HTTP/1.1 200") and json.loads(answer.split(b"\r\n\r\n", 1)[1])["result"] == 3
        second, refused = post(port)  # the first is still open: one per address
        with second:
            assert refused.startswith(b"HTTP/1.1 503"), refused[:100]


@pytest.mark.parametrize("name", sorted(HTTP_DEFAULTS))
def test_the_defaults_are_the_http_layers(name: str) -> None:
    default = next(f.default for f in dataclasses.fields(HttpSettings) if f.name == name)
    assert getattr(RpcSettings().http_settings(), name) == default
