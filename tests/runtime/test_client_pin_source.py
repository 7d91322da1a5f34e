"""``ClientSettings.pin`` and ``ClientSettings.source`` on every engine (issue 17), real sockets on loopback.

The pin: a self-signed server (the certificate ``--tls-self-signed`` makes), a client that knows
its SHA-256 talks to it with no CA; any other fingerprint aborts the connection before the
protocol hears of it, with a ``PinMismatch`` saying which certificate came. The source: the
listener sees the address (and port) the client bound before connecting - 127.0.0.2 beside the
usual 127.0.0.1, and ``[::1]`` with a chosen port - over TCP and UDP.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from socklab.core.errors import AddressInUse, ResolveError, UsageError
from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.selfsigned import PinMismatch, SelfSigned, self_signed_context
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.runtime import Server
from socklab.runtime.client import BlockingClient

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0


class _Record(Protocol):
    """Keeps what came; says hello first; records every callback."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.got = bytearray()
        self.arrived = threading.Event()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.events.append("made")
        transport.write(b"hello\n")

    def data_received(self, data: bytes) -> None:
        self.events.append("data")
        self.got += data
        self.arrived.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")


class _Banner(Protocol):
    """The server: sends a banner at once (so a refused client would have data to see), echoes."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.write(b"banner\n")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@contextlib.contextmanager
def _self_signed_server(engine: str) -> Iterator[tuple[int, SelfSigned]]:
    from socklab.core.settings import ServerSettings

    ctx, cert = self_signed_context()
    srv = Server(ServerSettings(host="127.0.0.1", port=0, engine=engine))
    try:
        srv.listen(_Banner, ssl_context=ctx)
        srv.start()
        yield srv.port, cert
    finally:
        srv.shutdown(timeout=2)


def test_the_right_pin_talks_without_a_ca(engine: str) -> None:
    with _self_signed_server("epoll") as (port, cert), \
            BlockingClient(ClientSettings(connect_timeout=WAIT, pin=cert.fingerprint.lower()), engine=engine) as c:
        handle = c.connect(Endpoint("127.0.0.1", port), _Record)
        proto = handle.protocol
        assert proto is not None
        while bytes(proto.got).count(b"\n") < 2:  # the banner, then our hello echoed
            assert proto.arrived.wait(WAIT)
            proto.arrived.clear()
        assert bytes(proto.got) == b"banner\nhello\n"


def test_a_wrong_pin_refuses_before_the_protocol_hears(engine: str) -> None:
    with _self_signed_server(engine) as (port, cert):
        wrong = ("00" if not cert.fingerprint.startswith("00") else "11") + cert.fingerprint[2:]
        made: list[_Record] = []

        def factory() -> _Record:
            made.append(_Record())
            return made[-1]

        with BlockingClient(ClientSettings(connect_timeout=WAIT, pin=wrong), engine=engine) as c:
            with pytest.raises(PinMismatch) as info:
                c.connect(Endpoint("127.0.0.1", port), factory)
        assert cert.fingerprint in str(info.value) and "not the pinned one" in str(info.value)
        assert [p.events for p in made] == [[]]  # no connection_made, no data, no connection_lost


def test_pin_settings_are_checked() -> None:
    from socklab.cli.options import build_settings

    with pytest.raises(UsageError, match="--pin"):
        build_settings(ClientSettings, {"pin": "nothex"})
    with pytest.raises(UsageError, match="--insecure"):
        build_settings(ClientSettings, {"pin": "AB" * 32, "insecure": True})
    with pytest.raises(UsageError, match="--cafile"):
        build_settings(ClientSettings, {"pin": "AB" * 32, "cafile": "ca.pem"})
    assert ClientSettings(pin="AB" * 32).uses_tls


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.2", ("127.0.0.2", 0)), ("127.0.0.2:4000", ("127.0.0.2", 4000)), ("[::1]:4000", ("::1", 4000)),
    ("::1", ("::1", 0)), ("[::1]", ("::1", 0)), (":4000", ("", 4000)),
])
def test_source_forms(text: str, want: tuple[str, int]) -> None:
    assert ClientSettings(source=text).source_address() == want


@pytest.mark.parametrize("text", ["", "127.0.0.2:x", "127.0.0.2:70000", "[::1]x"])
def test_bad_source_is_a_usage_error_naming_it(text: str) -> None:
    with pytest.raises(UsageError, match="--source"):
        ClientSettings(source=text).validate()


def _free_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("family", "listen_on", "source", "seen"), [
    (socket.AF_INET, "127.0.0.1", "127.0.0.2", "127.0.0.2"),
    (socket.AF_INET6, "::1", "[::1]:{port}", "::1"),
], ids=["ipv4-127.0.0.2", "ipv6-with-port"])
def test_tcp_source_address_is_what_the_listener_sees(engine: str, family: int, listen_on: str, source: str,
                                                      seen: str) -> None:
    port = _free_port(family, listen_on)
    source = source.format(port=port)
    with socket.create_server((listen_on, 0), family=family) as lst, \
            BlockingClient(ClientSettings(connect_timeout=WAIT, source=source), engine=engine) as c:
        lst.settimeout(WAIT)
        c.connect(Endpoint(listen_on, lst.getsockname()[1]), _Record)
        conn, peer = lst.accept()
        conn.close()
    assert peer[0] == seen
    if "{port}" in source or source.startswith("["):
        assert peer[1] == port


def test_udp_source_address_is_what_the_server_sees(engine: str) -> None:
    class _Quiet(DatagramProtocol):
        pass

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            BlockingClient(ClientSettings(connect_timeout=WAIT, source="127.0.0.2"), engine=engine) as c:
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(WAIT)
        handle = c.open_datagram(Endpoint("127.0.0.1", srv.getsockname()[1]), _Quiet)
        c.call(lambda: handle.transport.sendto(b"ping"))
        data, peer = srv.recvfrom(100)
    assert data == b"ping" and peer[0] == "127.0.0.2"


def test_source_errors_are_one_line(engine: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as lst:
        port = lst.getsockname()[1]
        with BlockingClient(ClientSettings(connect_timeout=WAIT, source="::1"), engine=engine) as c, \
                pytest.raises(ResolveError, match="no IPv4 address"):
            c.connect(Endpoint("127.0.0.1", port), _Record)  # an IPv6 source for an IPv4 server
        with BlockingClient(ClientSettings(connect_timeout=WAIT, source="192.0.2.1"), engine=engine) as c, \
                pytest.raises(AddressInUse, match="not an address of this host"):
            c.connect(Endpoint("127.0.0.1", port), _Record)  # TEST-NET-1: never this host's
