#!/usr/bin/env python3
"""A/B of the RPC *client* alone: several source trees' clients against one server, interleaved.

Why this exists: ``rpc_bench.py`` measures servers with a fixed load generator; a change to the
client (``socklab.apps.rpc.client``, its channels, ``runtime.client``) needs its own comparison,
with everything else held still - one ``rpc serve --demo`` (epoll, tcp/ws/http listeners, from
``--server``'s tree, the first one by default), each tree's client in turn (A B C, A B C...) so a slow minute on a shared machine
hits every tree. Each run is a fresh process: ``--warmup`` calls, ``--seq`` sequential calls of
``add_inline``, then (tcp, ws) ``--pipe`` calls submitted in windows of 100 and waited for. It
reports calls/s and the client process's CPU per call (``time.process_time``: every thread),
medians over the rounds and each tree against the first::

    mkdir /tmp/old && git archive <rev> | tar -x -C /tmp/old
    .venv/bin/python benchmarks/rpc_client_ab.py old=/tmp/old/src new=src --server src --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

PY = sys.executable
CLIENT = r"""
import json, sys, time
from socklab import rpc
url, warm, seq, pipe = sys.argv[1], *map(int, sys.argv[2:5])
with rpc.connect(url, timeout=30) as c:
    for _ in range(warm): c.add_inline(1, 1)
    c0, t = time.process_time(), time.perf_counter()
    for i in range(seq): c.add_inline(i, 1)
    out = {"seq": seq / (time.perf_counter() - t), "seq_cpu": (time.process_time() - c0) / seq * 1e6}
    if pipe and not url.startswith("http"):
        c0, t = time.process_time(), time.perf_counter(); done = 0
        while done < pipe:
            futures = [c.submit("add_inline", i, 1) for i in range(100)]
            for f in futures: f.result(30)
            done += 100
        out["pipe"] = done / (time.perf_counter() - t); out["pipe_cpu"] = (time.process_time() - c0) / done * 1e6
print(json.dumps(out))
"""


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="LABEL=PATH/TO/src (the first is the reference and runs the server)")
    ap.add_argument("--server", help="PATH/TO/src of the server (default: the first tree's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seq", type=int, default=2000)
    ap.add_argument("--pipe", type=int, default=10000)
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.trees]
    server = subprocess.Popen([PY, "-m", "socklab", "rpc", "serve", "--demo", "--engine", "epoll",
                               "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0/ws",
                               "--listen", "http://127.0.0.1:0/rpc"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(os.environ, PYTHONPATH=os.path.abspath(args.server or trees[0][1])))
    urls: list[str] = []
    assert server.stdout is not None
    while len(urls) < 3:
        line = server.stdout.readline()
        if not line:
            raise SystemExit("the server did not start")
        urls += re.findall(r"listening on (\S+)", line)
    results: dict[tuple[str, str, str], list[float]] = {}
    print(f"load average at the start {_load()}", flush=True)
    try:
        for _ in range(args.rounds):
            for label, src in trees:
                for url in urls:
                    out = subprocess.run([PY, "-c", CLIENT, url, str(args.warmup), str(args.seq), str(args.pipe)],
                                         capture_output=True, text=True, timeout=300, check=True,
                                         env=dict(os.environ, PYTHONPATH=os.path.abspath(src)))
                    for key, value in json.loads(out.stdout).items():
                        results.setdefault((url.split(":")[0], key, label), []).append(value)
    finally:
        server.terminate()
        server.wait(20)
    print(f"load average at the end {_load()}; medians of {args.rounds} rounds, ratio to {trees[0][0]}")
    for scheme in ("tcp", "ws", "http"):
        for key in ("seq", "seq_cpu", "pipe", "pipe_cpu"):
            ref = results.get((scheme, key, trees[0][0]))
            if not ref:
                continue
            cells = []
            for label, _ in trees:
                med = statistics.median(results[(scheme, key, label)])
                cells.append(f"{label} {med:9,.1f}" + ("" if label == trees[0][0] else f" ({med / statistics.median(ref):.2f})"))
            unit = "us CPU/call" if key.endswith("cpu") else "calls/s"
            print(f"{scheme:5} {key:9} {unit:12} " + "   ".join(cells))


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"({time.monotonic() - t0:.0f} s)")
