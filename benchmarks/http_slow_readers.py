"""Slow readers against `socklab http serve`: server memory while N clients crawl through a big file.

Why this exists: a client that reads slowly (or not at all) must not make the server buffer the
file: memory per connection is bounded by the write high-water mark plus one chunk. This starts the
server as a subprocess, has N clients request a large file and read only a little per second, and
prints the server's resident memory (from /proc) before and during:

    .venv/bin/python benchmarks/http_slow_readers.py --clients 200 --engine epoll
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--engine", default="epoll")
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.clients * 2 + 100)), hard))
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "big.bin"), "wb") as f:
            f.truncate(args.size_mib << 20)
        server = subprocess.Popen(
            [sys.executable, "-m", "socklab", "http", "serve", root, "--port", "0", "--engine", args.engine,
             "--log-format", "none", "--send-timeout", "60", "--max-connections", str(args.clients + 10),
             "--workers", str(args.clients + 10)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        clients: list[socket.socket] = []
        try:
            assert server.stdout is not None
            m = re.search(r"http://127\.0\.0\.1:(\d+)", server.stdout.readline().decode())
            if not m:
                raise SystemExit("no readiness line")
            port = int(m.group(1))
            before = rss_mib(server.pid)
            for _ in range(args.clients):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
                s.setblocking(False)
                clients.append(s)
            peak = before
            got = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                for s in clients:  # each client takes at most 4 KiB per round: a crawl
                    try:
                        got += len(s.recv(4096))
                    except BlockingIOError:
                        pass
                peak = max(peak, rss_mib(server.pid))
                time.sleep(0.1)
            print(f"engine {args.engine}: {args.clients} slow readers of a {args.size_mib} MiB file, {args.seconds:g} s")
            print(f"server RSS before {before:.1f} MiB, peak during {peak:.1f} MiB "
                  f"(+{(peak - before) * 1024 / args.clients:.0f} KiB per connection); "
                  f"the clients read {got / 2**20:.1f} MiB in all "
                  f"(buffering the file would cost {args.size_mib * args.clients} MiB)")
        finally:
            for s in clients:
                s.close()
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
            if server.stdout:
                server.stdout.close()


if __name__ == "__main__":
    main()
