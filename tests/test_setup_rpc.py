"""``socklab rpc serve calc`` from calc.py's own folder works, as ``uvicorn calc:app`` does; the
help says what --workers means here (issue 17)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

SOCKLAB = str(Path(sys.executable).with_name("socklab"))  # the console script: no cwd on sys.path


def test_rpc_serve_imports_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "calc_sl17.py").write_text("def add(a: int, b: int) -> int:\n    return a + b\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")
    env.pop("PYTHONPATH", None)
    p = subprocess.Popen([SOCKLAB, "rpc", "serve", "calc_sl17", "--port", "0"], cwd=tmp_path, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        assert p.stdout is not None
        seen = ""
        deadline = time.monotonic() + 20
        with selectors.DefaultSelector() as sel:
            sel.register(p.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and "listening on tcp://" not in seen:
                if not sel.select(deadline - time.monotonic()):
                    break
                line = p.stdout.readline().decode(errors="replace")
                if not line:
                    break
                seen += line
        m = re.search(r"listening on (tcp://[\d.]+:\d+)", seen)
        assert m, seen
        r = subprocess.run([SOCKLAB, "rpc", "call", m.group(1), "add", "2", "3"], capture_output=True,
                           text=True, timeout=20, env=env)
        assert r.returncode == 0 and r.stdout.strip() == "5", r.stderr
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        p.communicate(timeout=15)


def test_workers_help_says_threads_not_processes() -> None:
    r = subprocess.run([SOCKLAB, "rpc", "serve", "--help"], capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, COLUMNS="200"))
    line = " ".join(r.stdout.split())
    assert re.search(r"--workers INTEGER( RANGE)?\s+Threads of the 'pool' engine", line)
    assert "uvicorn's --workers, which starts processes" in line
