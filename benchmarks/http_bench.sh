#!/usr/bin/env bash
# Static files over HTTP/1.1: socklab (each engine asked for) beside python -m http.server, aiohttp's
# static handler and nginx with one worker, measured by wrk in paired, rotated rounds.
# The work is done by `socklab bench http` (benchmarks/http_bench.py reads the settings below).
#
#   benchmarks/http_bench.sh                                     # full: 5 rounds x 10 s per server and file
#   DURATION=1 ROUNDS=2 ENGINES=epoll benchmarks/http_bench.sh   # a short smoke run
#
# Environment: DURATION (10), ROUNDS (5), CONNS (50), ENGINES ("epoll uvloop"),
# PEERS ("http.server aiohttp nginx"), SERVER_CPU (0), CLIENT_CPU (1), OUT (benchmarks/results/http-<UTC>).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PY:-.venv/bin/python}" benchmarks/http_bench.py "$@"
