"""``async def`` handlers run on the engine's own loop where it has one, through a capability.

The asyncio and uvloop engines run a coroutine handler as a task of their loop, on the engine's
thread (no thread hop): ``Engine.start_coroutine`` says so. The server used to take the loop out
of the engine (``getattr(engine, "loop")``) - issue 18's "rpc reaches into the aio engine's
loop". Every other engine answers ``None`` and the coroutine runs on the dispatcher's own loop.
"""

from __future__ import annotations

import asyncio
import threading

from socklab import rpc
from socklab.apps.rpc.service import Service

from .helpers import rpc_server


def thread_service() -> Service:
    svc = Service()

    @svc.method(inline=True)
    def engine_thread() -> str:
        return threading.current_thread().name

    @svc.method
    async def coroutine_thread() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    return svc


def test_where_a_coroutine_handler_runs(engine: str) -> None:
    with rpc_server(engine, service=thread_service(), listen=("tcp://127.0.0.1:0",)) as rs, \
            rpc.connect(rs.urls[0], timeout=10) as c:
        engine_thread, coroutine_thread = c.engine_thread(), c.coroutine_thread()
        if engine in ("asyncio", "uvloop"):
            assert coroutine_thread == engine_thread
        else:
            assert coroutine_thread == "socklab-rpc-asyncio"


def test_the_server_does_not_take_the_engines_loop() -> None:
    import inspect

    from socklab.apps.rpc import server

    source = inspect.getsource(server)
    assert ".loop" not in source and '"loop"' not in source
