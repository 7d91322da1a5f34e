"""select, poll and epoll in a traced program: which sockets it waited on, and which were ready.

Why this exists: "handle many clients with select() or poll()" is a lesson of its own, and the
calls that make it work are invisible in the program's text: ``selectors.DefaultSelector`` is
epoll on Linux, and even ``sock.settimeout(5)`` waits in ``poll`` before each ``recv``. So these
calls are shown too, when they involve sockets: what was watched (for reading, writing), for how
long at most, and what came back ready (or that the wait timed out).

strace shows them like this (``-yy`` names the socket fds; epoll reports the ``data`` the program
registered, which Python's selectors and most C programs set to the fd)::

    pselect6(6, [3<TCP:[..]> 5<TCP:[..]>], NULL, NULL, {tv_sec=5, tv_nsec=0}, NULL) = 1 (in [5], left {..})
    poll([{fd=5<TCP:[..]>, events=POLLIN}], 1, 5000) = 1 ([{fd=5, revents=POLLIN}])
    epoll_ctl(6<anon_inode:[eventpoll]>, EPOLL_CTL_ADD, 5<TCP:[..]>, {events=EPOLLIN, data={u32=5, u64=5}}) = 0
    epoll_wait(6<anon_inode:[eventpoll]>, [{events=EPOLLIN, data={u32=5, u64=5}}], 1, 5000) = 1
"""

from __future__ import annotations

import re
from typing import NamedTuple

from socklab.tools.tracing.decode import to_int
from socklab.tools.tracing.strace_parse import Syscall, split_args

__all__ = ["MULTIPLEX_CALLS", "Ready", "describe", "ready_fds"]

MULTIPLEX_CALLS = frozenset({"select", "pselect6", "poll", "ppoll", "epoll_ctl", "epoll_wait", "epoll_pwait"})

_SOCK_FD = re.compile(r"(\d+)<(?:TCP|UDP|SCTP)[^:]*:\[")
_POLL_FD = re.compile(r"fd=(\d+)(?:<[^,]*)?, events=([A-Z|]+)")
_POLL_READY = re.compile(r"fd=(\d+), revents=([A-Z|]+)")
_EPOLL_READY = re.compile(r"events=([A-Z|]+), data=\{u32=(\d+)")
_TV = re.compile(r"tv_sec=(\d+), tv_n?sec=(\d+)")


def _timeout(text: str, unit: float) -> str:
    """``up to 5 s`` / ``no timeout`` from a millisecond count (poll, epoll) or a timeval (select)."""
    tv = _TV.search(text)
    if tv is not None:
        return f"up to {int(tv[1]) + int(tv[2]) / (1e9 if 'nsec' in text else 1e6):g} s"
    n = to_int(text)
    if n is None or text.strip() == "NULL" or n < 0:
        return "no timeout"
    return f"up to {n * unit:g} s"


