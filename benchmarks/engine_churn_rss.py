"""Memory after connection churn: does a closed connection leave anything behind? (issue 14)

Each engine serves a protocol that arms a long timer per connection (a keep-alive or a
registration deadline: 60 s here) and cancels it in ``connection_lost`` - what chat, the tap and
HTTP do. The script opens and closes N connections (default 10,000), then reports the server's
RSS before, right after the churn, and after a few seconds, plus how many protocols are still
alive after ``gc.collect()``. Before the fix a cancelled timer kept its callback, so every
closed connection (and the 64 KiB each holds here) stayed in memory until its timer's deadline.

    .venv/bin/python benchmarks/engine_churn_rss.py                 # every engine, 10,000 each
    .venv/bin/python benchmarks/engine_churn_rss.py --engines epoll,threads --connections 2000

Run the server in this process (one engine at a time, a fresh process each via --one): the RSS
is this process's, read from /proc/self/status.
"""

from __future__ import annotations

import argparse
import gc
import socket
import subprocess
import sys
import time
import weakref
from typing import Any

from socklab.core.protocol import Protocol
from socklab.core.settings import ENGINE_NAMES, ServerSettings
from socklab.core.transport import Transport
from socklab.runtime import Server

PER_CONNECTION = 64 * 1024
alive: weakref.WeakSet[Any] = weakref.WeakSet()


class ArmsALongTimer(Protocol):
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.timer = transport.call_later(60.0, transport.close)
        self.payload = bytearray(PER_CONNECTION)
        alive.add(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.cancel()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one(engine: str, connections: int) -> None:
    srv = Server(ServerSettings(engine=engine, host="127.0.0.1", port=0, max_connections=connections + 100))
    srv.listen(ArmsALongTimer)
    srv.start()
    try:
        gc.collect()
        before = rss_mib()
        t0 = time.monotonic()
        for _ in range(connections):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
                c.sendall(b"x")
                c.recv(1)
        deadline = time.monotonic() + 30
        while srv.statistics().connections and time.monotonic() < deadline:
            time.sleep(0.05)
        churn_s = time.monotonic() - t0
        gc.collect()
        after = rss_mib()
        time.sleep(3)
        gc.collect()
        later = rss_mib()
        print(f"{engine:10} {connections:7,} conns in {churn_s:5.1f} s  RSS MiB: before {before:6.1f}  "
              f"after {after:6.1f}  +3 s {later:6.1f}  protocols alive {len(alive):6,}", flush=True)
    finally:
        srv.shutdown(timeout=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="all", help="comma-separated engines, or 'all'")
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one engine in this process
    args = ap.parse_args()
    if args.one:
        one(args.one, args.connections)
        return
    engines = ENGINE_NAMES if args.engines == "all" else args.engines.split(",")
    for engine in engines:
        subprocess.run([sys.executable, __file__, "--one", engine, "--connections", str(args.connections)],
                       check=False)


if __name__ == "__main__":
    main()
