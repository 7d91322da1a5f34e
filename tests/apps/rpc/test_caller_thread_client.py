"""The RPC client turns a select/poll/epoll engine on the thread that waits (no engine thread).

Each call writes its request on the caller's thread and reads the answer there while it waits
(a future's ``result()`` turns the engine too). What must still hold: no thread is started; one
client shared by many threads answers each thread's calls; a notification leaves at once though
nobody waits afterwards; closing from a done callback ends the client; ``background=True``
keeps an engine thread, so futures complete with nobody waiting (``concurrent.futures.wait``).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from socklab import rpc
from socklab.apps.rpc.service import Service
from socklab.apps.rpc.settings import RpcClientSettings
from socklab.core.errors import ClosedError

from .helpers import rpc_server

SCHEMES = ("tcp", "http", "ws")
NOTIFIED = threading.Event()


def _service() -> Service:
    svc = Service("caller")

    @svc.method(inline=True)
    def add(a: int, b: int) -> int:
        return a + b

    @svc.method(inline=True)
    def poke() -> None:
        NOTIFIED.set()

    return svc


@pytest.fixture(scope="module")
def server() -> Iterator[rpc.RpcServer]:
    with rpc_server(service=_service()) as rs:
        yield rs


def url_of(server: rpc.RpcServer, scheme: str) -> str:
    return next(u for u in server.urls if u.startswith(scheme + "://"))


def _client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("socklab-client")]


@pytest.mark.parametrize("engine", ["select", "poll", "epoll"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_engine_thread_and_the_answers_read_by_the_caller(server: rpc.RpcServer, scheme: str,
                                                            engine: str) -> None:
    before = _client_threads()
    with rpc.connect(url_of(server, scheme), RpcClientSettings(engine=engine, timeout=10)) as c:
        assert _client_threads() == before
        assert [c.add(i, 1) for i in range(50)] == [i + 1 for i in range(50)]
        if scheme != "http":
            futures = [c.submit("add", i, 2) for i in range(50)]
            assert [f.result(10) for f in futures] == [i + 2 for i in range(50)]
            assert c.submit("add", 1, 1).exception(10) is None
        assert _client_threads() == before


@pytest.mark.parametrize("scheme", SCHEMES)
def test_threads_share_one_client(server: rpc.RpcServer, scheme: str) -> None:
    errors: list[BaseException] = []
    with rpc.connect(url_of(server, scheme), timeout=20) as c:
        def worker(k: int) -> None:
            try:
                for i in range(100):
                    assert c.add(k * 1000, i) == k * 1000 + i
                    if scheme != "http" and i % 10 == 0:
                        futures = [c.submit("add", k, j) for j in range(5)]
                        assert [f.result(20) for f in futures] == [k + j for j in range(5)]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_future_waited_on_another_thread(server: rpc.RpcServer, scheme: str) -> None:
    with rpc.connect(url_of(server, scheme), timeout=10) as c:
        fut = c.submit("add", 20, 22)
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(fut.result(10)))
        t.start()
        t.join(20)
        assert got == [42]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_notification_leaves_with_nobody_waiting(server: rpc.RpcServer, scheme: str) -> None:
    NOTIFIED.clear()
    with rpc.connect(url_of(server, scheme), timeout=10) as c:
        c.notify("poke")
        assert NOTIFIED.wait(10), "the notification waited for the next call to be written"


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
def test_close_from_a_done_callback(server: rpc.RpcServer, scheme: str) -> None:
    c = rpc.connect(url_of(server, scheme), timeout=10)
    fut = c.submit("add", 1, 2)
    fut.add_done_callback(lambda f: c.close())
    assert fut.result(10) == 3
    with pytest.raises(ClosedError):
        c.add(1, 1)
    c.close()


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
def test_background_keeps_an_engine_thread(server: rpc.RpcServer, scheme: str) -> None:
    with rpc.connect(url_of(server, scheme), timeout=10, background=True) as c:
        assert _client_threads()
        futures = [c.submit("add", i, 3) for i in range(20)]
        _, pending = concurrent.futures.wait(futures, timeout=10)  # nobody turns anything here
        assert not pending and [f.result() for f in futures] == [i + 3 for i in range(20)]
