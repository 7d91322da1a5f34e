"""A socklab command whose stderr is a pseudo-terminal: what a person at a terminal sees (progress bars)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Any


class Tty:
    """A socklab subprocess whose stderr is a pseudo-terminal (stdout a pipe: the readiness line)."""

    def __init__(self, args: list[str], tty: bool = True) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="xterm-256color", COLUMNS="120", LINES="40")
        env.pop("NO_COLOR", None)
        self.master = -1
        stderr: Any = subprocess.PIPE
        if tty:
            self.master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            stderr = slave
        self.popen = subprocess.Popen([sys.executable, "-m", "socklab", *args], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
        if tty:
            os.close(slave)
        self.seen = b""

    def readiness(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        assert ready, "no readiness line"
        line = self.popen.stdout.readline().decode()
        m = re.search(pattern, line)
        assert m, line
        return m

    def read_until(self, text: str, timeout: float = 15.0) -> bool:
        """Read the terminal until ``text`` shows (True) or it closes / time runs out (False)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                return False
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every writer closed
                return False
            if not data:
                return False
            self.seen += data
        return True

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        """Wait for the exit; everything written to stderr (the terminal's bytes, or the pipe's)."""
        if self.master >= 0:
            self.read_until("\0never\0", timeout)
            err = self.seen.decode(errors="replace")
        else:
            assert self.popen.stderr is not None
            err = self.popen.stderr.read().decode(errors="replace")
        return self.popen.wait(timeout), err

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream:
                stream.close()
        if self.master >= 0:
            os.close(self.master)
