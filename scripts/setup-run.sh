#!/usr/bin/env bash
# What the main job (scripts/run.sh) needs, and nothing more: a virtualenv in .venv with socklab and
# its runtime dependencies (`pip install -e .`: no dev tools, no system packages, no root).
# Idempotent: skips pip when .venv already holds this pyproject.toml's install (by run.sh, or the
# full install of scripts/setup.sh, which the test command uses). Usage: scripts/setup-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
want=$(sha256sum < pyproject.toml | cut -c1-16)
full_stamp=.venv/.socklab-installed       # written by scripts/setup.sh (runtime + dev extra)
run_stamp=.venv/.socklab-run-installed    # written here (runtime only)
if [ -x .venv/bin/python ] && { [ "$(cat "$full_stamp" 2>/dev/null)" = "$want" ] \
        || [ "$(cat "$run_stamp" 2>/dev/null)" = "$want" ]; }; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY" >&2
  if ! "$PY" -m venv .venv; then
    echo "setup: '$PY -m venv' failed; on Debian/Ubuntu install python3-venv (or set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
fi
echo "setup: installing socklab and its runtime dependencies into .venv (pip install -e .)" >&2
.venv/bin/pip install -q -e .
echo "$want" > "$run_stamp"
