"""The RPC client on socklab's engines, and its one settings object (issue 18 steps 1 and 5).

The channels are protocols on an engine (socklab.runtime.client), so the same client runs on
every engine: tcp://, http:// and ws:// each make calls, a notification and a batch on all eight.
A burst larger than both sides' buffers completes: the server stops reading a client that does not
read its answers, so a client that stopped reading while its own requests back up would
deadlock with it (the burst times out when ``keep_reading_when_full`` is not asked for). The
settings: one RpcClientSettings; keyword arguments are checked changes to it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from socklab import rpc
from socklab.apps.rpc.settings import RpcClientSettings
from socklab.core.errors import UsageError

from .helpers import rpc_server

SCHEMES = ("tcp", "http", "ws")


@pytest.fixture(scope="module")
def server() -> Iterator[rpc.RpcServer]:
    with rpc_server() as rs:
        yield rs


def url_of(server: rpc.RpcServer, scheme: str) -> str:
    return next(u for u in server.urls if u.startswith(scheme + "://"))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_client_on_every_engine(server: rpc.RpcServer, engine: str, scheme: str) -> None:
    with rpc.connect(url_of(server, scheme), RpcClientSettings(engine=engine, timeout=10)) as c:
        assert c.subtract(42, 23) == 19
        c.notify("update", 1)
        futures = [c.submit("add", i, 1) for i in range(20)]
        assert [f.result(10) for f in futures] == [i + 1 for i in range(20)]
        with c.batch() as b:
            total = b.call("sum", 1, 2, 4)
        assert total.result() == 7
        assert c.connections == 1


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
def test_a_burst_larger_than_both_sides_buffers(server: rpc.RpcServer, scheme: str) -> None:
    payload = "z" * 20_000
    with rpc.connect(url_of(server, scheme), timeout=60) as c:
        futures = [c.submit("echo", payload) for _ in range(2000)]  # 40 MB each way, nothing read meanwhile
        assert all(f.result(60) == payload for f in futures)


def test_settings_and_their_changes(server: rpc.RpcServer) -> None:
    base = RpcClientSettings(timeout=7.0, retries=1)
    with rpc.connect(url_of(server, "tcp"), base, framing="content-length") as c:
        assert (c.settings.timeout, c.settings.retries, c.settings.framing) == (7.0, 1, "content-length")
        assert c.sum(1, 2, 3) == 6
    assert base.framing == "ndjson"  # the caller's object is not changed
    with pytest.raises(UsageError, match="bogus"):
        rpc.connect(url_of(server, "tcp"), bogus=1)
    with pytest.raises(UsageError, match="--timeout"):
        rpc.connect(url_of(server, "tcp"), timeout=0)
    with pytest.raises(UsageError, match="tls://"):
        rpc.connect(url_of(server, "tcp"), pin="00" * 32)
    with pytest.raises(UsageError, match="--framing"):
        RpcClientSettings(framing="xml").validate()


def test_the_async_client_takes_the_same_settings(server: rpc.RpcServer) -> None:
    async def main() -> None:
        settings = RpcClientSettings(timeout=10, framing="content-length")
        async with await rpc.AsyncClient.connect(url_of(server, "tcp"), settings) as c:
            assert await asyncio.gather(*(c.add(i, 1) for i in range(100))) == [i + 1 for i in range(100)]
            assert c.settings.framing == "content-length"

    asyncio.run(main())


def test_rpc_call_builds_its_options_from_the_settings() -> None:
    out = subprocess.run([sys.executable, "-m", "socklab", "rpc", "call", "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for option in ("--timeout", "--framing", "--connect-timeout", "--cafile", "--insecure", "--pin",
                   "--server-name"):
        assert option in out.stdout, option
    offered = {line.split()[0].rstrip(",") for line in out.stdout.splitlines() if line.strip().startswith("--")}
    for library_only in ("--tls", "--retries", "--engine", "--max-queued", "--reconnect"):
        assert library_only not in offered, library_only


def test_rpc_call_with_settings_options(server: rpc.RpcServer) -> None:
    out = subprocess.run([sys.executable, "-m", "socklab", "rpc", "call", "--connect-timeout", "3",
                          "--timeout", "5", "--framing", "content-length", url_of(server, "tcp"), "subtract",
                          "5", "3"], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout.strip()) == (0, "2"), out.stderr
    out = subprocess.run([sys.executable, "-m", "socklab", "rpc", "call", "--timeout", "0", url_of(server, "tcp"),
                          "add", "1", "2"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--timeout" in out.stderr and len(out.stderr.strip().splitlines()) == 1