def describe(sc: Syscall, epoll_socks: dict[int, set[int]]) -> tuple[str, str, bool] | None:
    """(op, detail, timed_out) for a readiness call that involves sockets, else ``None``.

    Args:
        sc: the call.
        epoll_socks: per epoll fd (of this process), the socket fds registered on it; updated here.
    """
    args = split_args(sc.args)
    name = sc.name
    ready = sc.value if sc.errno is None else None
    if name == "epoll_ctl":
        if len(args) < 3 or _SOCK_FD.match(args[2]) is None:
            return None
        epfd, fd = to_int(args[0].split("<")[0]), to_int(args[2].split("<")[0])
        if epfd is None or fd is None:
            return None
        watched = epoll_socks.setdefault(epfd, set())
        events = re.search(r"events=([A-Z|]+)", args[3]) if len(args) > 3 else None
        what = events[1] if events else ""
        if "DEL" in args[1]:
            watched.discard(fd)
            return "epoll_ctl", f"{args[1]}: stop watching fd {fd}", False
        watched.add(fd)
        return "epoll_ctl", f"{args[1]}: watch fd {fd} for {what}".rstrip(), False
    if name in ("epoll_wait", "epoll_pwait"):
        epfd = to_int(args[0].split("<")[0]) if args else None
        if epfd is None or not epoll_socks.get(epfd):
            return None
        got = [f"fd {fd} {ev}" for ev, fd in _EPOLL_READY.findall(args[1] if len(args) > 1 else "")]
        limit = _timeout(args[3], 1e-3) if len(args) > 3 else "no timeout"
        on = ", ".join(str(f) for f in sorted(epoll_socks[epfd]))
        return name, _result(f"waits on fds {on} ({limit})", got, ready, sc.errno), ready == 0
    if name in ("poll", "ppoll"):
        fds = [(fd, ev) for fd, ev in _POLL_FD.findall(args[0] if args else "")]
        if not fds or _SOCK_FD.search(args[0]) is None:
            return None
        got = [f"fd {fd} {ev}" for fd, ev in _POLL_READY.findall(sc.extra or "")]
        limit = _timeout(args[2], 1e-3) if name == "poll" and len(args) > 2 else \
            _timeout(args[2], 1.0) if len(args) > 2 else "no timeout"
        polled = ", ".join(f"fd {fd} {ev}" for fd, ev in fds)
        return name, _result(f"waits on {polled} ({limit})", got, ready, sc.errno), ready == 0
    if name in ("select", "pselect6"):
        if len(args) < 5 or _SOCK_FD.search(args[1] + args[2]) is None:
            return None
        reads, writes = _fds(args[1]), _fds(args[2])
        extra = sc.extra or ""
        got = [f"fd {fd} readable" for fd in re.findall(r"\d+", _set(extra, "in"))] + \
              [f"fd {fd} writable" for fd in re.findall(r"\d+", _set(extra, "out"))]
        parts = ([f"to read on fds {' '.join(reads)}"] if reads else []) + \
                ([f"to write on fds {' '.join(writes)}"] if writes else [])
        return name, _result(f"waits {', '.join(parts)} ({_timeout(args[4], 1.0)})", got, ready, sc.errno), ready == 0
    return None


class Ready(NamedTuple):
    """One fd a wait reported ready: for reading, for writing, with an error (POLLERR/POLLHUP)."""

    fd: int
    readable: bool
    writable: bool
    error: bool


def ready_fds(sc: Syscall) -> list[Ready]:
    """The fds a poll/select/epoll call came back with (epoll: its ``data``, which Python's
    selectors and most C programs set to the fd)."""
    if sc.errno is not None or not sc.value:
        return []
    name = sc.name
    if name in ("poll", "ppoll", "epoll_wait", "epoll_pwait"):
        if name.startswith("epoll"):
            args = split_args(sc.args)
            found = [(fd, ev) for ev, fd in _EPOLL_READY.findall(args[1] if len(args) > 1 else "")]
        else:
            found = _POLL_READY.findall(sc.extra or "")
        return [Ready(int(fd), "IN" in ev, "OUT" in ev, "ERR" in ev or "HUP" in ev) for fd, ev in found]
    if name in ("select", "pselect6"):
        ins = {int(x) for x in re.findall(r"\d+", _set(sc.extra or "", "in"))}
        outs = {int(x) for x in re.findall(r"\d+", _set(sc.extra or "", "out"))}
        return [Ready(fd, fd in ins, fd in outs, False) for fd in sorted(ins | outs)]
    return []


def _fds(fdset: str) -> list[str]:
    """``[3<TCP:[1.2.3.4:5]> 5<TCP:[..]>]`` -> ``["3", "5"]`` (``NULL``: none)."""
    if fdset.strip() == "NULL":
        return []
    return re.findall(r"\d+", re.sub(r"<[^ ]*>", "", fdset).strip("[]"))


def _set(extra: str, which: str) -> str:
    m = re.search(which + r" \[([^\]]*)\]", extra)
    return m[1] if m else ""


def _result(waits: str, got: list[str], ready: int | None, errno: str | None = None) -> str:
    if errno is not None:
        return f"{waits} -> {errno}" + (" (a signal arrived)" if errno in ("EINTR", "ERESTARTNOHAND") else "")
    if ready == 0:
        return f"{waits} -> timed out, nothing ready"
    if got:
        return f"{waits} -> ready: {', '.join(got)}"
    return f"{waits} -> {ready} ready" if ready is not None else waits
