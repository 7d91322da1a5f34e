#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then runs pytest on 2 workers.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/core -k tls).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${SOCKLAB_TEST_WORKERS:-2}" "$@"
