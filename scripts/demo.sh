#!/usr/bin/env bash
# The main job: installs what it needs, then runs a traced echo server and a traced client session
# on loopback, so you can watch the whole socket lifecycle (socket, bind, listen, accept, connect,
# send, recv, shutdown, close) from both sides. Usage: scripts/demo.sh [--engine NAME]
# Exits 0 when the lesson ran to its end. SOCKLAB_SKIP_SETUP=1 skips scripts/setup.sh (the
# environment is already there: the test suite runs the demo this way).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SOCKLAB_SKIP_SETUP:-}" != "1" ]; then bash scripts/setup.sh; fi
SL=".venv/bin/socklab"
engine="epoll"
if [ "${1:-}" = "--engine" ] && [ -n "${2:-}" ]; then engine="$2"; fi

srv=""
fifo="$(mktemp -d)/server-stdout"
cleanup() {
    # only a server still running is stopped here (the lesson stops it itself at the end)
    if [ -n "$srv" ] && kill -0 "$srv" 2>/dev/null; then
        kill -TERM "$srv" 2>/dev/null || true
        wait "$srv" 2>/dev/null || true
    fi
    rm -rf "$(dirname "$fifo")"
}
trap cleanup EXIT
mkfifo "$fifo"

echo "== server (engine $engine), traced; its lines start with '$engine/'" >&2
$SL echo serve --engine "$engine" --port 0 --trace > "$fifo" &
srv=$!
# Wait for the readiness line itself (no polling, no fixed deadline): read the server's stdout
# until it says where it listens; EOF first means it died, and its error is already on stderr.
exec 3< "$fifo"
addr=""
while IFS= read -r line <&3; do
    echo "$line" >&2
    case "$line" in
        *"listening on tcp://"*) addr=${line#*tcp://}; addr=${addr%% *}; break ;;
    esac
done
if [ -z "$addr" ]; then
    echo "demo: the server stopped before it was ready (see above)" >&2
    exit 1
fi
cat <&3 >&2 &  # the rest of the server's stdout, so it never blocks on a full pipe
exec 3<&-

echo "== server is listening on $addr; now a client sends three lines, traced ('client/' lines)" >&2
printf 'hello, sockets\nTCP is a byte stream\nbye\n' | $SL echo client "$addr" --trace
echo "== ping mode: 5 messages of 1 KiB" >&2
$SL echo client "$addr" --count 5 --size 1024 --interval 0.05
echo "== stopping the server with SIGTERM (graceful shutdown)" >&2
kill -TERM "$srv"
status=0
wait "$srv" || status=$?
srv=""
if [ "$status" -ne 0 ]; then
    echo "demo: the server exited with status $status after SIGTERM" >&2
    exit 1
fi
wait  # the stdout reader ends with the server
echo "== done: both sides' traces are above" >&2
