"""socklab bench: every contender gets the same warm-up before its measured window (issue 19).

A plain asyncio server runs ~3x faster after it has met one EOF (glibc raises its mmap threshold
when the 256 KiB read block of a closed connection is freed), so a benchmark that warms one server
and not the other compares luck. The load generator opens one connection per server and closes it
without data, waits for the server to close its side, and only then starts the load; ``--cold``
skips it. These tests watch it from the server's side and in the JSON of every contender.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from socklab.tools.bench.procs import server_specs
from socklab.tools.bench.runner import Load, run_echo, run_loadgen

QUICK = Load(connections=3, size=512, pipeline=1, duration=0.2, warmup=0.05)


@pytest.fixture(scope="module", autouse=True)
def bench_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("bench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOCKLAB_BENCH_CACHE", str(d))
        yield d


class RecordingEcho:
    """A threaded echo server that logs, in order, each connection's accept, first data and EOF."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.events: list[tuple[str, int, int]] = []  # (what, connection number, bytes so far)
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _log(self, what: str, n: int, got: int) -> None:
        with self.lock:
            self.events.append((what, n, got))

    def _accept(self) -> None:
        n = 0
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self._log("accept", n, 0)
                t = threading.Thread(target=self._serve, args=(conn, n), daemon=True)
                t.start()
                self.threads.append(t)
                n += 1

    def _serve(self, conn: socket.socket, n: int) -> None:
        got = 0
        with conn:
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    if got == 0:
                        self._log("data", n, len(data))
                    got += len(data)
                    conn.sendall(data)
            self._log("eof", n, got)  # before the close: the peer cannot see our FIN before this line

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.accepter.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture
def recorder() -> Iterator[RecordingEcho]:
    srv = RecordingEcho()
    try:
        yield srv
    finally:
        srv.close()


def test_the_server_sees_an_empty_connection_close_before_any_load(recorder: RecordingEcho) -> None:
    res = run_loadgen("127.0.0.1", recorder.port, QUICK)
    assert res["warm"] == {"tcp_empty": "closed by server", "seconds": res["warm"]["seconds"]}
    assert res["requests"] > 0
    # Connection 0 came, sent nothing and ended - all before connection 1 was even accepted.
    first_other = recorder.events.index(("accept", 1, 0))
    assert recorder.events[:first_other] == [("accept", 0, 0), ("eof", 0, 0)]
    assert all(n != 0 for what, n, _ in recorder.events[first_other:])


def test_cold_skips_the_warm_up(recorder: RecordingEcho) -> None:
    cold = Load(connections=3, size=512, pipeline=1, duration=0.2, warmup=0.05, cold=True)
    assert "--cold" in cold.argv() and "--cold" not in QUICK.argv()
    res = run_loadgen("127.0.0.1", recorder.port, cold)
    assert res["warm"] is None and res["requests"] > 0
    # The first connection is one of the load's: its first bytes are the 16-byte ping.
    assert recorder.events[0] == ("accept", 0, 0) and ("data", 0, 16) in recorder.events
    assert ("eof", 0, 0) not in recorder.events


def test_every_contender_is_warmed_alike_engine_reference_and_c() -> None:
    """Interleaved engine + reference runs and the C server: each sample says it was warmed."""
    specs = server_specs(["asyncio"], references=True, with_c=True, targets=[])
    assert [s.kind for s in specs] == ["c", "reference", "socklab"]
    results = run_echo(specs, QUICK, repeats=1, interleave=True, slice_ms=50)
    for r in results:
        assert r.error is None, r.error
        assert r.samples, r.name
        for s in r.samples:
            assert s["warm"]["tcp_empty"] == "closed by server", (r.name, s["warm"])


# ---- UDP (bench echo --udp): the udp_loadgen's warm-up is an empty datagram ----------------------

class DatagramEcho:
    """A UDP echo server in a thread that logs each datagram's length; ``drop_empty`` ignores empty ones."""

    def __init__(self, drop_empty: bool) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lengths: list[int] = []
        self.drop_empty = drop_empty
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, peer = self.sock.recvfrom(65536)
                if self.stopping:
                    return
                self.lengths.append(len(data))
                if data or not self.drop_empty:
                    self.sock.sendto(data, peer)

    def close(self) -> None:
        self.stopping = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poke:  # wakes the recvfrom
            poke.sendto(b"stop", ("127.0.0.1", self.port))
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("drop_empty", [False, True])
def test_udp_generator_sends_an_empty_datagram_first_and_says_if_it_came_back(drop_empty: bool) -> None:
    srv = DatagramEcho(drop_empty)
    try:
        load = Load(connections=3, size=64, duration=0.2, warmup=0.05, proto="udp")
        res = run_loadgen("127.0.0.1", srv.port, load)
        assert res["warm"]["udp_empty"] == ("dropped" if drop_empty else "echoed")
        assert res["requests"] > 0 and res["held"] == 3 and res["size"] == 64
        assert srv.lengths[:2] == [0, 16]  # the empty one, then the datagram whose echo proves it was handled
        cold = run_loadgen("127.0.0.1", srv.port, Load(connections=3, size=64, duration=0.2, warmup=0.05,
                                                        proto="udp", cold=True))
        assert cold["warm"] is None
    finally:
        srv.close()


