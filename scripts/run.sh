#!/usr/bin/env bash
# The main job: installs only what it needs (scripts/setup-run.sh: a venv in .venv and
# `pip install -e .` - no system packages, no root), then runs socklab's chat server on loopback:
# rooms over TCP (nc/telnet) and in the browser (web page + WebSocket), history kept in SQLite.
#   scripts/run.sh                       # chat on 127.0.0.1: TCP 7070, web 7080
#   scripts/run.sh --engine uvloop --host :: --tcp-port 7000 --http-port 8000
# The server prints the addresses it really listens on. Then: `nc 127.0.0.1 7070` (type /help),
# `.venv/bin/socklab chat connect 127.0.0.1:7070 --nick you`, or open http://127.0.0.1:7080/ .
# Ctrl-C stops it gracefully. The test command (scripts/test.sh) installs the rest (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-run.sh
exec .venv/bin/socklab chat serve "$@"
