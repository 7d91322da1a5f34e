"""The pool engine's "all pool workers are busy" warning: once per server, the address as host:port.

Issue 15: it appeared twice and showed a Python tuple (``('127.0.0.1', 51234)``) as the address.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from socklab.core.protocol import Protocol
from socklab.core.settings import ServerSettings
from socklab.core.trace import TraceEvent, Tracer
from socklab.core.transport import Transport
from socklab.runtime import Server

pytestmark = pytest.mark.timeout(60)


class _Hello(Protocol):
    """Greets each client at once: a client that got its greeting holds a worker."""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        transport.write(b"hi\n")


class _Queued:
    """A trace sink counting the 'queued' notes (one per connection that waits for a worker)."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, event: TraceEvent) -> None:
        if event.op == "note" and event.detail and " waits " in event.detail:
            with self.cond:
                self.notes.append(event.detail)
                self.cond.notify_all()

    def wait(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.notes) >= count, 20)


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for c in opened:
        c.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_busy_warning_comes_once_per_server_with_host_port(host: str, caplog: pytest.LogCaptureFixture,
                                                               clients: list[socket.socket]) -> None:
    caplog.set_level(logging.WARNING, logger="socklab")
    tracer = Tracer(engine="pool")
    queued = _Queued()
    tracer.add_sink(queued)
    srv = Server(ServerSettings(engine="pool", host=host, port=0, workers=1, queue_size=8), tracer=tracer)
    try:
        ports = [srv.listen(_Hello)[1], srv.listen(_Hello)[1]]  # two listeners, one server
        srv.start()
        first = socket.create_connection((host, ports[0]), timeout=10)
        clients.append(first)
        assert first.recv(10) == b"hi\n"  # the one worker now serves this client
        for i in range(4):  # these wait in the queue, on both listeners
            clients.append(socket.create_connection((host, ports[i % 2]), timeout=10))
        assert queued.wait(4), queued.notes
    finally:
        srv.shutdown(timeout=0)
    warnings = [r.getMessage() for r in caplog.records if "pool workers are busy" in r.getMessage()]
    assert len(warnings) == 1, warnings
    local = clients[1].getsockname()
    expected = f"[{local[0]}]:{local[1]}" if ":" in local[0] else f"{local[0]}:{local[1]}"
    assert f"(first: {expected})" in warnings[0]
    assert "('" not in warnings[0] and all("('" not in n for n in queued.notes)
    assert len(queued.notes) == 4 and all("pool workers are busy" not in n for n in queued.notes)
