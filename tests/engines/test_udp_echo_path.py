"""The declared UDP echo (``DatagramProtocol.zero_copy_echo``) and the batched datagram paths (issue 19).

An untraced ``EchoDatagramProtocol`` declares itself an echo; every engine then answers each
datagram from its receive buffer without calling ``datagram_received`` (``recvfrom_into`` one
reused buffer, ``sendto`` a view of it; on asyncio/uvloop too, which read their UDP socket
themselves when the loop says it is readable). The replies must still be exact, in
order, for every size (the view is reused while the size stays the same), empty ones included,
and counted in the engine's statistics. A reply the kernel will not take at once is queued, and
the ones after it queue behind it: the order a peer sees never changes.
"""

from __future__ import annotations

import os
import select
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoDatagramProtocol
from socklab.core.trace import Tracer
from socklab.engines._datagram import DatagramEndpointBase
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)

# Sizes change from one datagram to the next and repeat, with different contents each time.
SIZES = [64, 64, 1200, 0, 64, 1, 1, 65507, 1200, 1200, 0, 0, 64, 512, 64]


def _counting_echo(made: list[EchoDatagramProtocol], calls: list[int]) -> Any:
    def factory() -> EchoDatagramProtocol:
        proto = EchoDatagramProtocol()
        made.append(proto)
        original = proto.datagram_received

        def counted(data: bytes, addr: Any) -> None:  # an instance attribute: the class is unchanged
            calls.append(len(data))
            original(data, addr)

        proto.datagram_received = counted  # type: ignore[method-assign]
        return proto

    return factory


