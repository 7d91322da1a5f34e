"""JSON-RPC calls/s and latency: socklab's server per engine beside Python's xmlrpc.server.

Why this exists: the issue's target is ">= 10x xmlrpc.server's calls/s with pipelining". Every
server runs in its own process (so the load generator never shares a GIL with it) and is
measured in the same run, one after the other:

- **sequential**: one call in flight (send, wait for the answer, repeat) - latency p50/p99;
- **pipelined**: ``--window`` calls in flight on one connection (written in one send, answers
  matched by id) - throughput.

The load generator is a raw socket writing ndjson, the cheapest client Python allows. xmlrpc is
driven with its own ``xmlrpc.client.ServerProxy`` (HTTP/1.0: one connection per call, which is
how the stdlib server works) and cannot pipeline, so its sequential figure is its best.

Usage (short smoke run; raise --calls for real figures on a quiet machine)::

    socklab rpc bench --engines epoll,asyncio --calls 2000
    .venv/bin/python benchmarks/rpc_bench.py --calls 2000      # the same, as a script
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import xmlrpc.client
from typing import Any

XMLRPC_SERVER = r"""
import sys
from xmlrpc.server import SimpleXMLRPCServer, SimpleXMLRPCRequestHandler
class Quiet(SimpleXMLRPCRequestHandler):
    def log_message(self, *a): pass
srv = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Quiet, logRequests=False)
srv.register_function(lambda a, b: a + b, "add")
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
"""


__all__ = ["main", "run", "table"]


def start(args: list[str], pattern: str) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert p.stdout is not None
    line = p.stdout.readline().decode()  # the readiness line
    m = re.search(pattern, line)
    if not m:
        p.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return p, int(m.group(1))


def stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    if p.stdout:
        p.stdout.close()


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def read_lines(self, n: int) -> list[bytes]:
        lines: list[bytes] = []
        while len(lines) < n:
            nl = self.buf.find(b"\n")
            if nl < 0:
                data = self.sock.recv(262144)
                if not data:
                    raise SystemExit("server closed the connection")
                self.buf += data
                continue
            # take every complete line at once
            parts = self.buf.split(b"\n")
            self.buf = parts.pop()
            lines.extend(parts)
        return lines

    def close(self) -> None:
        self.sock.close()


def bench_socklab(port: int, method: str, calls: int, window: int) -> dict[str, Any]:
    c = RawClient(port)
    try:
        # sequential
        lat: list[float] = []
        seq_calls = max(1, calls // 4)
        t0 = time.perf_counter()
        for i in range(seq_calls):
            t = time.perf_counter()
            c.sock.sendall(b'{"jsonrpc":"2.0","method":"%s","params":[%d,1],"id":%d}\n' % (method.encode(), i, i))
            c.read_lines(1)
            lat.append(time.perf_counter() - t)
        seq_time = time.perf_counter() - t0
        # pipelined: `window` calls per write, wait for all, repeat
        reqs = b"".join(b'{"jsonrpc":"2.0","method":"%s","params":[%d,1],"id":%d}\n' % (method.encode(), i, i)
                        for i in range(window))
        rounds = max(1, calls // window)
        t0 = time.perf_counter()
        for _ in range(rounds):
            c.sock.sendall(reqs)
            got = c.read_lines(window)
            assert len(got) == window
        pipe_time = time.perf_counter() - t0
        assert b'"result"' in got[-1], got[-1]
    finally:
        c.close()
    return {"seq_calls_s": seq_calls / seq_time, "p50_ms": percentile(lat, 0.5) * 1e3,
            "p99_ms": percentile(lat, 0.99) * 1e3, "pipelined_calls_s": rounds * window / pipe_time}


def bench_xmlrpc(port: int, calls: int) -> dict[str, Any]:
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/")
    lat: list[float] = []
    n = max(1, calls // 4)
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        assert proxy.add(i, 1) == i + 1
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    proxy("close")()
    return {"seq_calls_s": n / total, "p50_ms": percentile(lat, 0.5) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
            "pipelined_calls_s": None}


def run(engines: list[str], calls: int = 20000, window: int = 100,
        methods: tuple[str, ...] = ("add", "add_inline")) -> list[dict[str, Any]]:
    """Measure xmlrpc.server, then socklab's demo server on each engine; one row per (server, method)."""
    rows: list[dict[str, Any]] = []
    p, port = start([sys.executable, "-c", XMLRPC_SERVER], r"port (\d+)")
    try:
        rows.append({"server": "xmlrpc.server", "method": "add", **bench_xmlrpc(port, calls)})
    finally:
        stop(p)
    for engine in engines:
        p, port = start([sys.executable, "-m", "socklab", "rpc", "serve", "--demo", "--engine", engine,
                         "--listen", "tcp://127.0.0.1:0", "--max-concurrent-calls", str(max(64, window))],
                        r"listening on tcp://[^:]+:(\d+)")
        try:
            for method in methods:
                rows.append({"server": f"socklab {engine}", "method": method,
                             **bench_socklab(port, method, calls, window)})
        finally:
            stop(p)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table, with each server's best rate as a multiple of xmlrpc's."""
    base = rows[0]["seq_calls_s"]
    out = [f"{'server':18} {'method':11} {'seq calls/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
           f"{'pipelined/s':>12} {'x xmlrpc':>9}"]
    for r in rows:
        pipe = r["pipelined_calls_s"]
        best = pipe if pipe is not None else r["seq_calls_s"]
        shown = f"{pipe:.0f}" if pipe else "-"
        out.append(f"{r['server']:18} {r['method']:11} {r['seq_calls_s']:12.0f} {r['p50_ms']:8.3f} "
                   f"{r['p99_ms']:8.3f} {shown:>12} {best / base:9.1f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="JSON-RPC calls/s and latency beside xmlrpc.server")
    ap.add_argument("--engines", default="epoll,select,poll,threads,pool,asyncio,uvloop")
    ap.add_argument("--calls", type=int, default=20000, help="pipelined calls per run (sequential: a quarter)")
    ap.add_argument("--window", type=int, default=100, help="calls in flight when pipelining")
    ap.add_argument("--methods", default="add,add_inline",
                    help="demo methods: add (thread pool) and add_inline (engine thread)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    rows = run(a.engines.split(","), a.calls, a.window, tuple(a.methods.split(",")))
    print(json.dumps(rows, indent=1) if a.json else table(rows))


if __name__ == "__main__":
    main()