def test_udp_every_contender_is_warmed_engine_reference_and_c() -> None:
    from socklab.tools.bench.procs import udp_server_specs

    specs = udp_server_specs(["epoll", "asyncio"], references=True, with_c=True)
    assert [s.name for s in specs] == ["C udp loop", "ref:udp_blocking", "epoll", "ref:udp_asyncio_protocol",
                                       "asyncio", "ref:udp_selectors"]
    load = Load(connections=3, size=64, duration=0.2, warmup=0.05, proto="udp")
    results = {r.name: r for r in run_echo(specs, load, repeats=1, interleave=True, slice_ms=50)}
    for r in results.values():
        assert r.error is None, r.error
        assert r.samples and all(s["warm"]["udp_empty"] in ("echoed", "dropped") for s in r.samples), r.name
    assert results["epoll"].reference == "ref:udp_blocking"
    assert results["asyncio"].samples[0]["paired_rps"] > 0  # interleaved with its DatagramProtocol reference
    # The plain loops and C echo an empty datagram; so does the epoll engine.
    for name in ("C udp loop", "ref:udp_blocking", "ref:udp_selectors", "epoll"):
        assert results[name].samples[0]["warm"]["udp_empty"] == "echoed", name


# ---- WebSocket (bench ws): loadgen --ws upgrades, then echoes text frames ------------------------

def test_ws_every_contender_is_warmed_and_echoes_frames() -> None:
    from socklab.tools.bench.ws import ws_server_specs

    specs = ws_server_specs(["epoll"], references=True, peers=False)
    assert [(s.name, s.reference) for s in specs] == [("ref:aiohttp_uvloop", None), ("epoll", "ref:aiohttp_uvloop")]
    against_picows = ws_server_specs(["epoll", "uvloop"], references=True, against="picows")
    assert [(s.name, s.reference) for s in against_picows][:3] == [
        ("ref:picows", None), ("epoll", "ref:picows"), ("uvloop", "ref:picows")]
    assert [s.name for s in against_picows].count("ref:picows") == 1  # not measured again on its own
    for size in (256, 70_000):  # a 2-byte length and an 8-byte length frame header
        load = Load(connections=2, size=size, duration=0.2, warmup=0.05, proto="ws")
        results = run_echo(specs, load, repeats=1, interleave=True, slice_ms=50)
        for r in results:
            assert r.error is None, r.error
            [s] = r.samples
            assert s["warm"]["tcp_empty"] == "closed by server", r.name
            assert s["requests"] > 0 and s["errors"] == 0 and s["held"] == 2
            frame = size + 2 + (2 if size < 65536 else 8)  # the server's unmasked frame
            # Bytes are counted as they arrive inside the window, a reply when it completes: each
            # connection's first reply may have begun before the window (seen under a CPU hog), so
            # at most one frame per connection is short - every other reply is a whole frame.
            assert s["bytes"] >= (s["requests"] - s["held"]) * frame


def test_ws_generator_fails_when_the_upgrade_is_refused(recorder: RecordingEcho) -> None:
    """An echo server sends the request back: not "HTTP/1.1 101", so every connection fails."""
    from socklab.core.errors import SocklabError

    with pytest.raises(SocklabError, match="websocket upgrade refused"):
        res = run_loadgen("127.0.0.1", recorder.port, Load(connections=2, size=256, duration=0.2, warmup=0.05,
                                                             proto="ws"))
        raise SocklabError(res["first_error"])


# ---- TLS (bench echo --tls): an empty connection, then a record split across two writes ----------

def test_tls_every_contender_is_warmed_with_a_split_record(tmp_path: Path) -> None:
    from socklab.tools.bench.tls import make_certificate, tls_server_specs

    cert, key = make_certificate(tmp_path)
    specs = tls_server_specs(["asyncio", "uvloop", "threads"], references=True, cert=cert, key=key)
    assert [(s.name, s.reference) for s in specs] == [  # each engine beside the plain TLS server on its mechanism
        ("ref:tls_asyncio_protocol", None), ("asyncio", "ref:tls_asyncio_protocol"),
        ("ref:tls_uvloop_protocol", None), ("uvloop", "ref:tls_uvloop_protocol"),
        ("ref:tls_threading_tcpserver", None), ("threads", "ref:tls_threading_tcpserver")]
    load = Load(connections=2, size=1024, duration=0.2, warmup=0.05, proto="tls")
    for r in run_echo(specs, load, repeats=1, interleave=True, slice_ms=50):
        assert r.error is None, r.error
        for s in r.samples:
            # the split record's echo came back: the server handled it before the load began
            assert s["warm"]["tls_split"] == "echoed", (r.name, s["warm"])
            # closed at once; the stdlib's blocking handshake answers the EOF with a TLS alert first
            assert s["warm"]["tcp_empty"] in ("closed by server", "server sent data, then closed"), (r.name, s["warm"])
            assert s["requests"] > 0 and s["errors"] == 0 and s["held"] == 2
    cold = run_echo(specs[:1], Load(connections=2, size=1024, duration=0.2, warmup=0.05, proto="tls", cold=True),
                    repeats=1)
    assert cold[0].samples[0]["warm"] is None


# ---- the same warm-up for benchmarks driven from Python (http_bench.py: wrk) ---------------------

def test_python_warm_up_helpers_tcp_and_udp(recorder: RecordingEcho) -> None:
    from socklab.tools.bench.warm import warm_tcp, warm_udp

    assert warm_tcp("127.0.0.1", recorder.port) == "closed by server"
    assert recorder.events[:2] == [("accept", 0, 0), ("eof", 0, 0)]
    for drop_empty in (False, True):
        srv = DatagramEcho(drop_empty)
        try:
            assert warm_udp("127.0.0.1", srv.port) == ("dropped" if drop_empty else "echoed")
            assert srv.lengths[:2] == [0, 16]
        finally:
            srv.close()
