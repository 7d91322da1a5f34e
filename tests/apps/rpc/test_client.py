"""The clients against a real server: proxy, notifications, batches, multiplexing, timeouts, reconnect."""

from __future__ import annotations

import asyncio
import threading

import pytest

from socklab import rpc
from socklab.apps.rpc.service import demo_service
from socklab.core.errors import BrokenError, ConnectionRefused, NetworkError, UsageError

from .helpers import rpc_server


def gated_service() -> rpc.Service:
    svc = demo_service()
    gates: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def gate(name: str) -> threading.Event:
        with lock:
            return gates.setdefault(name, threading.Event())

    @svc.method
    def wait_for_release(name: str) -> str:
        """Block until release(name) is called (proves calls are multiplexed, answered out of order)."""
        gate(name).wait(20)
        return "released"

    @svc.method
    def release(name: str) -> bool:
        gate(name).set()
        return True

    return svc


@pytest.fixture(scope="module")
def server() -> rpc.RpcServer:
    with rpc_server(service=gated_service(), call_timeout=1) as rs:
        yield rs


@pytest.fixture(params=["tcp", "http", "ws"])
def url(request: pytest.FixtureRequest, server: rpc.RpcServer) -> str:
    return next(u for u in server.urls if u.startswith(request.param + "://"))


def test_calls_proxy_notifications_batches(url: str) -> None:
    with rpc.connect(url, timeout=10) as c:
        assert c.call("subtract", 42, 23) == 19
        assert c.subtract(minuend=42, subtrahend=23) == 19
        assert c.async_add(1, 2) == 3
        assert c.echo({"nested": [1, "two", None]}) == {"nested": [1, "two", None]}
        assert c.call("rpc.discover")["service"] == "demo"
        c.notify("update", 1, 2, 3)
        with c.batch() as b:
            total = b.call("sum", 1, 2, 4)
            missing = b.call("nope")
            b.notify("notify_hello", 7)
        assert total.result() == 7
        assert isinstance(missing.exception(), rpc.MethodNotFound)
        b2 = c.batch()
        b2.notify("update")
        assert b2.send() == []  # a batch of notifications gets no answer


def test_typed_remote_errors(url: str) -> None:
    with rpc.connect(url, timeout=10) as c:
        with pytest.raises(rpc.ServerError) as info:
            c.fail(-32050, "it broke", {"why": "test"})
        assert (info.value.code, info.value.message, info.value.data) == (-32050, "it broke", {"why": "test"})
        with pytest.raises(rpc.InvalidParams):
            c.subtract(1)
        with pytest.raises(rpc.MethodNotFound):
            c.no.such.method()
        with pytest.raises(rpc.InternalError) as internal:
            c.crash()
        assert "secret" not in str(internal.value)
        with pytest.raises(UsageError):
            c.call("subtract", 1, subtrahend=2)


def test_per_call_timeout_then_the_connection_still_works(url: str) -> None:
    with rpc.connect(url, timeout=10) as c:
        with pytest.raises(rpc.CallTimeout):
            c.call("async_sleep", 30, timeout=0.2)
        assert c.add(2, 2) == 4


def test_server_side_call_timeout(url: str) -> None:
    with rpc.connect(url, timeout=10) as c, pytest.raises(rpc.RequestTimeout):
        c.async_sleep(30)  # the server's call_timeout is 1 s


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
def test_many_calls_in_flight_answered_out_of_order(server: rpc.RpcServer, scheme: str) -> None:
    url = next(u for u in server.urls if u.startswith(scheme))
    with rpc.connect(url, timeout=10) as c:
        blocked = c.submit("wait_for_release", scheme)
        futures = [c.submit("add", i, 1) for i in range(300)]
        assert [f.result(10) for f in futures] == [i + 1 for i in range(300)]
        assert not blocked.done()  # answered after the 300 that came later
        assert c.release(scheme) is True
        assert blocked.result(10) == "released"
        assert c.connections == 1


