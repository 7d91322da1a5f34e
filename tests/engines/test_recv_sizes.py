"""Never a receive of 128 KiB or more, on any engine, TCP, UDP or TLS (issue 19).

Why: a fresh ``recv(n)`` result of n >= 128 KiB is above glibc's mmap threshold, so each read
costs an mmap/munmap pair - until something in the process frees such a block and glibc raises
its threshold, so the speed depends on luck (docs/benchmarks.md). Every Python-level receive
socklab makes (and the asyncio loop makes for it) is recorded here through the ``socket.socket``
and ``ssl.SSLObject`` methods; uvloop's reads happen in C into its preallocated loop buffer (no
allocation per read) and are not visible to this test.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoDatagramProtocol, EchoProtocol
from socklab.core import tls as core_tls
from socklab.core.sockets import client_ssl_context
from socklab.engines import _aio_stream, _blocking_io, _reactor_io, _stream, blocking, reactor
from tests.conftest import running_server
from tests.engines.test_behaviour import recv_exactly

pytestmark = pytest.mark.timeout(60)

LIMIT = 128 * 1024


def test_one_recv_size_below_the_mmap_threshold() -> None:
    assert _stream.RECV_SIZE < LIMIT
    for module in (_reactor_io, _blocking_io, _aio_stream, reactor, blocking):
        assert module.RECV_SIZE is _stream.RECV_SIZE, module.__name__  # one constant, not copies
    assert core_tls._READ_SIZE <= _stream.RECV_SIZE


def _size(args: tuple[Any, ...], kwargs: dict[str, Any], buffer_arg: bool) -> int:
    if buffer_arg:
        buf = args[0] if args else kwargs["buffer"]
        n = args[1] if len(args) > 1 else kwargs.get("nbytes", 0)
        return n or memoryview(buf).nbytes
    return int(args[0] if args else kwargs.get("bufsize", kwargs.get("len", 0)))


@pytest.fixture
def sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []

    def record(cls: type, name: str, buffer_arg: bool) -> None:
        original = getattr(cls, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((name, _size(args, kwargs, buffer_arg)))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    for name, buffer_arg in (("recv", False), ("recvfrom", False), ("recv_into", True), ("recvfrom_into", True)):
        record(socket.socket, name, buffer_arg)
    original_read: Callable[..., Any] = ssl.SSLObject.read

    def read(self: Any, len: int = 1024, buffer: Any = None) -> Any:
        seen.append(("SSLObject.read", memoryview(buffer).nbytes if buffer is not None else len))
        return original_read(self, len, buffer) if buffer is not None else original_read(self, len)

    monkeypatch.setattr(ssl.SSLObject, "read", read)
    return seen


def _check(seen: list[tuple[str, int]], engine: str) -> None:
    big = [s for s in seen if s[1] >= LIMIT]
    assert not big, f"{engine}: receives of 128 KiB or more: {big[:5]}"


def test_tcp_and_udp_receives_stay_small(engine: str, sizes: list[tuple[str, int]]) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: enough to fill any buffer
    with running_server(EchoProtocol, engine) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := c.recv(65536):
                got += chunk
            assert got == payload
    with running_server(EchoDatagramProtocol, engine, udp=True) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
        p.settimeout(10)
        for data in (b"", b"x" * 60000):
            p.sendto(data, ("127.0.0.1", srv.port))
            assert p.recvfrom(65536)[0] == data
    if engine != "uvloop":
        assert sizes, "the recording saw no receive at all: the test would prove nothing"
    _check(sizes, engine)


def test_tls_receives_stay_small(engine: str, sizes: list[tuple[str, int]], tls_files: dict[str, str]) -> None:
    payload = bytes(range(256)) * 1024
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        ctx = client_ssl_context(tls_files["ca"])
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as c:
            c.sendall(b"hello")  # one round trip: the server's side of the handshake is over too
            assert c.recv(100) == b"hello"
            # From here on, every receive is the data path. (The asyncio engine's first one or two
            # handshake reads, before connection_made, still go into the loop's preallocated
            # 256 KiB buffer: recv_into, no allocation per read; see engines/_aio_stream.py.)
            sizes.clear()
            c.sendall(payload)
            assert recv_exactly(c, len(payload), 16384) == payload
    # The test's client reads 16 KiB at a time; any larger read was the server's.
    _check(sizes, engine)
