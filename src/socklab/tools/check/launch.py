"""``socklab check ... --run CMD``: start the learner's server, grade it, stop it - one command per submission.

Why this exists: a teacher grading forty submissions wants one line per student, not forty
terminals. ``--run "python server.py {port}"`` picks a free port, starts the command in its own
process group, waits until the server has bound the port (a TCP connect succeeds, or for UDP the
port is taken) - bounded, 20 s by default - grades it, and stops it by its pid (SIGTERM, then
SIGKILL). A server that exits or never binds is a verdict too, with the last lines it printed.

It keeps raw sockets on purpose (issue 18: clients use :mod:`socklab.runtime.client`): whether the
learner's program has bound its port is asked of the kernel itself - a bare connect, a bind that
finds the port taken - before any client of socklab's may talk to it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time

from socklab.core.errors import UsageError

__all__ = ["Launched", "free_port"]


def free_port(kind: int) -> int:
    """A port nothing is bound to right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bound(port: int, kind: int) -> bool:
    if kind == socket.SOCK_STREAM:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True  # EADDRINUSE: the server holds it
        return False


class Launched:
    """The server under test, started from ``command`` with ``{port}`` filled in."""

    def __init__(self, command: str, udp: bool, ready_timeout: float = 20.0) -> None:
        if "{port}" not in command:
            raise UsageError("--run: the command must say where the port goes, e.g. --run 'python server.py {port}'")
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        self.port = free_port(kind)
        argv = shlex.split(command.replace("{port}", str(self.port)))
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
        try:
            self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        except OSError as exc:
            self.log.close()
            raise UsageError(f"--run: cannot start {argv[0]!r}: {exc.strerror}") from None
        self.problem: str | None = None
        deadline = time.monotonic() + ready_timeout
        while not _bound(self.port, kind):
            if self.popen.poll() is not None:
                self.problem = f"the server exited (status {self.popen.returncode}) before it bound port {self.port}"
                break
            if time.monotonic() > deadline:
                self.problem = f"the server did not bind port {self.port} within {ready_timeout:.0f} s"
                break
            time.sleep(0.05)  # a process we do not control: nothing to wait on but the port itself

    def output_tail(self, lines: int = 5) -> str:
        self.log.seek(0)
        text = self.log.read()[-4000:].decode("utf-8", "replace")
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.log.close()
