"""scripts/demo.sh, the README's first lesson, runs to its end and exits 0 (issue 15 item 8)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_exits_0_and_shows_both_sides() -> None:
    """It always exited 1: its exit trap killed the server the lesson had already stopped, under
    ``set -e``. SOCKLAB_SKIP_SETUP=1 skips scripts/setup.sh (the venv is there already)."""
    p = subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=dict(os.environ, SOCKLAB_SKIP_SETUP="1", NO_COLOR="1"),
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=50)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the script, its server and its reader
        p.communicate(timeout=5)
        raise
    text = out.decode(errors="replace")
    assert p.returncode == 0, text[-3000:]
    with contextlib.suppress(ProcessLookupError):  # nothing of the demo's is left running
        os.killpg(p.pid, 0)
        raise AssertionError("the demo left a process behind")
    assert "epoll/" in text and " listen " in text and " accept" in text  # the server's trace
    assert "client/" in text and " connect " in text  # the client's trace
    assert "socklab echo: stopped" in text and "== done" in text
