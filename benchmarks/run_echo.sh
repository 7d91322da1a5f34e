#!/usr/bin/env bash
# Reproduce every figure in docs/benchmarks.md in one go (about 20 minutes on a quiet 2-core machine).
#
#   benchmarks/run_echo.sh                    # full run: 3 x 10 s per server and load
#   DURATION=1 REPEAT=1 SWEEP_DURATION=1 FLOOR_DURATION=1 benchmarks/run_echo.sh   # a quick smoke run
#
# Results (JSON, HTML charts, the tables as Markdown) go to benchmarks/results/<UTC time>/, which git
# ignores. Run it on an otherwise idle machine: every figure is a ratio measured in the same run,
# but a busy neighbour on the server's core still moves them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-1}
SWEEP_DURATION=${SWEEP_DURATION:-3}
FLOOR_DURATION=${FLOOR_DURATION:-3}
OUT=${OUT:-benchmarks/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
bench() { "$PY" -m socklab bench "$@"; }

echo "== machine" | tee "$OUT/machine.txt"
{ uname -a; nproc; grep -m1 'model name' /proc/cpuinfo || true; uptime; ulimit -Hn; } | tee -a "$OUT/machine.txt"
bench build | tee -a "$OUT/machine.txt"

echo "== 1. the load generator is not the limit: it drives the C server's core to 100 %"
bench calibrate --duration "$DURATION" --warmup "$WARMUP" --repeat 1 --save "$OUT/calibrate.json"

echo "== 2. 1 KiB x 20 connections, ping-pong: every engine, its reference, and C"
bench echo --engines all --size 1024 --connections 20 --pipeline 1 --duration "$DURATION" --warmup "$WARMUP" \
    --repeat "$REPEAT" --with-c --save "$OUT/echo-1k-20.json" --chart "$OUT/echo-1k-20.html"

echo "== 3. 64 KiB x 10 connections, ping-pong"
bench echo --engines all --size 65536 --connections 10 --pipeline 1 --duration "$DURATION" --warmup "$WARMUP" \
    --repeat "$REPEAT" --with-c --save "$OUT/echo-64k-10.json" --chart "$OUT/echo-64k-10.html"

echo "== 4. iterative, which serves one connection at a time: 1 KiB x 1 connection"
bench echo --engines iterative,threads --size 1024 --connections 1 --duration "$DURATION" --warmup "$WARMUP" \
    --repeat "$REPEAT" --with-c --save "$OUT/echo-1k-1.json"

echo "== 5. connection sweep: 10 -> 10,000 connections, 10 of them active"
bench sweep --levels 10,100,1000,10000 --active 10 --duration "$SWEEP_DURATION" \
    --warmup 0.5 --with-c --save "$OUT/sweep.json" --chart "$OUT/sweep.html"

echo "== 6. the floor: the smallest Python epoll echo loop, and the epoll engine interleaved with it"
"$PY" benchmarks/echo_floor.py --engine epoll --runs "$((REPEAT * 3))" --duration "$FLOOR_DURATION" \
    | tee "$OUT/floor.txt"

echo "== 7. UDP 64 B x 20 flows, TLS 1 KiB x 20, WebSocket 256 B x 20 and 64 KiB x 10 (issue 19)"
bench echo --udp --engines all --size 64 --connections 20 --duration "$DURATION" --warmup "$WARMUP" \
    --repeat "$REPEAT" --with-c --save "$OUT/echo-udp-64-20.json"
bench echo --tls --engines all --size 1024 --connections 20 --duration "$DURATION" --warmup "$WARMUP" \
    --repeat "$REPEAT" --save "$OUT/echo-tls-1k-20.json"
bench ws --size 256 --connections 20 --duration "$DURATION" --warmup "$WARMUP" --repeat "$REPEAT" \
    --save "$OUT/ws-256-20.json"
bench ws --size 65536 --connections 10 --duration "$DURATION" --warmup "$WARMUP" --repeat "$REPEAT" \
    --save "$OUT/ws-64k-10.json"

"$PY" benchmarks/to_markdown.py "$OUT"/calibrate.json "$OUT"/echo-*.json "$OUT"/sweep.json > "$OUT/tables.md"
echo "== done: $OUT (tables.md has the Markdown for docs/benchmarks.md)"
