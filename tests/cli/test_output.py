"""Output that pipes can use (issue 17): tables one row per line, no colour, JSON compact when piped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from socklab.cli import output


def socklab(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR", "FORCE_COLOR")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "socklab", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=full_env)


def test_ss_piped_prints_the_listener_on_one_line_for_grep() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = socklab("ss", "-lt")  # stdout is a pipe; rich alone assumed 80 columns and folded cells
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(rows) == 1 and "LISTEN" in rows[0], out.stdout
    assert f"/{os.getpid()}" in rows[0], rows[0]  # the process column is on the same line
    assert "\x1b[" not in out.stdout
    assert all(line == line.rstrip() for line in out.stdout.splitlines())


def test_engines_table_piped_is_one_line_per_row_even_when_columns_is_small() -> None:
    out = socklab("engines", COLUMNS="40")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) < 40, len(lines)  # 8 engines, a header, box lines; folded at 40 columns it was hundreds
    assert "\x1b[" not in out.stdout


def test_json_text_is_pretty_on_a_terminal_and_compact_in_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "stdout_is_terminal", lambda: True)
    assert output.json_text({"a": [1, 2]}) == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    monkeypatch.setattr(output, "stdout_is_terminal", lambda: False)
    assert output.json_text({"a": [1, 2]}) == '{"a":[1,2]}'
