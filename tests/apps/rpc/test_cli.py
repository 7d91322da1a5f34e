"""``socklab rpc serve`` with several listeners, and ``socklab rpc call`` against each."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def rpc_call(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socklab", "rpc", "call", *args], capture_output=True, text=True,
                          timeout=30)


def test_serve_demo_on_three_listeners_and_call(spawn: Callable[..., Any]) -> None:
    p = spawn("rpc", "serve", "--demo", "--listen", "tcp://127.0.0.1:0", "--listen", "http://127.0.0.1:0/rpc",
              "--listen", "ws://127.0.0.1:0/ws")
    ready = r"socklab rpc listening on (\S+) \(engine epoll\)"
    urls = [p.wait_for(ready).group(1)]
    # the next two lines came in the same write: Proc.wait_for's select() cannot see what its
    # buffered reader already holds, so read them directly (they are there, or on their way)
    assert p.popen.stdout is not None
    for _ in range(2):
        m = re.search(ready, p.popen.stdout.readline().decode())
        assert m is not None
        urls.append(m.group(1))
    assert [u.split(":")[0] for u in urls] == ["tcp", "http", "ws"]
    tcp, http, ws = urls
    out = rpc_call(tcp, "subtract", "42", "23")
    assert (out.returncode, out.stdout.strip()) == (0, "19"), out.stderr
    out = rpc_call(http, "subtract", "-n", "minuend=1", "-n", "subtrahend=3")
    assert out.stdout.strip() == "-2", out.stderr
    out = rpc_call(ws, "echo", "hello world")
    assert json.loads(out.stdout) == "hello world", out.stderr
    out = rpc_call(tcp, "nope")
    assert out.returncode == 1 and "-32601" in out.stderr and "Method not found" in out.stderr
    out = rpc_call(http, "rpc.discover")
    assert "subtract" in [m["name"] for m in json.loads(out.stdout)["methods"]]
    assert p.stop(signal.SIGTERM) == 0


def test_serve_a_module_target(spawn: Callable[..., Any], tmp_path: Any) -> None:
    mod = tmp_path / "mathsvc.py"
    mod.write_text("def mul(a, b):\n    return a * b\n\ndef _hidden():\n    pass\n")
    p = spawn("rpc", "serve", f"{mod}", "--port", "0", "--engine", "threads")
    url = p.wait_for(r"socklab rpc listening on (\S+) \(engine threads\)").group(1)
    assert rpc_call(url, "mul", "6", "7").stdout.strip() == "42"
    assert "-32601" in rpc_call(url, "_hidden").stderr


def test_usage_errors() -> None:
    out = subprocess.run([sys.executable, "-m", "socklab", "rpc", "serve"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "--demo" in out.stderr and "not both" not in out.stderr  # neither was given
    out = subprocess.run([sys.executable, "-m", "socklab", "rpc", "serve", "--demo", "x:y"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "not both" in out.stderr
    out = subprocess.run([sys.executable, "-m", "socklab", "rpc", "serve", "--demo", "--listen", "udp://x:1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "scheme" in out.stderr


def test_bench_smoke() -> None:
    out = subprocess.run([sys.executable, "-m", "socklab", "rpc", "bench", "--engines", "epoll", "--calls", "200",
                          "--window", "20", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["server"], r["method"]) for r in rows] == [
        ("xmlrpc.server", "add"), ("socklab epoll", "add"), ("socklab epoll", "add_inline")]
    assert all(r["seq_calls_s"] > 0 for r in rows) and rows[1]["pipelined_calls_s"] > 0
