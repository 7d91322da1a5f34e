"""Trace timestamps a reader can compare across processes (issue 15 item 8, the trace part).

Before the fix every tracer counted from its own start (``+0.117`` on the server, ``+0.002`` on
the client), so a server's and a client's lines could not be put in order, and --trace-json had
no absolute time for ``socklab trace view`` to merge files on.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from socklab.core.trace import Tracer

pytestmark = pytest.mark.timeout(60)


def test_json_lines_carry_epoch_ts_relative_time_and_pid() -> None:
    out = io.StringIO()
    before = time.time()
    tracer = Tracer(engine="epoll", json_file=out)
    tracer.note("one")
    tracer.note("two")
    after = time.time()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    for obj in lines:
        assert before - 0.01 <= obj["ts"] <= after + 0.01  # seconds since the epoch, a float
        assert isinstance(obj["ts"], float)
        assert 0.0 <= obj["rel"] <= after - before + 0.01
        assert obj["pid"] == os.getpid()
    assert lines[0]["ts"] <= lines[1]["ts"] and lines[0]["rel"] <= lines[1]["rel"]
    assert lines[1]["ts"] - lines[0]["ts"] == pytest.approx(lines[1]["rel"] - lines[0]["rel"], abs=1e-5)


def test_console_shows_the_time_of_day_with_microseconds() -> None:
    out = io.StringIO()
    Tracer(engine="epoll", console=out, color=False).note("hello")
    assert re.match(r"\d\d:\d\d:\d\d\.\d{6} epoll/\S+ fd=- note hello$", out.getvalue().splitlines()[0])


def test_console_relative_clock_on_request() -> None:
    out = io.StringIO()
    Tracer(engine="epoll", console=out, color=False, clock="relative").note("hello")
    assert re.match(r"\+ ?\d+\.\d{6} epoll/", out.getvalue())
    with pytest.raises(ValueError, match="clock"):
        Tracer(clock="sundial")


def test_time_of_day_format() -> None:
    from socklab.core.trace import time_of_day

    ts = time.mktime((2026, 12, 5, 12, 4, 31, 0, 0, -1)) + 0.123456
    assert time_of_day(ts) == "12:04:31.123456"


def _load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_server_and_client_traces_merge_in_causal_order(spawn: Any, tmp_path: Path) -> None:
    """Two processes, two --trace-json files: sorted by ts, the server listens before the client starts."""
    server_json, client_json = tmp_path / "server.jsonl", tmp_path / "client.jsonl"
    start = time.time()
    srv = spawn("echo", "serve", "--port", "0", "--trace-json", str(server_json))
    addr = srv.wait_for(r"listening on tcp://(\S+) ").group(1)
    env = {"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "socklab", "echo", "client", addr, "--trace-json", str(client_json)],
                          input=b"hello\n", capture_output=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert srv.stop() == 0
    end = time.time()
    server, client = _load(server_json), _load(client_json)
    assert server and client
    for obj in server + client:
        assert start - 1 <= obj["ts"] <= end + 1  # absolute: the epoch, not each process's own start
    listen = max(o["ts"] for o in server if o["op"] == "listen")
    # The client was started after the server said it was listening: on one clock, every client
    # event comes later (before the fix the client's first events had the smaller numbers).
    assert min(o["ts"] for o in client) > listen
    accept = min(o["ts"] for o in server if o["op"] == "accept")
    first_client = min(o["ts"] for o in client)
    assert first_client < accept  # the client's socket() came before the server accepted it
    assert {o["pid"] for o in server} == {srv.pid} and len({o["pid"] for o in client}) == 1
