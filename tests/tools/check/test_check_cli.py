"""The socklab check command: exit statuses, one line per probe, --json, --gradescope, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BROKEN = Path(__file__).parent / "broken"


def check(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socklab", "check", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_all_pass_exit_0_one_line_per_probe(serve):
    s = serve("select_server")
    done = check("echo", s.address)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("PASS ") for line in lines) == 11
    assert lines[-1] == "11 of 11 probes passed"


def test_a_failure_exits_1_with_mistake_and_fix(serve):
    s = serve(BROKEN / "one_recv_server.py")
    done = check("echo", s.address, "--only", "small", "--timeout", "3")
    assert done.returncode == 1
    line = next(x for x in done.stdout.splitlines() if x.startswith("FAIL small:"))
    assert "Mistake: it answers one recv() and hangs up" in line and "Fix: " in line


def test_json_and_gradescope(serve, tmp_path):
    s = serve("tcp_echo_server")
    out = tmp_path / "results.json"
    done = check("echo", s.address, "--json", "--gradescope", str(out), "--timeout", "3",
                 "--only", "small", "--only", "second_client")
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["check"] == "echo" and doc["passed"] == 1 and doc["total"] == 2
    by_name = {r["name"]: r for r in doc["results"]}
    assert by_name["small"]["passed"] and not by_name["second_client"]["passed"]
    assert "iterative" in by_name["second_client"]["mistake"]
    grade = json.loads(out.read_text())
    assert grade["score"] == 1.0
    for test in grade["tests"]:
        assert set(test) == {"name", "score", "max_score", "status", "output"}
        assert test["status"] in ("passed", "failed") and test["max_score"] == 1.0
    failed = next(t for t in grade["tests"] if t["name"] == "second_client")
    assert failed["score"] == 0.0 and "Mistake:" in failed["output"] and "Fix:" in failed["output"]


def test_iterative_option_leaves_out_the_concurrency_probes(serve):
    s = serve("tcp_echo_server")
    done = check("echo", "--iterative", s.address)
    assert done.returncode == 0, done.stdout
    assert "second_client" not in done.stdout and "8 of 8 probes passed" in done.stdout


@pytest.mark.parametrize("args, says", [
    (["echo", "127.0.0.1"], "no port"),
    (["echo", "127.0.0.1:0"], "HOST:PORT"),
    (["echo", "127.0.0.1:7", "--only", "nope"], "--only 'nope'"),
    (["http", "127.0.0.1:7", "--root", "/no/such/dir"], "--root"),
])
def test_usage_errors_exit_2_in_one_line(args, says):
    done = check(*args)
    assert done.returncode == 2
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and says in lines[0], done.stderr  # one line naming the option, no traceback


def test_help_teaches_with_examples():
    done = subprocess.run([sys.executable, "-m", "socklab", "check", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert "socklab check echo 127.0.0.1:7007" in done.stdout and "--gradescope" in done.stdout


def test_run_starts_grades_and_stops_the_server(tmp_path):
    pidfile = tmp_path / "pid"
    server = tmp_path / "server.py"
    server.write_text(f"import os, runpy, sys\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                      "runpy.run_module('socklab.lessons.threaded_server', run_name='__main__')\n")
    done = check("echo", "--run", f"{sys.executable} {server} {{port}}", "--only", "small", "--only",
                 "second_client")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 probes passed" in done.stdout
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # stopped (and reaped) by the grader
        import os

        os.kill(pid, 0)


def test_run_a_server_that_dies_is_a_verdict_with_its_output(tmp_path):
    out = tmp_path / "results.json"
    done = check("chat", "--run", f"{sys.executable} -c \"import sys; sys.exit('cannot bind {{port}}')\"",
                 "--gradescope", str(out))
    assert done.returncode == 1
    assert "exited (status 1) before it bound port" in done.stdout and "it printed: cannot bind" in done.stdout
    assert json.loads(out.read_text())["score"] == 0.0


@pytest.mark.parametrize("args, says", [
    (["echo", "--run", "python3 server.py"], "{port}"),
    (["echo"], "HOST:PORT, or --run"),
    (["echo", "127.0.0.1:7", "--run", "x {port}"], "one of the two"),
])
def test_run_usage_errors(args, says):
    done = check(*args)
    assert done.returncode == 2 and says in done.stderr
