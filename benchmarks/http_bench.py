#!/usr/bin/env python3
"""Static files over HTTP/1.1: socklab beside http.server, aiohttp and nginx, in paired, rotated rounds.

The same as ``socklab bench http`` (the code, and why the rounds are paired, are in
``socklab.tools.bench.http``), kept as a script for ``benchmarks/http_bench.sh``: settings come
from the environment as well as from the options, and the results are kept under
``benchmarks/results/http-<UTC time>`` unless OUT (or --out) says otherwise.

    DURATION  seconds per wrk run (10)          ENGINES     socklab engines ("epoll uvloop")
    ROUNDS    rounds (5)                        PEERS       "http.server aiohttp nginx"
    CONNS     wrk connections (50)              SERVER_CPU / CLIENT_CPU   cores (0 / 1)
    OUT       result directory (benchmarks/results/http-<UTC time>): table.md, runs.jsonl, wrk/

    benchmarks/http_bench.sh                                     # full: 5 rounds x 10 s per server and file
    DURATION=1 ROUNDS=2 ENGINES=epoll benchmarks/http_bench.sh   # a short smoke run
"""

import os
import time
from pathlib import Path

from socklab.tools.bench.http import http

ENV = {"DURATION": "duration", "ROUNDS": "rounds", "CONNS": "conns", "ENGINES": "engines", "PEERS": "peers",
       "SERVER_CPU": "server_cpu", "CLIENT_CPU": "client_cpu", "OUT": "out"}

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results" / time.strftime("http-%Y%m%dT%H%M%SZ", time.gmtime())
    defaults = {"out": str(results), **{opt: os.environ[var] for var, opt in ENV.items() if os.environ.get(var)}}
    http.main(prog_name="benchmarks/http_bench.py", default_map=defaults)
