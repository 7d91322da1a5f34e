#!/usr/bin/env bash
# The main job: installs what it needs, then runs a traced echo server and a traced client session
# on loopback, so you can watch the whole socket lifecycle (socket, bind, listen, accept, connect,
# send, recv, shutdown, close) from both sides. Usage: scripts/demo.sh [--engine NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SL=".venv/bin/socklab"
engine="epoll"
if [ "${1:-}" = "--engine" ] && [ -n "${2:-}" ]; then engine="$2"; fi

out=$(mktemp); trap 'kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null; rm -f "$out"' EXIT
echo "== server (engine $engine), traced; its lines start with '$engine/'" >&2
$SL echo serve --engine "$engine" --port 0 --trace > "$out" &
srv=$!
for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
addr=$(grep -o 'tcp://[^ ]*' "$out" | head -1); addr=${addr#tcp://}
echo "== server is listening on $addr; now a client sends three lines, traced ('client/' lines)" >&2
printf 'hello, sockets\nTCP is a byte stream\nbye\n' | $SL echo client "$addr" --trace
echo "== ping mode: 5 messages of 1 KiB" >&2
$SL echo client "$addr" --count 5 --size 1024 --interval 0.05
echo "== stopping the server with SIGTERM (graceful shutdown)" >&2
kill -TERM "$srv"; wait "$srv" || true
