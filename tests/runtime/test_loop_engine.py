"""``loop_engine()``: a client's protocol driven by the caller's own asyncio (or uvloop) loop.

An async client must not need a thread: ``connect(..., engine=loop_engine())`` from a coroutine
calls the protocol on that loop, in the contract's order, and ``close()`` leaves the loop alone.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.errors import ConnectionRefused
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint
from socklab.runtime.client import connect, loop_engine
from tests.conftest import running_server


class Collect(Protocol):
    def __init__(self, send: bytes) -> None:
        self.send, self.got = send, bytearray()
        self.loop = asyncio.get_running_loop()
        self.enough = asyncio.Event()
        self.lost = asyncio.Event()
        self.threads: set[threading.Thread] = set()

    def connection_made(self, transport: Any) -> None:
        self.threads.add(threading.current_thread())
        transport.write(self.send)

    def data_received(self, data: bytes) -> None:
        assert asyncio.get_running_loop() is self.loop  # on the caller's loop, no thread hop
        self.threads.add(threading.current_thread())
        self.got += data
        if len(self.got) >= len(self.send):
            self.enough.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set()


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_echo_on_the_callers_loop(kind: str) -> None:
    data = bytes(range(256)) * 400  # 100 kB
    with running_server(EchoProtocol) as srv:
        async def main() -> Collect:
            engine = loop_engine()
            assert engine.name == kind
            proto = Collect(data)
            handle = connect(Endpoint("127.0.0.1", srv.port), lambda: proto, engine=engine)
            await asyncio.wait_for(proto.enough.wait(), 10)
            assert handle.protocol is proto and handle.connected.is_set()
            engine.close()  # aborts what it opened ...
            await asyncio.wait_for(proto.lost.wait(), 10)
            assert asyncio.get_running_loop().is_running()  # ... and leaves the loop running
            return proto

        loop = new_loop(kind)
        try:
            proto = loop.run_until_complete(main())
        finally:
            loop.close()
        assert bytes(proto.got) == data
        assert proto.threads == {threading.main_thread()}


def test_a_refused_connect_calls_on_error_on_the_loop() -> None:
    with running_server(EchoProtocol) as srv:
        port = srv.port

    async def main() -> BaseException:
        failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        connect(Endpoint("127.0.0.1", port), lambda: Collect(b"x"), engine=loop_engine(),
                on_error=failed.set_result)
        return await asyncio.wait_for(failed, 10)

    assert isinstance(asyncio.run(main()), ConnectionRefused)


def test_no_running_loop() -> None:
    with pytest.raises(RuntimeError):
        loop_engine()
