"""runtime.bind_datagram: a server's extra UDP socket, bound to its own host, on its own engine.

The shape TFTP needs (RFC 1350 section 4): the listener's protocol answers each request from a new
port of the listener's address, served by the listener's engine, and that socket talks to anyone
(the protocol checks who sent what). Real sockets on loopback, port 0, on every engine.
"""

from __future__ import annotations

import os
import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from socklab.core.errors import NetworkError, UsageError
from socklab.core.protocol import DatagramProtocol
from socklab.core.sockets import Endpoint
from socklab.runtime import bind_datagram
from socklab.runtime.client import BlockingClient

WAIT = 20.0  # only matters when something is broken


class Answerer(DatagramProtocol):
    """The per-peer socket: says hello to ``peer`` first, then echoes whatever anyone sends."""

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.transport: Any = None
        self.lost = threading.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.sendto(b"hello from " + str(transport.get_extra_info("sockname")[1]).encode(), self.peer)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set()


class Listener(DatagramProtocol):
    """Answers each request from a new socket on its own host (a TFTP server's listener)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.answerers: list[tuple[Any, Answerer]] = []  # (bound address, protocol)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        host = self.transport.get_extra_info("sockname")[0]
        answerer = Answerer(addr)
        self.answerers.append((bind_datagram(Endpoint(host, 0), lambda: answerer, engine=self.engine), answerer))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("host", ["127.0.0.1", "::"])
def test_a_listener_answers_from_a_new_port_of_its_own_host(engine: str, host: str) -> None:
    with BlockingClient(engine=engine) as server:
        listener = Listener(server.engine)
        laddr = server.call(lambda: bind_datagram(Endpoint(host, 0), lambda: listener, engine=server.engine))
        assert laddr[0] == host and laddr[1] != 0
        lport = laddr[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            peer.settimeout(WAIT)
            stranger.settimeout(WAIT)
            peer.sendto(b"request", ("127.0.0.1", lport))
            hello, new = peer.recvfrom(100)
            assert new[0] == "127.0.0.1" and new[1] not in (0, lport)
            assert hello == b"hello from %d" % new[1]
            bound, proto = server.call(lambda: listener.answerers[0])  # on the engine: after the append
            assert bound[0] == host and bound[1] == new[1]  # "::" stays dual-stack: an IPv4 peer got through
            assert server.call(lambda: proto.transport.get_extra_info("sockname")) == bound
            peer.sendto(b"block 1", new)
            assert peer.recvfrom(100) == (b"block 1", new)
            stranger.sendto(b"not connected", new)  # anyone reaches the protocol; it decides
            assert stranger.recvfrom(100) == (b"not connected", new)
            server.call(proto.transport.close)
            assert proto.lost.wait(WAIT)


def test_a_unix_path_is_a_usage_error(engine: str) -> None:
    with BlockingClient(engine=engine) as client, pytest.raises(UsageError, match="HOST:PORT"):
        client.call(lambda: bind_datagram(Endpoint("", 0, unix="/tmp/x.sock"), DatagramProtocol,
                                          engine=client.engine))


def test_a_failed_bind_raises_and_leaves_nothing_open(engine: str) -> None:
    with BlockingClient(engine=engine) as client:
        before = _open_fds()
        with pytest.raises(NetworkError, match=r"192\.0\.2\.1"):  # TEST-NET-1: no address of this host
            client.call(lambda: bind_datagram(Endpoint("192.0.2.1", 0), DatagramProtocol, engine=client.engine))
        assert _open_fds() == before



class _TcpOnly:
    """An engine that serves no UDP (none of socklab's is one; the check is for engines to come)."""

    name = "tcp-only"
    info = SimpleNamespace(supports=frozenset({"tcp"}))

    def serve_datagram(self, sock: Any, factory: Any) -> None:
        raise AssertionError("bind_datagram must refuse before it serves anything")


def test_an_engine_without_udp_is_a_usage_error() -> None:
    before = _open_fds()
    with pytest.raises(UsageError, match="does not serve UDP"):
        bind_datagram(Endpoint("127.0.0.1", 0), DatagramProtocol, engine=_TcpOnly())  # type: ignore[arg-type]
    assert _open_fds() == before
