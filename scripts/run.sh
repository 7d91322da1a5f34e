#!/usr/bin/env bash
# The main job: installs what it needs, then runs socklab's chat server on loopback - rooms over
# TCP (nc/telnet) and in the browser (web page + WebSocket), history kept in SQLite.
#   scripts/run.sh                       # chat on 127.0.0.1: TCP 7070, web 7080
#   scripts/run.sh --engine uvloop --host :: --tcp-port 7000 --http-port 8000
# Then: `nc 127.0.0.1 7070` (type /help), `.venv/bin/socklab chat connect 127.0.0.1:7070 --nick you`,
# or open http://127.0.0.1:7080/ . Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "socklab chat: talk with 'nc 127.0.0.1 7070', '.venv/bin/socklab chat connect 127.0.0.1:7070 --nick NAME'" \
     "or a browser at http://127.0.0.1:7080/ (other ports if you pass --tcp-port/--http-port)" >&2
exec .venv/bin/socklab chat serve "$@"
