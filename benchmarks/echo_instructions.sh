#!/bin/bash
# User-space instructions per echo round trip of one server, counted by callgrind (deterministic,
# so it compares two servers where a shared machine's throughput cannot: docs/benchmarks.md).
#
#   benchmarks/echo_instructions.sh SIZE CONNECTIONS SECONDS -- SERVER COMMAND...
#   benchmarks/echo_instructions.sh 1024 20 8 -- python -m socklab echo serve --engine asyncio --port 0
#   benchmarks/echo_instructions.sh 1024 20 8 -- python src/socklab/tools/bench/reference/asyncio_protocol.py --port 0
#
# The server runs under valgrind with instrumentation off; socklab's C load generator warms it
# (an empty connection, then 2 s of load) and measures for SECONDS; instrumentation is switched
# on at the generator's "measure-start" line and off at "measure-end". Prints the instructions
# (Ir) and the round trips of that window, and Ir per round trip. Kernel work is not counted
# (compare system calls with strace -c); a user-space memcpy counts one instruction per byte.
set -euo pipefail
size=$1 conns=$2 secs=$3
shift 3
[ "${1:-}" = "--" ] && shift
py=${PYTHON:-python3}
loadgen=$($py -c "from socklab.tools.bench import build; print(build.binary('loadgen'))")
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg" "$@" > "$work/server.log" 2>&1 &
server=$!
port=""
for _ in $(seq 600); do  # valgrind starts slowly: wait for the readiness line (up to 2 minutes)
  port=$(grep -oE '127\.0\.0\.1:[0-9]+' "$work/server.log" | head -1 | cut -d: -f2 || true)
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.2
done
[ -n "$port" ] || { echo "the server never said where it listens" >&2; exit 1; }
"$loadgen" --port "$port" -c "$conns" -s "$size" -d "$secs" -w 2 > "$work/load.json" 2> "$work/load.err" &
load=$!
until grep -q measure-start "$work/load.err"; do sleep 0.01; done
callgrind_control -i on "$server" > /dev/null 2>&1
until grep -q measure-end "$work/load.err"; do sleep 0.01; done
callgrind_control -i off "$server" > /dev/null 2>&1
callgrind_control -d "$server" > /dev/null 2>&1
wait "$load"
requests=$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['requests'])" "$work/load.json")
ir=$(cat "$work"/cg* | grep -E '^totals:' | awk '{print $2}' | sort -n | tail -1)
echo "round trips $requests, instructions $ir, per round trip $((ir / requests))"
