"""Slowloris against `socklab http serve`: N connections dribbling header bytes while a probe measures latency.

Why this exists: the reliability bar (docs/http.md: `header_timeout` and "Slowloris at full size")
is that every slow connection is cut at its absolute header deadline and that a normal client's p99
latency stays under 3x its unloaded value meanwhile. CI runs a small version
(tests/apps/http/test_hardening.py); this is the full-size one:

    .venv/bin/python benchmarks/http_slowloris.py --connections 1000 --engine epoll
    .venv/bin/python benchmarks/http_slowloris.py --connections 200 --seconds 8      # a smoke run

It starts the server as a subprocess (`--header-timeout 5` by default), measures the probe's
latency alone, then with the slow connections, and prints both p50/p99 and how many slow
connections the server closed.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time


def probe(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--engine", default="epoll")
    ap.add_argument("--header-timeout", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=12.0, help="how long the attack lasts")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between two bytes of one connection")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 100)), hard))
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "a.txt"), "wb") as f:
            f.write(b"x" * 1024)
        server = subprocess.Popen(
            [sys.executable, "-m", "socklab", "http", "serve", root, "--port", "0", "--engine", args.engine,
             "--log-format", "none", "--header-timeout", str(args.header_timeout),
             "--max-connections", str(args.connections + 100), "--workers", str(args.connections + 20)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline().decode()
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if not m:
                raise SystemExit(f"no readiness line: {line!r}")
            port = int(m.group(1))
            base = [probe(port) for _ in range(200)]
            sel = selectors.DefaultSelector()
            conns = []
            for _ in range(args.connections):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
                conns.append(s)
            alive = set(conns)
            payload = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 10_000
            i = 0
            loaded: list[float] = []
            t0 = time.monotonic()
            next_byte = t0
            cut_at: list[float] = []
            while time.monotonic() - t0 < args.seconds:
                now = time.monotonic()
                if now >= next_byte:
                    for s in list(alive):
                        try:
                            s.send(payload[i:i + 1])
                        except OSError:
                            pass
                    i += 1
                    next_byte = now + args.interval
                for key, _ in sel.select(timeout=0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    if not data or data.startswith(b"HTTP/1.1 408"):
                        alive.discard(sock)
                        sel.unregister(sock)
                        cut_at.append(time.monotonic() - t0)
                loaded.append(probe(port))
            sel.close()
            for s in conns:
                s.close()
            print(f"engine {args.engine}, {args.connections} slow connections, header_timeout {args.header_timeout} s")
            print(f"probe alone:      p50 {pct(base, 0.5):.2f} ms  p99 {pct(base, 0.99):.2f} ms  ({len(base)} requests)")
            print(f"probe under load: p50 {pct(loaded, 0.5):.2f} ms  p99 {pct(loaded, 0.99):.2f} ms  "
                  f"({len(loaded)} requests)  p99 ratio {pct(loaded, 0.99) / pct(base, 0.99):.2f}")
            if cut_at:
                print(f"slow connections closed by the server: {len(cut_at)} of {args.connections}, "
                      f"between {min(cut_at):.1f} and {max(cut_at):.1f} s after the attack began")
            else:
                print(f"slow connections closed by the server: 0 of {args.connections}")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
            if server.stdout:
                server.stdout.close()


if __name__ == "__main__":
    main()
