"""``socklab bench tap``: what the tap costs - bulk throughput and small-message latency, direct vs tapped.

Why this exists: a debugging relay that halves throughput or adds milliseconds changes the behaviour
it is meant to show. The bar: with no fault, bulk data through the tap at >= 0.6x a direct
connection, and < 0.2 ms added to the median round trip of a small message.

The tap runs as its own process (``socklab tap``), as a user would run it; the sink and echo
servers and the client are threads of this process, the same for the direct and the tapped run.
Runs are interleaved (direct, tap, direct, tap...) so a burst of load elsewhere hits both alike.

The sink, echo server and client are raw sockets, the same for the direct and the tapped run, so
the only difference measured is the tap.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import click

from socklab.cli.options import run_cli
from socklab.core.errors import SocklabError
from socklab.tools.bench.procs import process_cpu

__all__ = ["TapProcess", "bulk", "pingpong", "tap"]

SINK_BUFFER = 1024 * 1024  # as large as the sender's blocks: few recv_into calls, on both paths
READY_TIMEOUT = 20.0


def _serve(handle: Callable[[socket.socket], None]) -> tuple[socket.socket, threading.Thread]:
    """A listener on 127.0.0.1:0 whose accepted connections are passed, one at a time, to ``handle``."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return  # the listener was closed: the run is over
            with conn, contextlib.suppress(OSError):
                handle(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return lsock, t


def _sink(conn: socket.socket) -> None:
    """Read and discard with one reused 1 MiB buffer; answer b"k" after the client's FIN.

    The same sink (and the same client) serves the direct and the tapped run; neither socket's
    SO_SNDBUF/SO_RCVBUF is set, so the kernel autotunes both paths alike.
    """
    buf = bytearray(SINK_BUFFER)
    while conn.recv_into(buf):
        pass
    conn.sendall(b"k")


def _echo(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(65536):
        conn.sendall(data)


def bulk(port: int, total: int) -> float:
    """Bytes per second sending ``total`` bytes (whole 1 MiB blocks) and waiting for the sink's answer."""
    block = b"\0" * (1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(1) != b"k":
            raise SocklabError("the sink closed before it had read everything")
        return sent / (time.perf_counter() - t0)


def pingpong(port: int, count: int, size: int) -> list[float]:
    """Round-trip seconds of ``count`` messages of ``size`` bytes, one at a time."""
    msg = b"x" * size
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(msg)
            got = 0
            while got < size:
                chunk = sock.recv(65536)
                if not chunk:
                    raise SocklabError("the echo server closed the connection")
                got += len(chunk)
            rtts.append(time.perf_counter() - t0)
        return rtts


class TapProcess:
    """``socklab tap 127.0.0.1:0 --to 127.0.0.1:PORT`` in its own process, ready once it prints its port."""

    def __init__(self, target_port: int, *extra: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "socklab", "tap", "127.0.0.1:0", "--to",
                                   f"127.0.0.1:{target_port}", *extra], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
                                  text=True)
        assert self.p.stdout is not None
        line = ""
        with selectors.DefaultSelector() as sel:
            sel.register(self.p.stdout, selectors.EVENT_READ)
            if sel.select(READY_TIMEOUT):
                line = self.p.stdout.readline()
        m = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.close()
            raise SocklabError(f"socklab tap did not start within {READY_TIMEOUT:g} s: {line.strip()!r}")
        self.port = int(m.group(1))
        # keep reading what it prints so the pipe never fills
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for _ in self.p.stdout or ():
                pass

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()
        if self.p.stdout:
            self.p.stdout.close()


@click.command("tap")
@click.option("--bytes", "total", type=click.IntRange(1), default=1 << 30, show_default=True,
              help="Bytes per bulk run (sent in 1 MiB blocks).")
@click.option("--count", type=click.IntRange(1), default=20_000, show_default=True,
              help="Round trips per latency run.")
@click.option("--size", type=click.IntRange(1, 1 << 20), default=64, show_default=True,
              help="Bytes per small message.")
@click.option("--runs", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Runs per measurement (the median is reported).")
@click.option("--smoke", is_flag=True, help="A few seconds: 64 MiB bulk, 1,000 round trips, one run.")
@click.option("--no-splice", is_flag=True, help="Measure the tap's copying path instead of splice().")
@run_cli
def tap(total: int, count: int, size: int, runs: int, smoke: bool, no_splice: bool) -> None:
    """What the tap costs: bulk throughput and small-message latency, direct vs through `socklab tap`.

    Bulk: a client sends --bytes to a sink that discards them, once directly and once through a
    tap, and the rate is compared (the bar: the tap at least 0.6x direct), with the CPU seconds
    per GiB of every process involved. Latency: --count round trips of --size bytes to an echo
    server, directly and through a tap; the median round trip and what the tap adds (the bar:
    under 0.2 ms). Direct and tapped runs alternate, so the machine's noise hits both alike.

    \b
      socklab bench tap --smoke                     # a few seconds
      socklab bench tap                             # 1 GiB bulk, 20,000 round trips, median of 3
      socklab bench tap --no-splice                 # the copying path, for comparison
    """
    if smoke:
        total, count, runs = 64 << 20, 1000, 1
    sink, _ = _serve(_sink)
    echo, _ = _serve(_echo)
    extra = ("--no-splice",) if no_splice else ()
    taps: list[TapProcess] = []
    try:
        taps = [TapProcess(sink.getsockname()[1], *extra), TapProcess(echo.getsockname()[1], *extra)]
        rates: dict[str, list[float]] = {"direct": [], "tap": []}
        cpu: dict[str, list[float]] = {"direct": [], "tap": []}
        me, relay = os.getpid(), taps[0].p.pid
        for _ in range(runs):
            for name, port in (("direct", sink.getsockname()[1]), ("tap", taps[0].port)):
                c0 = process_cpu(me) + process_cpu(relay)
                rates[name].append(bulk(port, total))
                cpu[name].append(process_cpu(me) + process_cpu(relay) - c0)
        direct, tapped = statistics.median(rates["direct"]), statistics.median(rates["tap"])
        gib = -(-total // (1 << 20)) / 1024  # what bulk() sent: whole MiB blocks
        click.echo(f"bulk {total / 2**20:.0f} MiB: direct {direct / 1e9:.2f} GB/s, tap {tapped / 1e9:.2f} GB/s, "
                   f"ratio {tapped / direct:.2f} (target >= 0.6); CPU s/GiB (all processes): "
                   f"direct {statistics.median(cpu['direct']) / gib:.2f}, tap {statistics.median(cpu['tap']) / gib:.2f}")
        d50 = statistics.median(statistics.median(pingpong(echo.getsockname()[1], count, size)) for _ in range(runs))
        t50 = statistics.median(statistics.median(pingpong(taps[1].port, count, size)) for _ in range(runs))
        click.echo(f"{size}-byte round trips x{count}: p50 direct {d50 * 1e3:.3f} ms, tap {t50 * 1e3:.3f} ms, "
                   f"added {(t50 - d50) * 1e3:.3f} ms (target < 0.2)")
    finally:
        for t in taps:
            t.close()
        sink.close()
        echo.close()
