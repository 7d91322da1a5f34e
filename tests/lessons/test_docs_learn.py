"""docs/learn.md: the teacher's grading loop runs as written and prints what the page says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "learn.md"


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.slow
def test_the_class_grading_loop_runs_as_documented(tmp_path):
    (block,) = [b for b in sh_blocks() if "for dir in class/" in b]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    for claimed in re.findall(r"`((?:ann|bob|cy): \d+ of 11 probes passed)`", DOC.read_text()):
        assert claimed in done.stdout.splitlines()
    assert len(done.stdout.splitlines()) == 3
    assert "Mistake: the server is iterative" in (tmp_path / "results" / "bob.txt").read_text()
    assert (tmp_path / "results" / "ann.json").is_file()


def test_the_exercise_commands_run(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    learn = subprocess.run(["socklab", "learn", "tcp-echo", "--no-pause", "--no-trace", "--dir", "lab1"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert learn.returncode == 0, learn.stderr
    (block,) = [b for b in sh_blocks() if b.startswith("socklab check echo --iterative --run")]
    done = subprocess.run(["bash", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1  # the planted mistake, found
    assert "FAIL small: the first message came back" in done.stdout
