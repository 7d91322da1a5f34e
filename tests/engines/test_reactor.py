"""The reactor engines' own behaviour: timers, wake-ups, client connects, EMFILE back-off."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.errors import ConnectionRefused
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint
from socklab.engines import make_engine
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(30)
REACTORS = ["select", "poll", "epoll"]


@pytest.mark.parametrize("name", REACTORS)
def test_timers_run_in_order_and_cancel(name: str) -> None:
    engine = make_engine(name)
    fired: list[str] = []
    engine.call_later(0.03, lambda: fired.append("b"))
    engine.call_later(0.01, lambda: fired.append("a"))
    engine.call_later(0.02, lambda: fired.append("never")).cancel()
    engine.call_later(0.05, engine.stop)
    engine.run()
    engine.close()
    assert fired == ["a", "b"]


@pytest.mark.parametrize("name", REACTORS)
def test_call_soon_threadsafe_wakes_a_sleeping_loop(name: str) -> None:
    engine = make_engine(name)
    ran = threading.Event()
    ready = threading.Event()
    t = threading.Thread(target=engine.run, kwargs={"ready": ready.set})
    t.start()
    assert ready.wait(5)
    # No timers are pending, so the loop sleeps in poll() with no timeout: only the wake-up
    # socketpair can make it run the callback.
    engine.call_soon_threadsafe(ran.set)
    assert ran.wait(5)
    engine.stop()
    t.join(5)
    engine.close()
    assert not t.is_alive()


class _Client(Protocol):
    def __init__(self, done: threading.Event, got: list[bytes]) -> None:
        self.done, self.got = done, got

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"ping")
        transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.got.append(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.done.set()


@pytest.mark.parametrize("name", REACTORS)
def test_connect_stream_and_refused(name: str) -> None:
    with running_server(EchoProtocol, name) as srv:
        done, got = threading.Event(), []
        errors: list[BaseException] = []
        srv.engine.call_soon_threadsafe(lambda: srv.engine.connect_stream(
            Endpoint("127.0.0.1", srv.port), lambda: _Client(done, got)))
        assert done.wait(5)
        assert b"".join(got) == b"ping"
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
            failed = threading.Event()

            def on_error(exc: BaseException) -> None:
                errors.append(exc)
                failed.set()

            srv.engine.call_soon_threadsafe(lambda: srv.engine.connect_stream(
                Endpoint("127.0.0.1", port), lambda: _Client(threading.Event(), []), on_error=on_error))
            assert failed.wait(5)
        assert isinstance(errors[0], ConnectionRefused)


EMFILE_SERVER = textwrap.dedent("""
    import resource, sys
    from socklab import Server, ServerSettings
    from socklab.apps.echo.protocol import EchoProtocol
    from socklab.core.trace import Tracer
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    said = []
    def sink(event):  # the first back-off is said on stdout: the test's readiness signal
        if event.op == "note" and "EMFILE" in (event.detail or "") and not said:
            said.append(True)
            print("backing off", flush=True)
    tracer = Tracer(sys.argv[1])
    tracer.add_sink(sink)
    srv = Server(ServerSettings(engine=sys.argv[1], idle_timeout=0), tracer=tracer)
    srv.listen(EchoProtocol)
    srv.start()
    print(srv.port, flush=True)
    for line in sys.stdin:  # the test asks for the counters, then closes stdin
        print(srv.statistics().extra.get("accept_backoffs", 0), flush=True)
    srv.shutdown(timeout=1)
""")


@pytest.mark.parametrize("name", ["poll", "epoll"])
def test_emfile_backs_off_without_spinning_and_recovers(name: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER, name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    out = proc.stdout

    def read_lines() -> None:  # the server's lines, each an event the test waits for
        for ln in out:
            lines.put(ln)

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()

    def line(what: str) -> str:
        try:
            return lines.get(timeout=15)
        except queue.Empty:
            pytest.fail(f"the server never said {what}")

    clients: list[socket.socket] = []
    try:
        port = int(line("its port"))
        # 100 clients: the server (limited to 64 descriptors) accepts about 55, then accept() fails
        # with EMFILE while the rest wait in the listen backlog.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
        assert line("that accept() failed with EMFILE") == "backing off\n"
        since = time.monotonic()
        time.sleep(0.5)  # the subject: the server sits out of descriptors for a while
        proc.stdin.write("report\n")
        proc.stdin.flush()
        backoffs = int(line("its back-off count"))
        elapsed = time.monotonic() - since
        # A busy loop would retry accept() thousands of times in 0.5 s; backing off, a handful
        # (30 per 0.5 s measured: a loaded machine may sleep longer than asked).
        assert 1 <= backoffs <= 30 * max(1.0, elapsed / 0.5), f"{backoffs} accept retries in {elapsed:.2f} s"
        for c in clients:
            c.close()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
            probe.sendall(b"back")
            assert probe.recv(10) == b"back"
        assert time.monotonic() - t0 < 1.5, "no recovery within a second after descriptors freed up"
    finally:
        for c in clients:
            c.close()
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()  # by its pid
            proc.wait(5)
        reader.join(10)
        proc.stdout.close()


def test_select_refuses_descriptors_past_fd_setsize() -> None:
    from socklab.engines.reactor import SelectPoller

    with pytest.raises(OSError, match="FD_SETSIZE"):
        SelectPoller().register(2000, 1)


def test_select_refuses_one_connection_past_fd_setsize_and_keeps_serving() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is too low to run this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers: list[socket.socket] = []
    try:
        with running_server(EchoProtocol, "select") as srv:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as early:
                early.sendall(b"a")
                assert early.recv(1) == b"a"
                while len(fillers) < 1100 and (not fillers or fillers[-1].fileno() < 1030):
                    fillers.append(socket.socket())  # push the next accepted fd past 1023
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as late:
                    late.settimeout(5)
                    assert late.recv(10) == b""  # refused (closed), not hung
                early.sendall(b"b")
                assert early.recv(1) == b"b"  # the server is still serving
    finally:
        for f in fillers:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
