"""Run a lesson's programs for ``socklab learn``: started by pid, traced when the system allows.

Why this exists: a lesson is watched, not only read. Each program runs as its own process
(``python -m socklab.lessons.NAME``), under ``socklab trace run`` when strace is there and the
machine permits tracing, so the learner sees every socket call it made. A server is ready when
it prints ``listening on HOST:PORT``; it is stopped by its pid (SIGINT, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["LessonRun", "Program", "tracing_available"]

READY = re.compile(r"listening on (\S+):(\d+)")


def tracing_available() -> str | None:
    """None when ``socklab trace run`` can be used, else one line saying why not."""
    try:
        import socklab.tools.tracing.cli  # noqa: F401
    except ImportError:
        return "socklab trace run is not installed in this copy of socklab"
    if shutil.which("strace") is None:
        return "strace is not installed (scripts/setup.sh installs it)"
    try:  # one try: is tracing permitted here (ptrace may be forbidden in containers)?
        done = subprocess.run([sys.executable, "-m", "socklab", "trace", "run", "-o", os.devnull, "--", "true"],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "socklab trace run did not finish a trivial trace in 30 s"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["tracing failed"])[-1]
        return f"tracing is not permitted here ({reason})"
    return None


class Program:
    """One lesson program as a child process; its output lines are collected as they come."""

    def __init__(self, module: str, args: list[str], trace_file: Path | None, stdin: bool = False) -> None:
        # a lesson module (socklab.lessons.NAME), or a program file (a planted copy)
        command = [sys.executable, *([module] if module.endswith(".py") else ["-m", module]), *args]
        if trace_file is not None:
            command = [sys.executable, "-m", "socklab", "trace", "run", "-o", str(trace_file), "--", *command]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.module, self.trace_file = module, trace_file
        self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                      env=env, start_new_session=True, text=True, bufsize=1)
        self.pid = self.popen.pid
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20.0) -> re.Match[str] | None:
        """The first output line matching ``pattern`` (waiting up to ``timeout``), or None."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.5))

    def send_line(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def finish(self, timeout: float = 20.0) -> int | None:
        """Wait for the program to end by itself (a client); kill it at the deadline."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        self._reader.join(5)
        return self.popen.returncode

    def stop(self) -> None:
        """Ctrl-C for the process group (by pid), then SIGKILL if it does not end within 5 s."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGINT)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._reader.join(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def trace_lines(self) -> list[str]:
        if self.trace_file is None or not self.trace_file.exists():
            return []
        return self.trace_file.read_text(errors="replace").splitlines()


class LessonRun:
    """The processes of one walk-through; every one is stopped at the end."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.tmp = Path(tempfile.mkdtemp(prefix="socklab-learn-"))
        self.programs: list[Program] = []

    def start(self, module: str, args: list[str], *, stdin: bool = False) -> Program:
        n = len(self.programs)
        stem = Path(module).stem if module.endswith(".py") else module.rsplit(".", 1)[-1]
        trace_file = self.tmp / f"{n}-{stem}.trace" if self.trace else None
        prog = Program(module, args, trace_file, stdin=stdin)
        self.programs.append(prog)
        return prog

    def start_server(self, module: str, args: list[str], *, stdin: bool = False) -> tuple[Program, str, int]:
        """Start a server on port 0 and wait for its readiness line."""
        prog = self.start(module, ["0", *args], stdin=stdin)
        m = prog.wait_for(READY)
        if m is None:
            prog.stop()
            raise RuntimeError(f"{module} did not say 'listening on HOST:PORT': " + " | ".join(prog.lines[-5:]))
        return prog, m.group(1), int(m.group(2))

    def close(self) -> None:
        for prog in self.programs:
            prog.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
