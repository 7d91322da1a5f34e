"""A client's TLS handshake that fails is a connect error with its reason, on every engine.

Before: the engines that run socklab's own TLS (core/tls.py: select, poll, epoll and the blocking
engines) dropped a client's failed handshake silently - the app was never started, so nobody was
told - and ``BlockingClient.connect`` waited out its margin (connect_timeout + 5 s) to raise
``ConnectTimeout``; asyncio and uvloop turned the certificate error into "operation not permitted"
(its errno, 1). Now every engine calls the connect's ``on_error`` with a ``NetworkError`` that
says why, at once.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from socklab.core.errors import ConnectError, NetworkError
from socklab.core.protocol import Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.runtime.client import BlockingClient
from tests.conftest import running_server

FAST = 3.0  # a failed handshake is reported at once; the old path took connect_timeout + 5 s


class Quiet(Protocol):
    def data_received(self, data: bytes) -> None:
        pass


def test_an_unknown_certificate_fails_the_connect_with_its_reason(engine: str,
                                                                   tls_files: dict[str, str]) -> None:
    with running_server(Quiet, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv, \
            BlockingClient(ClientSettings(connect_timeout=2, tls=True), engine=engine) as client:
        started = time.monotonic()
        with pytest.raises(NetworkError) as info:  # the system's CAs do not know the test CA
            client.connect(Endpoint("127.0.0.1", srv.port), Quiet)
        assert time.monotonic() - started < FAST
        assert "certificate verify failed" in str(info.value)
        assert not isinstance(info.value, ConnectError)  # not worth retrying: the same cert comes back


def test_a_server_that_closes_during_the_handshake(engine: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def close_each() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)  # the ClientHello
            conn.close()

        peer = threading.Thread(target=close_each, daemon=True)
        peer.start()
        with BlockingClient(ClientSettings(connect_timeout=2, tls=True, insecure=True), engine=engine) as client:
            started = time.monotonic()
            with pytest.raises(NetworkError) as info:
                client.connect(Endpoint("127.0.0.1", listener.getsockname()[1]), Quiet)
            assert time.monotonic() - started < FAST
            assert "timed out" not in str(info.value) and "no connection" not in str(info.value)
        peer.join(5)


def test_a_good_handshake_still_connects(engine: str, tls_files: dict[str, str]) -> None:
    got = threading.Event()

    class Hello(Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(b"hi")

        def data_received(self, data: bytes) -> None:
            got.set()

    with running_server(Hello, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv, \
            BlockingClient(ClientSettings(connect_timeout=2, tls=True, cafile=tls_files["ca"]),
                           engine=engine) as client:
        client.connect(Endpoint("127.0.0.1", srv.port), Hello)
        assert got.wait(10)
