"""``socklab trace run``: run any program under strace and print its socket lifecycle as it happens.

Why this exists: a learner's own server, a C client from a course, ``curl``: none of them has
socklab's ``--trace``, yet the lifecycle is the same system calls. strace sees them without
touching the program. strace writes to a FIFO; this module reads it as the program runs, feeds
:class:`~socklab.tools.tracing.strace_parse.StraceParser` and
:class:`~socklab.tools.tracing.lifecycle.Lifecycle`, and prints each socket event the way
``--trace`` does (on stderr, or to ``--output``), and as JSON lines for ``socklab trace view``.

The program keeps its own stdin, stdout and stderr, so ``socklab trace run -- ./client | grep x``
pipes the program's output, not the trace. The exit status is the program's (128+N when a signal
N killed it). When strace is missing (exit 2) or the kernel refuses tracing (exit 1), one line says
why and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType
from typing import IO

from socklab.core.errors import ProtocolError, SocklabError
from socklab.tools.tracing.events import RECV_CALLS, SEND_CALLS, SockEvent, format_line
from socklab.tools.tracing.lifecycle import SLOW_CALL, STRACE_CALLS, Lifecycle
from socklab.tools.tracing.strace_parse import StraceParser

__all__ = ["EXPLAIN", "TraceRun", "TracingUnavailable", "kernel_probe", "strace_command"]

KERNEL_LOOK = 0.5  # seconds between looks at the kernel's TCP table (socket states)
EXIT_NO_STRACE = 2
EXIT_NOT_PERMITTED = 1

# --explain: said under the first call of each kind
EXPLAIN = {
    "socket": "socket() makes an endpoint and returns its fd; nothing goes on the network yet",
    "setsockopt": "setsockopt() changes an option of the socket (SO_REUSEADDR: bind even while old "
                  "connections of this port are in TIME_WAIT)",
    "bind": "bind() gives the socket its local address and port (port 0: the kernel picks a free one)",
    "listen": "listen() makes it a server socket: the kernel now completes handshakes and queues the "
              "connections (up to the backlog) until accept() takes them",
    "accept": "accept() takes one finished connection from the queue and returns a NEW fd for it; the "
              "listening fd stays as it was",
    "connect": "connect() on TCP sends SYN and waits for SYN-ACK: the three-way handshake",
    "send": "send()/write() copies bytes into the kernel's send buffer; it may take fewer than given "
            "(a partial send) and returns how many it took",
    "recv": "recv()/read() returns what has arrived so far, up to the size asked: one send may arrive "
            "in several recvs and several sends in one; 0 means the peer closed (FIN)",
    "shutdown": "shutdown(SHUT_WR) sends FIN: 'I have no more to send', while still reading",
    "close": "close() releases the fd; on the last fd of a connected TCP socket it sends FIN",
    "exit": "when a process ends, the kernel closes every fd it still had",
    "select": "select() waits until one of the sockets given is readable (or writable), or the timeout "
              "passes: one thread serves many clients this way",
    "poll": "poll() is select() with a list instead of bit sets (Python's settimeout() waits in poll too)",
    "epoll_ctl": "epoll_ctl() registers a socket with an epoll instance once, instead of passing every socket "
                 "on every wait (selectors.DefaultSelector is epoll on Linux)",
    "epoll_wait": "epoll_wait() waits until a registered socket is ready and says which",
}


class TracingUnavailable(SocklabError):
    """strace is missing, or the kernel will not let it trace. ``exit_code``: 2 or 1."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def strace_command(strace: str, out: str, cmd: list[str], strsize: int = 256) -> list[str]:
    """The strace invocation: follow forks (-f), names (-Y), epoch times (-ttt), call times (-T),
    socket addresses on every fd (-yy), no signal noise, strings up to ``strsize`` bytes."""
    return [strace, "-f", "-q", "-Y", "-ttt", "-T", "-yy", "-s", str(strsize),
            "-e", "trace=" + ",".join(STRACE_CALLS), "-e", "signal=none", "-o", out, "--", *cmd]


