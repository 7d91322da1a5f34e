"""socklab learn: the list by objective, walks through lessons (--no-pause), the exercise it writes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from socklab.tools.learn.catalog import LESSONS, OBJECTIVES
from socklab.tools.learn.cli import source_of


def learn(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socklab", "learn", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def test_list_groups_every_lesson_under_its_objective():
    done = learn()
    assert done.returncode == 0
    out = done.stdout
    for objective in OBJECTIVES:
        assert f"\n{objective}\n" in out
    for lesson in LESSONS:
        assert f"  {lesson.name:<10} {lesson.title}" in out
    assert out.index("TCP clients and servers") < out.index("  tcp-echo") < out.index("UDP datagrams")


def test_tcp_echo_walk_through_and_exercise(tmp_path):
    done = learn("tcp-echo", "--no-pause", "--no-trace", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("Predict:") == 2 and out.count("Why:") == 2
    assert "sent 'hello', got back 'hello\\n'" in out  # the client ran
    assert "second client: sent 'second' ... no answer after 2 s" in out  # the iterative server, seen
    assert "second client: got back b'second\\n'" in out
    assert "| client 127.0.0.1:" in out  # the server's own output, after it stopped
    exercise = tmp_path / "tcp_echo_server.py"
    original = source_of("tcp_echo_server").read_text()
    assert exercise.read_text() != original and len(exercise.read_text()) > len(original) - 200
    assert "socklab check echo --iterative 127.0.0.1:7007" in out
    assert f"python3 {exercise.name} 7007" in out


def test_exercise_with_another_mistake_and_refusals(tmp_path):
    done = learn("web", "--no-pause", "--no-trace", "--dir", str(tmp_path), "--mistake", "traversal")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "web_server.py").read_text()
    assert "is_relative_to" not in text  # the check that was removed
    assert (tmp_path / "www" / "index.html").is_file()
    assert f"socklab check http --root {tmp_path / 'www'} 127.0.0.1:8080" in done.stdout
    assert "GET /../../../../etc/passwd ->" in done.stdout and "404 Not Found" in done.stdout
    again = learn("web", "--no-pause", "--no-trace", "--dir", str(tmp_path))
    assert again.returncode == 2 and "exists" in again.stderr  # refused before anything runs
    assert "Starting the server" not in again.stdout


@pytest.mark.parametrize("args, says", [
    (["nosuch"], "no lesson 'nosuch'"),
    (["tcp-echo", "--mistake", "bogus"], "--mistake 'bogus'"),
    (["lifecycle", "--mistake", "one-recv"], "--mistake 'one-recv'"),
])
def test_usage_errors(args, says, tmp_path):
    done = learn(*args, "--dir", str(tmp_path))
    assert done.returncode == 2 and says in done.stderr


def test_chat_walk_through_traced_when_possible(tmp_path):
    done = learn("chat", "--no-pause", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "bob received: ['MSG #lobby ann :hi bob']" in out
    assert "ann sent 'hel' (no newline yet). bob received: []" in out
    assert "bob received: ['MSG #lobby ann :hello']" in out
    if "not tracing:" not in out:  # strace present and permitted: the server's socket calls are shown
        assert "trace> " in out and " accept " in out
    assert (tmp_path / "chat_server.py").is_file()


def test_p2p_and_rpc_lessons_run(tmp_path):
    done = learn("p2p", "--no-pause", "--no-trace", "--no-exercise")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "node B printed: [" in done.stdout and "hello from A" in done.stdout
    done = learn("rpc", "--no-pause", "--no-trace", "--dir", str(tmp_path))
    assert done.returncode == 0
    assert "| 5" in done.stdout and "KeyError" in done.stdout
    assert "Try this:" in done.stdout and (tmp_path / "rpc_server.py").is_file()


def test_without_strace_one_line_says_why_and_the_lesson_still_runs(tmp_path):
    import os

    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # a PATH without strace
    done = subprocess.run([sys.executable, "-m", "socklab", "learn", "lifecycle", "--no-pause", "--dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "(not tracing: strace is not installed (scripts/setup.sh installs it);" in done.stdout
    assert "recv(): b''" in done.stdout


def test_debug_lesson_finds_close_wait_with_ss(tmp_path):
    done = learn("debug", "--no-pause", "--no-trace", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "client: no EOF after 2 s - the server never closed" in done.stdout
    assert re.search(r"\| tcp +CLOSE_WAIT .* python3?/\d+", done.stdout)
    assert "in CLOSE_WAIT: the peer closed but the application never called close()" in done.stdout


def test_pauses_for_a_prediction_on_a_terminal(tmp_path):
    """On a terminal each scene waits for Enter before it runs (the prediction comes first)."""
    import os
    import pty
    import select as select_mod

    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "socklab", "learn", "lifecycle", "--no-trace", "--dir",
                             str(tmp_path)], stdin=secondary, stdout=secondary, stderr=secondary,
                            start_new_session=True)
    os.close(secondary)
    seen = b""
    try:
        while b"your prediction" not in seen:
            ready, _, _ = select_mod.select([main], [], [], 60)
            assert ready, seen
            seen += os.read(main, 4096)
        assert b"-> socket()" not in seen  # nothing ran before the answer
        os.write(main, b"it blocks\n")
        while b"Your exercise" not in seen:
            ready, _, _ = select_mod.select([main], [], [], 60)
            assert ready, seen
            try:
                seen += os.read(main, 4096)
            except OSError:
                break
        assert b"-> socket()" in seen and b"Why:" in seen
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(main)
