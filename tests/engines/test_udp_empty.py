"""A zero-length UDP datagram is a datagram: every engine delivers it (issue 19).

On the asyncio and uvloop engines the loop's ``sendto(b"")`` returned without sending (asyncio
3.11 drops empty data; uvloop likewise), so the echo of an empty datagram never came back, while
epoll and threads echoed it.
"""

from __future__ import annotations

import socket

import pytest

from socklab.apps.echo.protocol import EchoDatagramProtocol
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)


def test_an_empty_datagram_is_echoed(engine: str) -> None:
    with running_server(EchoDatagramProtocol, engine, udp=True) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
        p.settimeout(10)
        p.sendto(b"", ("127.0.0.1", srv.port))
        p.sendto(b"after", ("127.0.0.1", srv.port))
        first = p.recvfrom(100)[0]
        assert first == b"", f"{engine}: the empty datagram's echo did not come (got {first!r} first)"
        assert p.recvfrom(100)[0] == b"after"
