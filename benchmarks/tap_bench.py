"""How much does the tap cost? Bulk throughput and small-message latency, direct vs through the tap.

Why this exists: a debugging relay that halves throughput or adds milliseconds changes the behaviour
it is meant to show. The targets (issue 3): with no fault, relay throughput >= 0.6x a direct
connection for bulk data, and added p50 latency < 0.2 ms for small messages.

The tap runs as its own process (``socklab tap``), as a user would run it; the sink/echo server
and the client are threads of this process, the same for the direct and the tapped run.

    python benchmarks/tap_bench.py                      # full run: 1 GiB bulk, 20,000 round trips
    python benchmarks/tap_bench.py --smoke              # a few seconds
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

SINK_BUFFER = 1024 * 1024  # as large as the sender's blocks: few recv_into calls, on both paths


def sink_server() -> tuple[socket.socket, threading.Thread]:
    """Reads and discards, with one reused 1 MiB buffer; answers b"k" after the client's FIN.

    The same sink (and the same client) serves the direct and the tapped run; neither socket's
    SO_SNDBUF/SO_RCVBUF is set, so the kernel autotunes both paths alike.
    """
    lsock = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            buf = bytearray(SINK_BUFFER)
            with conn:
                while conn.recv_into(buf):
                    pass
                conn.sendall(b"k")
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return lsock, t


def echo_server() -> tuple[socket.socket, threading.Thread]:
    lsock = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return lsock, t


def bulk(port: int, total: int) -> float:
    """Bytes per second sending ``total`` bytes and waiting for the sink's acknowledgement."""
    block = b"\0" * (1024 * 1024)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"k"
        return sent / (time.perf_counter() - t0)


def pingpong(port: int, count: int, size: int) -> list[float]:
    msg = b"x" * size
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(msg)
            got = 0
            while got < size:
                got += len(sock.recv(65536))
            rtts.append(time.perf_counter() - t0)
        return rtts


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TapProcess:
    def __init__(self, target_port: int, *extra: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "socklab", "tap", "127.0.0.1:0", "--to",
                                   f"127.0.0.1:{target_port}", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  start_new_session=True, text=True)
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        m = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line)
        if not m:
            raise SystemExit(f"tap did not start: {line!r}")
        self.port = int(m.group(1))

    def close(self) -> None:
        os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()
        if self.p.stdout:
            self.p.stdout.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--bytes", type=int, default=1 << 30, help="bulk bytes per run (default 1 GiB)")
    ap.add_argument("--count", type=int, default=20_000, help="round trips per latency run")
    ap.add_argument("--size", type=int, default=64, help="bytes per small message")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (the median is reported)")
    ap.add_argument("--no-splice", action="store_true", help="measure the tap's copying path instead of splice")
    args = ap.parse_args()
    if args.smoke:
        args.bytes, args.count, args.runs = 64 << 20, 1000, 1

    sink, _ = sink_server()
    echo, _ = echo_server()
    extra = ("--no-splice",) if args.no_splice else ()
    taps = [TapProcess(sink.getsockname()[1], *extra), TapProcess(echo.getsockname()[1], *extra)]
    try:
        # interleaved (direct, tap, direct, tap, ...) so a burst of load elsewhere hits both alike
        rates: dict[str, list[float]] = {"direct": [], "tap": []}
        cpu: dict[str, list[float]] = {"direct": [], "tap": []}
        for _ in range(args.runs):
            for name, port in (("direct", sink.getsockname()[1]), ("tap", taps[0].port)):
                c0 = cpu_seconds(os.getpid()) + cpu_seconds(taps[0].p.pid)
                rates[name].append(bulk(port, args.bytes))
                cpu[name].append(cpu_seconds(os.getpid()) + cpu_seconds(taps[0].p.pid) - c0)
        direct, tapped = statistics.median(rates["direct"]), statistics.median(rates["tap"])
        gib = args.bytes / 2**30
        print(f"bulk {args.bytes / 2**20:.0f} MiB: direct {direct / 1e9:.2f} GB/s, tap {tapped / 1e9:.2f} GB/s, "
              f"ratio {tapped / direct:.2f} (target >= 0.6); CPU s/GiB (all processes): "
              f"direct {statistics.median(cpu['direct']) / gib:.2f}, tap {statistics.median(cpu['tap']) / gib:.2f}")
        d50 = statistics.median(statistics.median(pingpong(echo.getsockname()[1], args.count, args.size))
                                for _ in range(args.runs))
        t50 = statistics.median(statistics.median(pingpong(taps[1].port, args.count, args.size))
                                for _ in range(args.runs))
        print(f"{args.size}-byte round trips x{args.count}: p50 direct {d50 * 1e3:.3f} ms, tap {t50 * 1e3:.3f} ms, "
              f"added {(t50 - d50) * 1e3:.3f} ms (target < 0.2)")
    finally:
        for t in taps:
            t.close()
        sink.close()
        echo.close()


if __name__ == "__main__":
    main()