def test_reconnect_after_the_server_dropped_the_connection() -> None:
    with rpc_server(max_message_size=1000) as rs:
        with rpc.connect(rs.urls[0], timeout=10) as c:
            assert c.add(1, 1) == 2
            with pytest.raises((rpc.InvalidRequest, BrokenError)):
                c.echo("x" * 2000)  # over the limit: the server answers -32600 and closes
            # A call sent before the client noticed the close fails (it was in flight when the
            # connection dropped: never resent behind the caller's back); the next one reconnects.
            try:
                result = c.add(2, 2)
            except BrokenError:
                result = c.add(2, 2)
            assert result == 4
            assert c.connections == 2


def test_connect_retries_with_backoff_then_fails() -> None:
    with rpc_server(listen=("tcp://127.0.0.1:0",)) as rs:
        url = rs.urls[0]
    with pytest.raises(ConnectionRefused):
        rpc.connect(url, retries=2, backoff=0.01)


def test_content_length_client() -> None:
    with rpc_server(listen=("tcp://127.0.0.1:0",)) as rs, \
            rpc.connect(rs.urls[0], framing="content-length", timeout=10) as c:
        assert c.sum(1, 2, 3) == 6


@pytest.mark.parametrize("scheme", ["tcp", "http", "ws"])
def test_async_client(server: rpc.RpcServer, scheme: str) -> None:
    url = next(u for u in server.urls if u.startswith(scheme))

    async def main() -> None:
        async with await rpc.AsyncClient.connect(url, timeout=10) as c:
            n = 200 if scheme != "http" else 20
            results = await asyncio.gather(*(c.add(i, i) for i in range(n)))
            assert results == [2 * i for i in range(n)]
            assert await c.call("subtract", minuend=5, subtrahend=3) == 2
            await c.notify("update", 1)
            out = await c.batch([("sum", [1, 2]), ("nope", None)])
            assert out[0] == 3 and isinstance(out[1], rpc.MethodNotFound)
            with pytest.raises(rpc.ServerError):
                await c.fail(-32001 - 50)
            with pytest.raises(rpc.CallTimeout):
                await c.call("async_sleep", 30, timeout=0.2)

    asyncio.run(main())


def test_http_client_resends_once_on_a_stale_keepalive_connection() -> None:
    with rpc_server(listen=("http://127.0.0.1:0/rpc",)) as rs, rpc.connect(rs.urls[0], timeout=10) as c:
        assert c.add(1, 1) == 2
        dropped = threading.Event()
        engine = rs.server.engine

        def drop_all() -> None:
            engine.abort_all()  # as if the server had closed the idle keep-alive connection
            dropped.set()

        rs.server.call_soon_threadsafe(drop_all)
        assert dropped.wait(10)
        assert c.add(2, 2) == 4
        assert c.connections == 1  # the channel reopened its socket itself; the client saw no failure


def test_unreadable_answer_fails_the_waiting_call_at_once() -> None:
    import socket as socket_mod

    with socket_mod.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        c = rpc.connect(f"tcp://127.0.0.1:{port}", timeout=10)
        conn, _ = listener.accept()
        with conn, c:
            fut = c.submit("add", 1, 2)
            conn.recv(1000)
            conn.sendall(b"this is not json\n")
            with pytest.raises(BrokenError):
                fut.result(10)


def test_tls_listeners_and_clients(tls_files: dict[str, str]) -> None:
    with rpc_server(listen=("tls://127.0.0.1:0", "https://127.0.0.1:0/rpc", "wss://127.0.0.1:0/ws",
                            "tcp://127.0.0.1:0"), tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as rs:
        assert [u.split(":")[0] for u in rs.urls] == ["tls", "https", "wss", "tcp"]
        for url in rs.urls:
            with rpc.connect(url, timeout=10, cafile=tls_files["ca"]) as c:
                assert c.subtract(42, 23) == 19

        async def main() -> None:
            async with await rpc.AsyncClient.connect(rs.urls[0], cafile=tls_files["ca"], timeout=10) as c:
                assert await c.add(1, 2) == 3

        asyncio.run(main())
        with pytest.raises(NetworkError):  # the system's CAs do not know this one
            rpc.connect(rs.urls[0], retries=0)


def test_tls_listener_needs_a_certificate() -> None:
    with pytest.raises(UsageError), rpc_server(listen=("tls://127.0.0.1:0",)):
        pass
