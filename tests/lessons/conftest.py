"""Run lesson programs (or broken variants) as subprocesses: port 0, a readiness line, ended by pid."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

READY = re.compile(r"listening on (\S+):(\d+)")


class Served:
    """A server program started for a test; ``host``/``port`` from its readiness line."""

    def __init__(self, command: list[str], cwd: Path | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True,
                                      bufsize=0)
        self.output = b""
        m = self.wait_for(READY)
        self.host, self.port = m.group(1), int(m.group(2))

    def wait_for(self, rx: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.popen.stdout, selectors.EVENT_READ)
            while True:
                m = rx.search(self.output.decode(errors="replace"))
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(self.popen.stdout.fileno(), 65536)
                if not chunk:
                    break
                self.output += chunk
        raise AssertionError(f"no {rx.pattern!r} from {self.popen.args}: {self.output[-2000:]!r}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        for stream in (self.popen.stdout, self.popen.stdin):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """``serve("tcp_echo_server")`` runs a lesson module; ``serve(Path(...))`` runs a file. Port 0."""
    started: list[Served] = []

    def start(program: str | Path, *args: str, cwd: Path | None = None) -> Served:
        target = [str(program)] if isinstance(program, Path) else ["-m", f"socklab.lessons.{program}"]
        s = Served([sys.executable, *target, "0", *args], cwd=cwd)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def run_program(*args: str, stdin: bytes = b"", timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a lesson client to completion (bounded) and return its output."""
    return subprocess.run([sys.executable, "-m", *args], input=stdin.decode(), capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