def _exchange(port: int, payloads: list[bytes]) -> list[bytes]:
    """Send every payload at once (the server meets them in bursts), then read every echo."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
        p.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        p.settimeout(10)
        p.connect(("127.0.0.1", port))
        for data in payloads:
            p.send(data)
        return [p.recv(70000) for _ in payloads]


def _wait_for_count(srv: Any, count: int) -> int:
    deadline = time.monotonic() + 5
    while srv.statistics().datagrams_in < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(srv.statistics().datagrams_in)


def test_the_declared_echo_answers_every_size_without_calling_the_protocol(engine: str) -> None:
    made: list[EchoDatagramProtocol] = []
    calls: list[int] = []
    with running_server(_counting_echo(made, calls), engine, udp=True) as srv:
        for _ in range(3):  # one 64 KiB datagram per round: the server's receive buffer holds it
            payloads = [os.urandom(n) for n in SIZES]
            assert _exchange(srv.port, payloads) == payloads
        assert _wait_for_count(srv, 3 * len(SIZES)) == 3 * len(SIZES)
    assert made and made[0].zero_copy_echo
    assert calls == [], f"{engine}: the declared echo still called datagram_received {len(calls)} times"


def test_traced_the_protocol_is_called_for_every_datagram(engine: str) -> None:
    made: list[EchoDatagramProtocol] = []
    calls: list[int] = []
    payloads = [os.urandom(n) for n in SIZES]
    tracer = Tracer(engine)
    events = tracer.record()
    with running_server(_counting_echo(made, calls), engine, udp=True, tracer=tracer) as srv:
        assert _exchange(srv.port, payloads) == payloads
        assert _wait_for_count(srv, len(payloads)) == len(payloads)
    assert made and not made[0].zero_copy_echo
    assert calls == SIZES
    received = [e for e in events if e.op == "recvfrom"]
    assert len(received) == len(payloads), f"{engine}: the trace lost datagrams"
    # Every engine reads its UDP socket itself (asyncio/uvloop too: the loop only says when it is
    # readable), so every receive and send is a real system call on the endpoint's descriptor.
    sent = [e for e in events if e.op == "sendto"]
    assert len(sent) == len(payloads)
    assert {(e.level, e.fd is not None) for e in received + sent} == {("syscall", True)}


class _Changed(EchoDatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data[::-1], addr)


def test_a_subclass_that_changes_datagram_received_is_not_an_echo(engine: str) -> None:
    payloads = [os.urandom(n) for n in SIZES]
    with running_server(_Changed, engine, udp=True) as srv:
        assert _exchange(srv.port, payloads) == [d[::-1] for d in payloads]
        assert _wait_for_count(srv, len(payloads)) == len(payloads)


# ---- the echo burst when the kernel will not take a reply ------------------------------------------
class _Sock:
    """A UDP socket stand-in: queued datagrams to read; the second reply meets a full send buffer."""

    family = socket.AF_INET

    def __init__(self, incoming: list[bytes]) -> None:
        self.incoming = list(incoming)
        self.sent: list[bytes] = []
        self.full_at = {1}  # the reply with this index finds the buffer full once

    def fileno(self) -> int:
        return 1000

    def recvfrom_into(self, buf: bytearray, nbytes: int, flags: int) -> tuple[int, Any]:
        if not self.incoming:
            raise BlockingIOError
        data = self.incoming.pop(0)
        buf[:len(data)] = data
        return len(data), ("127.0.0.1", 5000)

    def sendto(self, data: Any, flags: int, addr: Any) -> int:
        index = len(self.sent)
        if index in self.full_at:
            self.full_at.discard(index)
            raise BlockingIOError
        self.sent.append(bytes(data))
        return len(data)


class _Endpoint(DatagramEndpointBase):
    def __init__(self, sock: _Sock) -> None:
        engine = SimpleNamespace(tracer=None, settings=SimpleNamespace(max_buffer=1 << 20),
                                 stats=SimpleNamespace(datagrams_in=0))
        protocol = EchoDatagramProtocol()
        protocol.zero_copy_echo = True
        super().__init__(engine, sock, protocol)  # type: ignore[arg-type]
        self.watching = False

    def _watch_writable(self) -> None:
        self.watching = True

    def _unwatch_writable(self) -> None:
        self.watching = False

    def close(self) -> None:
        self._closed = True


def test_a_reply_the_kernel_refuses_is_queued_and_the_later_ones_wait_behind_it() -> None:
    sock = _Sock([b"one", b"two", b"three", b"four!", b"five"])
    endpoint = _Endpoint(sock)
    assert endpoint._echo_declared()
    assert endpoint._echo_burst(64, 0) == 5
    assert sock.sent == [b"one"]  # "two" met a full buffer; the rest of the burst queued behind it
    assert [d for d, _ in endpoint._pending] == [b"two", b"three", b"four!", b"five"]
    assert endpoint.watching
    # The next burst (the reading thread's: its first datagram already in the buffer) queues too.
    assert endpoint._echo_buf is not None
    endpoint._echo_buf[:3] = b"six"
    sock.incoming = [b"seven"]
    assert endpoint._echo_burst(64, 0, (3, ("127.0.0.1", 5000))) == 2
    assert sock.sent == [b"one"]
    endpoint._on_writable()
    assert sock.sent == [b"one", b"two", b"three", b"four!", b"five", b"six", b"seven"]
    assert not endpoint._pending and not endpoint.watching
    # Nothing queued any more: replies go straight out again, at most ``limit`` per burst.
    sock.incoming = [b"a", b"bb", b"bb", b"c"]
    assert endpoint._echo_burst(3, 0) == 3
    assert sock.sent[-3:] == [b"a", b"bb", b"bb"] and sock.incoming == [b"c"]


# ---- batches: recvmmsg/sendmmsg (Linux) -------------------------------------------------------------
class _Batch:
    """A stand-in for engines._mmsg.MmsgEcho: one batch of 4, whose replies the kernel partly refuses."""

    slots = 4

    def __init__(self, unsent: tuple[tuple[bytes, Any], ...], error: OSError | None) -> None:
        self.result = (unsent, error)
        self.batches = 0

    def receive(self, flags: int) -> int:
        if self.batches:
            raise BlockingIOError
        self.batches += 1
        return 4

    def send_back(self, got: int, flags: int) -> tuple[tuple[tuple[bytes, Any], ...], OSError | None]:
        return self.result


@pytest.mark.parametrize("error", [None, OSError(22, "Invalid argument")], ids=["refused", "failed"])
def test_a_batch_whose_replies_the_kernel_refuses(error: OSError | None) -> None:
    sock = _Sock([])
    sock.full_at = set()
    endpoint = _Endpoint(sock)
    assert endpoint._echo_declared()
    errors: list[BaseException] = []
    endpoint._error = lambda exc, action: errors.append(exc)  # type: ignore[method-assign]
    peer = ("127.0.0.1", 5000)
    endpoint._mmsg = _Batch(((b"c", peer), (b"d", peer)), error)
    assert endpoint._echo_batches(64, 0) == 4
    if error is None:  # the kernel took two: the other two go out one by one, in order
        assert sock.sent == [b"c", b"d"] and not errors
    else:  # the first of them failed: reported and dropped, the next one still sent
        assert sock.sent == [b"d"] and errors == [error]


def test_batched_senders_are_read_back_as_python_addresses() -> None:
    from socklab.engines import _mmsg

    if not _mmsg.AVAILABLE:
        pytest.fail("recvmmsg/sendmmsg missing: the batched echo is for Linux, which this suite runs on")
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_DGRAM) as server, \
                socket.socket(family, socket.SOCK_DGRAM) as a, socket.socket(family, socket.SOCK_DGRAM) as b:
            server.bind((host, 0))
            server.setblocking(False)
            a.sendto(b"from a", server.getsockname())
            b.sendto(b"", server.getsockname())
            batch = _mmsg.MmsgEcho(server.fileno(), slots=4)
            # On loopback a datagram is queued before sendto returns: both are there now.
            assert select.select([server], [], [], 5)[0]
            assert batch.receive(0) == 2
            got = 2
            first, second = batch._datagram(0, 6), batch._datagram(1, 0)
            assert first[0] == b"from a" and second[0] == b""
            assert first[1][:2] == (host, a.getsockname()[1]) and second[1][:2] == (host, b.getsockname()[1])
            unsent, error = batch.send_back(got, 0)
            assert (unsent, error) == ((), None)
            a.settimeout(5)
            b.settimeout(5)
            assert a.recv(100) == b"from a" and b.recv(100) == b""
