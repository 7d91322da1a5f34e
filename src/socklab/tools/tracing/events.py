"""One socket event of a traced program, and how it is shown: the same line as socklab's ``--trace``.

Why this exists: ``socklab trace run`` must print a learner's program exactly the way socklab's
own ``--trace`` prints socklab's programs (:mod:`socklab.core.trace`), and write JSON lines that
``socklab trace view`` reads beside socklab's own ``--trace-json`` files. A :class:`SockEvent`
carries the fields of :class:`socklab.core.trace.TraceEvent` plus what strace adds: the process
and thread ids, the local address, the time spent in the call and its errno.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from socklab.core.trace import TraceEvent, time_of_day

__all__ = ["RECV_CALLS", "SEND_CALLS", "SockEvent", "format_line", "to_trace_event"]

SEND_CALLS = frozenset({"send", "sendto", "sendmsg", "sendmmsg", "write", "writev", "sendfile"})
RECV_CALLS = frozenset({"recv", "recvfrom", "recvmsg", "recvmmsg", "read", "readv"})


@dataclass
class SockEvent:
    """One call on a socket (or a note about one), as ``trace run`` reports it.

    Attributes:
        ts: when the call returned, seconds since the epoch (one clock for every process).
        op: the system call (``accept4``, ``recvfrom``, ``read``...), or ``note``/``exit``.
        pid: the process (thread group) id; ``tid`` the thread's.
        comm: the program's name (from the kernel, as strace ``-Y`` reports it).
        proto: ``tcp``/``udp`` (``tcp6``/``udp6`` for IPv6), where known.
        local, peer: the socket's addresses (``127.0.0.1:5000``) where known.
        nbytes, requested: bytes moved, and bytes asked for (send: given; recv: room offered).
        state: the TCP state after the call (none for UDP).
        state_from: ``calls`` when the calls imply that state (tcp_state's table), ``kernel`` when
            the kernel's TCP table reported it.
        dur: seconds spent inside the call (``-T``).
        errno: the error name when the call failed (``EADDRINUSE``).
    """

    ts: float
    op: str
    pid: int
    tid: int
    comm: str
    fd: int | None = None
    proto: str | None = None
    local: str | None = None
    peer: str | None = None
    nbytes: int | None = None
    requested: int | None = None
    state: str | None = None
    state_from: str | None = None
    detail: str | None = None
    notes: list[str] = field(default_factory=list)
    dur: float | None = None
    errno: str | None = None

    @property
    def engine(self) -> str:
        """Where socklab's trace names the engine: the program and its pid, ``curl[4242]``."""
        return f"{self.comm}[{self.pid}]"

    @property
    def thread(self) -> str:
        return "main" if self.tid == self.pid else f"thread-{self.tid}"

    def to_json(self, t0: float | None = None) -> dict[str, Any]:
        """The JSON line: socklab's ``--trace-json`` fields (``ts`` since the epoch, ``rel`` since
        ``t0``, the start of the trace) plus strace's extras."""
        base = asdict(to_trace_event(self, t0=self.ts if t0 is None else t0))
        if t0 is None:
            base["rel"] = None
        base.update(source="strace", pid=self.pid, tid=self.tid, comm=self.comm, proto=self.proto,
                    local=self.local, dur=self.dur, errno=self.errno, state_from=self.state_from)
        return base

    def write_json(self, out: IO[str], t0: float | None = None) -> None:
        out.write(json.dumps(self.to_json(t0), separators=(",", ":")) + "\n")


def to_trace_event(e: SockEvent, t0: float) -> TraceEvent:
    """The same event in socklab's own trace vocabulary (``ts`` since the epoch, ``rel`` since ``t0``)."""
    return TraceEvent(ts=e.ts, op=e.op, fd=e.fd, engine=e.engine, thread=e.thread, peer=e.peer,
                      nbytes=e.nbytes, requested=e.requested, state=e.state, level="syscall",
                      detail=e.detail, notes=list(e.notes), rel=e.ts - t0, pid=e.pid)


# the colours of socklab's --trace console (core/trace.py), by call
_STYLE = {"note": "33", "close": "31", "shutdown": "31", "accept": "32", "accept4": "32", "connect": "32",
          "listen": "36", "bind": "36", "socket": "36", "error": "1;31", "exit": "33"}


def format_line(e: SockEvent, t0: float, color: bool = False) -> str:
    """The console lines of ``--trace`` for this event (the first line, then ``    note:`` lines).

    The layout is :mod:`socklab.core.trace`'s: the time of day with microseconds (one clock for
    every process, so a traced client's lines and a socklab server's can be put in order),
    ``engine/thread``, ``fd=``, the call, byte counts
    (``k of n bytes`` for a partial send), the peer, details, ``[STATE]``.
    """
    t = to_trace_event(e, t0)
    parts = [time_of_day(t.ts), f"{t.engine}/{t.thread}", f"fd={t.fd}" if t.fd is not None else "fd=-", t.op]
    if t.nbytes is not None:
        if t.requested in (None, t.nbytes):
            parts.append(f"{t.nbytes} bytes")
        elif t.op.startswith(("recv", "read")):
            parts.append(f"{t.nbytes} bytes (asked for up to {t.requested})")
        else:
            parts.append(f"{t.nbytes} of {t.requested} bytes")
    if t.peer:
        parts.append(f"peer={t.peer}")
    if t.detail:
        parts.append(t.detail)
    if t.state:
        parts.append(f"[{t.state}]")
    line = " ".join(parts)
    if color and (style := _STYLE.get(t.op)) is not None:
        line = f"\x1b[{style}m{line}\x1b[0m"
    return "\n".join([line] + [f"    note: {n}" for n in t.notes])
