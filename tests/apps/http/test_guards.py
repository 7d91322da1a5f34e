"""The checks against web pages and greedy addresses, as pure functions (see guards.py for why each exists)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socklab.apps.http.guards import (
    PeerCount,
    host_allowed,
    is_json_content_type,
    is_loopback,
    origin_allowed,
)

LOCAL = ("127.0.0.1", 8080)


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:8080", True), ("localhost:8080", True), ("LOCALHOST:8080", True), ("[::1]:8080", True),
    ("127.9.9.9:8080", True), ("app.localhost:8080", True), (None, True),
    ("127.0.0.1", False),  # port 80 implied: not this server
    ("attacker.example:8080", False), ("attacker.example", False), ("127.0.0.1:8081", False),
    ("127.0.0.1.nip.io:8080", False), ("localhost.attacker.example:8080", False), ("", False),
    ("127.0.0.1:8080@evil", False), ("127.0.0.1:80a", False), ("[::1", False), ("10.0.0.1:8080", False),
])
def test_host_on_a_loopback_connection(host: str | None, ok: bool) -> None:
    assert host_allowed(host, LOCAL) is ok


def test_host_allow_list_and_non_loopback_connections() -> None:
    assert host_allowed("app.test", LOCAL, allowed=["app.test"])
    assert host_allowed("APP.test:9", LOCAL, allowed=["app.test"])
    assert host_allowed("app.test:9", LOCAL, allowed=["app.test:9"])
    assert not host_allowed("app.test:10", LOCAL, allowed=["app.test:9"])
    assert host_allowed("localhost", ("127.0.0.1", 443), tls=True)
    # a connection that came in on another address is not a loopback one: nothing to check
    assert host_allowed("anything.example", ("192.0.2.5", 8080))
    assert host_allowed("anything.example", None)
    assert host_allowed("localhost:8080", ("::ffff:127.0.0.1", 8080, 0, 0))
    assert host_allowed("[::1]:8080", ("::1", 8080, 0, 0)) and not host_allowed("evil:8080", ("::1", 8080, 0, 0))
    assert origin_allowed("http://[::1]:8080", "[::1]:8080", ("::1", 8080, 0, 0))


@pytest.mark.parametrize("origin,host,ok", [
    (None, "127.0.0.1:8080", True),
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("http://localhost:8080", "localhost:8080", True),
    ("http://127.0.0.1:8080", "localhost:8080", True),  # the connection's own address
    ("http://evil.example", "127.0.0.1:8080", False),
    ("http://localhost:8080", "127.0.0.1:8080", False),  # another name: another origin
    ("https://127.0.0.1:8080", "127.0.0.1:8080", False),  # another scheme
    ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),
    ("http://127.0.0.1:8080/path", "127.0.0.1:8080", False),
    ("file://", "127.0.0.1:8080", False),
])
def test_origin(origin: str | None, host: str, ok: bool) -> None:
    assert origin_allowed(origin, host, LOCAL) is ok


def test_origin_allow_list() -> None:
    assert origin_allowed("http://app.example:3000", "127.0.0.1:8080", LOCAL, allowed=["http://app.example:3000/"])
    assert origin_allowed("http://evil.example", "127.0.0.1:8080", LOCAL, allowed=["*"])
    assert not origin_allowed("http://app.example:3001", "127.0.0.1:8080", LOCAL,
                              allowed=["http://app.example:3000"])


def test_json_content_types() -> None:
    for ok in ("application/json", "application/json; charset=utf-8", " Application/JSON ", "application/json-rpc"):
        assert is_json_content_type(ok), ok
    for bad in (None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                "application/jsonx", "text/json"):
        assert not is_json_content_type(bad), bad


def test_loopback_addresses() -> None:
    assert is_loopback(("127.0.0.1", 1)) and is_loopback("::1") and is_loopback("127.255.0.1")
    assert not is_loopback(("0.0.0.0", 1)) and not is_loopback("::") and not is_loopback("") and not is_loopback(None)


def test_peer_count() -> None:
    peers = PeerCount()
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    assert peers.add(a, 2) and peers.add(a, 2) and not peers.add(a, 2) and peers.add(b, 2)
    peers.remove(a)
    assert peers.add(a, 2)
    for _ in range(2):
        peers.remove(a)
    peers.remove(b)
    assert peers.open == {}  # nothing left behind for addresses that went away
    assert peers.add(None, 1) and peers.add("/tmp/sock", 1) and peers.add(a, 0)  # not counted: no address, no cap


@given(st.text(max_size=60), st.one_of(st.none(), st.text(max_size=60)))
def test_never_raises(value: str, other: str | None) -> None:
    assert isinstance(host_allowed(value, LOCAL, allowed=[other or "x"]), bool)
    assert isinstance(origin_allowed(value, other, LOCAL, allowed=[other or "x"]), bool)
    assert isinstance(is_json_content_type(value), bool)