def check_tracing(strace: str | None) -> str:
    """The strace path, or :class:`TracingUnavailable` saying why tracing cannot work here."""
    if strace is None:
        raise TracingUnavailable("trace run needs strace, which is not installed: apt-get install strace "
                                 "(scripts/setup.sh installs it)", EXIT_NO_STRACE)
    try:
        probe = subprocess.run([strace, "-o", "/dev/null", "-e", "trace=none", "--", "true"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TracingUnavailable(f"strace could not run: {exc}", EXIT_NOT_PERMITTED) from exc
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or ["(nothing)"])[-1]
        if "not permitted" in said.lower() or "EPERM" in said:
            raise TracingUnavailable(f"tracing is not permitted here ({said}): {_ptrace_advice()}",
                                     EXIT_NOT_PERMITTED)
        raise TracingUnavailable(f"strace does not work here: {said}", EXIT_NOT_PERMITTED)
    return strace


def _ptrace_advice() -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as f:
            scope = f.read().strip()
    except OSError:
        scope = ""
    if scope == "3":
        return "kernel.yama.ptrace_scope is 3 (no tracing at all until reboot); use a machine or VM without it"
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return "in a container, start it with --cap-add=SYS_PTRACE (docker/podman run)"
    if scope == "2":
        return "kernel.yama.ptrace_scope is 2 (only root may trace): run as root, or sysctl kernel.yama.ptrace_scope=1"
    return "run as root or with CAP_SYS_PTRACE; in a container add --cap-add=SYS_PTRACE"


def kernel_probe(proto: str, addr: str) -> str | None:
    """Who holds ``addr``'s port right now, from the kernel's tables (for the EADDRINUSE note)."""
    from socklab.tools.ss import list_sockets

    try:
        port = int(addr.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
    kinds = ("tcp", "tcp6") if proto.startswith("tcp") else ("udp", "udp6")
    entries = list_sockets(kinds, port=port)
    listening = [e for e in entries if e.local_port == port and e.state in ("LISTEN", "UNCONN")]
    waiting = [e for e in entries if e.local_port == port and e.state == "TIME_WAIT"]
    if listening:
        e = listening[0]
        who = f" (pid {e.pid} {e.program})" if e.pid else ""
        return f"a socket is bound to port {port} in state {e.state}{who}"
    if waiting:
        return f"{len(waiting)} connection(s) of port {port} are in TIME_WAIT"
    return None


@dataclass
class Summary:
    """Per process: what --explain says at the end."""

    sockets: int = 0
    connections: int = 0
    sent: int = 0
    received: int = 0
    notes: int = 0
    comm: str = "?"


class TraceRun:
    """One traced run: start, pump events to the sinks, end with the program's exit status.

    Args:
        cmd: the program and its arguments.
        console: where the human lines go (``None``: nowhere).
        json_out: where the JSON lines go (``None``: nowhere).
        explain: add a sentence under the first call of each kind and a summary at the end.
        slow: seconds a blocking call may wait before its note.
    """

    def __init__(self, cmd: list[str], console: IO[str] | None, json_out: IO[str] | None = None,
                 explain: bool = False, slow: float = SLOW_CALL) -> None:
        self.cmd = cmd
        self.console = console
        self.json_out = json_out
        self.explain = explain
        self.parser = StraceParser()
        self.lifecycle = Lifecycle(probe=kernel_probe, slow=slow)
        self.events: list[SockEvent] = []
        self.bad_lines = 0
        self._explained: set[str] = set()
        self._summary: dict[int, Summary] = {}
        self._t0 = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tracee: int | None = None
        self._color = console is not None and console.isatty() and "NO_COLOR" not in os.environ

    def run(self) -> int:
        """Trace the program to its end; returns its exit status (128+N for a signal N)."""
        strace = check_tracing(shutil.which("strace"))
        if shutil.which(self.cmd[0]) is None:
            if os.path.isfile(self.cmd[0]):
                raise FileNotFoundError(f"{self.cmd[0]!r} is not executable: run it with its interpreter "
                                        f"(socklab trace run -- python3 {self.cmd[0]}) or chmod +x it")
            raise FileNotFoundError(f"no program {self.cmd[0]!r} (not a path, nor on PATH)")
        with tempfile.TemporaryDirectory(prefix="socklab-trace-") as tmp:
            fifo = os.path.join(tmp, "strace.fifo")
            os.mkfifo(fifo, 0o600)
            # O_RDWR: no EOF before strace opens its end; the end is strace's exit
            rfd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                return self._pump(strace, fifo, rfd)
            finally:
                os.close(rfd)

    def _pump(self, strace: str, fifo: str, rfd: int) -> int:
        self._t0 = time.time()
        self._proc = subprocess.Popen(strace_command(strace, fifo, self.cmd))
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ)
        next_look = time.monotonic() + KERNEL_LOOK
        try:
            while True:
                done = self._proc.poll() is not None
                if not done:
                    sel.select(0.2)
                if not self._drain(rfd) and done:
                    break
                if time.monotonic() >= next_look:  # what the kernel says of the open connections
                    self._look_at_kernel()
                    next_look = time.monotonic() + KERNEL_LOOK
            self._feed(b"")
            for ev in self.lifecycle.finish():
                self._emit(ev)
        finally:
            sel.close()
            for s, h in old.items():
                signal.signal(s, h)
        self._end()
        code = self._proc.returncode
        return 128 - code if code < 0 else code

    def _look_at_kernel(self) -> None:
        open_socks = self.lifecycle.open_tcp()
        if not open_socks:
            return
        from socklab.tools.ss import list_sockets

        states = {(e.local_port, e.peer_port): e.state for e in list_sockets(("tcp", "tcp6"), with_pids=False)}
        now = time.time()
        for pid, fd, info in open_socks:
            try:
                key = (int((info.local or "").rsplit(":", 1)[1]), int((info.peer or "").rsplit(":", 1)[1]))
            except (IndexError, ValueError):
                continue
            state = states.get(key)
            if state is not None:
                for ev in self.lifecycle.kernel_state(pid, fd, info, state, now):
                    self._emit(ev)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl-C reaches the program itself (same terminal group); TERM and HUP are passed on."""
        if signum != signal.SIGINT and self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._tracee or self._proc.pid, signum)

    def _drain(self, rfd: int) -> bool:
        got = False
        while True:
            try:
                chunk = os.read(rfd, 65536)
            except BlockingIOError:
                return got
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                return got
            got = True
            self._feed(chunk)

    def _feed(self, data: bytes) -> None:
        self.parser.receive_data(data)
        while True:
            try:
                sc = self.parser.next_event()
            except ProtocolError:
                self.bad_lines += 1
                continue
            if sc is None:
                return
            if self._tracee is None:
                self._tracee = sc.pid
            for ev in self.lifecycle.feed(sc):
                self._emit(ev)

    def _emit(self, ev: SockEvent) -> None:
        if ev.ts == 0.0:
            ev.ts = time.time()
        self.events.append(ev)
        self._count(ev)
        if self.json_out is not None:
            ev.write_json(self.json_out, self._t0)
            self.json_out.flush()
        if self.console is None:
            return
        lines = format_line(ev, self._t0, self._color)
        kind = _kind(ev.op)
        if self.explain and kind not in self._explained and kind in EXPLAIN:
            self._explained.add(kind)
            lines += f"\n    what: {EXPLAIN[kind]}"
        self.console.write(lines + "\n")
        self.console.flush()

    def _count(self, ev: SockEvent) -> None:
        s = self._summary.setdefault(ev.pid, Summary(comm=ev.comm))
        s.comm = ev.comm
        s.notes += len(ev.notes)
        if ev.op == "socket":
            s.sockets += 1
        elif ev.op.startswith("accept") or (ev.op == "connect" and ev.errno is None):
            s.connections += 1
        elif ev.op in SEND_CALLS and ev.nbytes:
            s.sent += ev.nbytes
        elif ev.op in RECV_CALLS and ev.nbytes:
            s.received += ev.nbytes

    def _end(self) -> None:
        if self.console is None:
            return
        if self.bad_lines:
            self.console.write(f"socklab trace: {self.bad_lines} strace line(s) not understood were skipped\n")
        if self.explain:
            for pid, s in sorted(self._summary.items()):
                self.console.write(f"summary: {s.comm}[{pid}]: {s.sockets} socket(s), {s.connections} "
                                   f"connection(s), {s.sent} bytes sent, {s.received} received, "
                                   f"{s.notes} note(s)\n")
            if not self._summary:
                self.console.write("summary: the program made no IPv4/IPv6 socket calls\n")
        self.console.flush()


def _kind(op: str) -> str:
    if op in SEND_CALLS:
        return "send"
    if op in RECV_CALLS:
        return "recv"
    if op in ("pselect6", "ppoll", "epoll_pwait"):
        return {"pselect6": "select", "ppoll": "poll", "epoll_pwait": "epoll_wait"}[op]
    return "accept" if op.startswith("accept") else op


def open_sink(path: str | None) -> IO[str] | None:
    """A text file for trace output (``-``: stdout)."""
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    return open(path, "w", encoding="utf-8")  # closed by the caller
