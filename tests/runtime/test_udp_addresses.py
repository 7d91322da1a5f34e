"""Which address a UDP client uses when its name has several (``open_datagram``'s rule).

UDP has no handshake: ``connect()`` sends nothing and fails only when an address cannot be
reached at all. So the first address ``connect()`` accepts is used (an unreachable one is
skipped, as asyncio's ``create_datagram_endpoint`` does), and when nothing listens there the
refusal names that address and the name's others - before, the first address was used blindly
(an unreachable first address failed the client) and the refusal said only "connection refused".

The skip runs on loopback with a resolver stub: glibc already sorts an address ``connect()``
refuses last (RFC 6724 rule 1), so a real name cannot put one first; ``255.255.255.255`` is one
(``connect()`` without SO_BROADCAST: EACCES). The refusal runs with a real ``localhost`` (``::1``
then ``127.0.0.1``) in a network namespace of its own (tests/runtime/test_connect_fallback.py's).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from socklab.core.protocol import DatagramProtocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.core.trace import Tracer
from socklab.runtime.client import BlockingClient
from tests.runtime.test_connect_fallback import HOSTS, namespace, resolved

pytestmark = pytest.mark.timeout(60)


class Sender(DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport


@pytest.fixture
def two_addresses(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """``two.test``: 255.255.255.255 (connect() refuses it) then 127.0.0.1, where a socket listens."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(10)
    port = server.getsockname()[1]
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> list[Any]:
        if host == "two.test":
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("255.255.255.255", port)),
                    (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port))]
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("connected", [True, False])
def test_an_address_connect_refuses_is_skipped(two_addresses: socket.socket, connected: bool) -> None:
    port = two_addresses.getsockname()[1]
    tracer = Tracer()
    events = tracer.record()
    with BlockingClient(ClientSettings(), tracer=tracer) as client:
        handle = client.open_datagram(Endpoint("two.test", port), Sender, connected=connected)
        assert handle.remote[:2] == ("127.0.0.1", port)
        proto = handle.protocol
        assert proto is not None
        client.call(lambda: proto.transport.sendto(b"hi", None if connected else handle.remote))
        data, _ = two_addresses.recvfrom(100)
        assert data == b"hi"
    notes = [str(e.detail) for e in events if e.op == "note"]
    assert any(f"UDP to 255.255.255.255:{port} cannot be connected (permission denied): trying 127.0.0.1:{port}"
               in n for n in notes), notes
    lifecycle = [(e.op, e.fd, e.detail) for e in events if e.op in ("socket", "connect", "close")]
    opened: set[Any] = set()
    for op, fd, _ in lifecycle:  # the trace never shows an fd opened again without a close between
        assert not (op == "socket" and fd in opened), lifecycle
        if op == "socket":
            opened.add(fd)
        elif op == "close":
            opened.discard(fd)
    if connected:  # the refused attempt's socket: socket, connect failed, close - then the next socket
        first = lifecycle[0][1]
        assert [(op, detail) for op, fd, detail in lifecycle[:3]] == [
            ("socket", "AF_INET, SOCK_DGRAM"), ("connect", "failed: Permission denied"),
            ("close", "connect failed: EACCES - this attempt's socket is closed")], lifecycle
        assert {fd for _, fd, _ in lifecycle[:3]} == {first} and lifecycle[3][0] == "socket", lifecycle


@pytest.fixture(scope="module")
def v6_first() -> Iterator[str]:
    with namespace("u", {"hosts": HOSTS}) as ns:
        assert resolved(ns, "localhost") == ["::1", "127.0.0.1"]
        yield ns


@pytest.mark.netns
def test_a_refusal_names_the_address_used_and_the_others(v6_first: str, spawn: Callable[..., Any]) -> None:
    """``socklab echo client --udp localhost:PORT``, the server on 127.0.0.1 only: UDP cannot find it
    (no handshake), so the client says where it sent and what else ``localhost`` is; the address works."""
    inside = ["ip", "netns", "exec", v6_first]
    server = spawn("echo", "serve", "--udp", "--host", "127.0.0.1", "--port", "0", prefix=inside)
    port = server.wait_for(r"listening on udp://127\.0\.0\.1:(\d+)").group(1)

    def client(host: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*inside, sys.executable, "-m", "socklab", "echo", "client", "--udp", f"{host}:{port}"],
                              input=b"hello\n", capture_output=True, timeout=30, check=False)

    out = client("localhost")
    assert out.returncode != 0
    err = out.stderr.decode()
    assert f"nothing listens on [::1]:{port} (localhost also resolves to 127.0.0.1:{port};" in err, err
    assert "give the address" in err, err
    out = client("127.0.0.1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"hello")
