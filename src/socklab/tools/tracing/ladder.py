"""The ladder diagram's model: trace files in, lanes and arrows out (the drawing is in ``svg.py``).

Why this exists: a textbook draws a TCP conversation as a ladder - one vertical lane per endpoint,
time going down, an arrow for each segment that matters. ``socklab trace view`` draws that from
what programs actually did: socklab's own ``--trace-json`` files and ``socklab trace run --json``
files, mixed. This module reads them, puts every event on one clock, finds which socket of one
file is the other end of which socket of another (by the connection's addresses: the 4-tuple
where both are known, the server's address and the time where a socklab client did not record
its own port), and matches the bytes: each send to the recvs that got its bytes, by byte offset
in the stream, so a message split across recvs or several merged into one is visible.

Time: trace-run files and newer socklab files carry epoch ``ts``; older socklab files count from
their own start, and are moved onto the shared clock so that their connections follow causality
(a connect before its accept completes, a send before its recv). A send, connect, shutdown or
close is placed when the call *started* (``ts - dur``), a recv or accept when it returned: then
every arrow points down the page.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import UsageError
from socklab.tools.tracing.events import RECV_CALLS, SEND_CALLS

__all__ = ["Arrow", "Conn", "Ev", "Ladder", "Lane", "build", "load"]

EPOCH = 1e9  # ts above this is seconds since 1970, below it seconds since the trace started
_KIND = {**{c: "send" for c in SEND_CALLS}, **{c: "recv" for c in RECV_CALLS}, "accept4": "accept"}
_ORIGINS = ("send", "connect", "shutdown", "close")


@dataclass
class Ev:
    """One event from a file, normalised."""

    file: int
    line: int
    t: float  # the time it is drawn at, on the shared clock
    kind: str  # socket, bind, listen, accept, connect, send, recv, shutdown, close, error, note...
    op: str  # as written in the file
    proc: str  # the process this file line belongs to
    fd: int | None
    local: str | None
    peer: str | None
    nbytes: int | None
    state: str | None
    detail: str | None
    notes: list[str]
    errno: str | None
    raw: dict[str, Any]
    sock: Sock | None = None
    lane: int = -1
    row: int = -1


@dataclass
class Sock:
    """One socket's life in one process: from socket()/accept() to close()."""

    proc: str
    fd: int
    proto: str = "tcp"
    local: str | None = None
    peer: str | None = None
    listener: Sock | None = None
    listening: bool = False
    events: list[Ev] = field(default_factory=list)
    conn: Conn | None = None


@dataclass
class Conn:
    """Two sockets that are the two ends of one connection (``b`` is None: the peer was not traced)."""

    a: Sock  # the side that connected
    b: Sock | None


@dataclass
class Lane:
    title: str
    subtitle: str
    ghost: bool = False  # a peer that was not traced: only its address is known


@dataclass
class Arrow:
    kind: str  # handshake, data, fin, rst
    src: Ev
    dst: Ev | None  # None: into a lane that was not traced
    dst_lane: int
    label: str
    nbytes: int | None = None
    reverse: bool = False  # drawn from the untraced lane dst_lane into src (src received it)


@dataclass
class Ladder:
    lanes: list[Lane]
    events: list[Ev]
    arrows: list[Arrow]
    files: list[str]
    warnings: list[str]


def load(paths: list[str]) -> list[Ev]:
    """Every event of every file; :class:`UsageError` for a file that is missing or not JSON lines."""
    out: list[Ev] = []
    for i, path in enumerate(paths):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        got = 0
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path} line {n} is not JSON ({exc.msg}); give --trace-json or "
                                 "trace run --json files") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
                raise UsageError(f"{path} line {n} is not a trace event (no 'op')")
            out.append(_event(i, n, obj, path))
            got += 1
        if not got:
            raise UsageError(f"{path} has no trace events")
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _event(i: int, n: int, obj: dict[str, Any], path: str) -> Ev:
    op = str(obj["op"])
    kind = _KIND.get(op, op)
    ts = _num(obj.get("ts")) or 0.0
    dur = _num(obj.get("dur")) or 0.0
    t = ts - dur if kind in _ORIGINS else ts
    if obj.get("source") == "strace":
        proc = f"{i}:{obj.get('comm') or '?'}[{obj.get('pid')}]"
    else:
        proc = f"{i}:{obj.get('engine') or '-'}@{os.path.basename(path)}"
    fd = obj.get("fd")
    notes = obj.get("notes")
    return Ev(file=i, line=n, t=t, kind=kind, op=op, proc=proc, fd=fd if isinstance(fd, int) else None,
              local=_str(obj.get("local")), peer=_str(obj.get("peer")), nbytes=_num_int(obj.get("nbytes")),
              state=_str(obj.get("state")), detail=_str(obj.get("detail")),
              notes=[str(x) for x in notes] if isinstance(notes, list) else [],
              errno=_str(obj.get("errno")), raw=obj)


def _num_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _port(addr: str | None) -> str | None:
    return addr.rsplit(":", 1)[1] if addr and ":" in addr else None


def _host(addr: str | None) -> str | None:
    return addr.rsplit(":", 1)[0].strip("[]") if addr and ":" in addr else None


def same_addr(x: str | None, y: str | None) -> bool:
    """Equal addresses, a wildcard host (0.0.0.0, ::) matching any host on the same port."""
    if not x or not y or _port(x) != _port(y):
        return False
    hx, hy = _host(x), _host(y)
    return hx == hy or hx in ("0.0.0.0", "::") or hy in ("0.0.0.0", "::")


def _sockets(events: list[Ev]) -> list[Sock]:
    """Group each process's events by socket life (an fd number is reused after close)."""
    live: dict[tuple[str, int], Sock] = {}
    socks: list[Sock] = []
    for ev in events:
        if ev.fd is None or ev.fd < 0:
            continue
        key = (ev.proc, ev.fd)
        s = live.get(key)
        if s is None and ev.kind not in ("socket", "accept") and ev.local and not ev.local.endswith(":0"):
            # a socket this process did not open: inherited over fork, the same one as its parent's
            s = next((o for o in reversed(socks) if o.local == ev.local and o.peer == ev.peer), None)
            if s is not None:
                live[key] = s
        if s is None or ev.kind in ("socket", "accept"):
            s = Sock(proc=ev.proc, fd=ev.fd)
            live[key] = s
            socks.append(s)
            if ev.kind == "accept":
                lfd = _listen_fd(ev.detail)
                s.listener = live.get((ev.proc, lfd)) if lfd is not None else None
        proto = ev.raw.get("proto")
        if isinstance(proto, str):
            s.proto = proto
        elif ev.kind == "socket" and ev.detail and "SOCK_DGRAM" in ev.detail:
            s.proto = "udp"
        if ev.kind == "bind" and ev.errno is None and ev.detail and "failed" not in ev.detail:
            s.local = s.local or ev.detail.split()[0]
        if ev.kind == "listen":
            s.listening = True
        if ev.local and not ev.local.endswith(":0"):
            s.local = ev.local
        if ev.peer and ev.kind not in ("sendto", "recvfrom") and s.proto.startswith("tcp"):
            s.peer = s.peer or ev.peer
        if s.listener is not None and s.local is None:
            s.local = s.listener.local
        ev.sock = s
        s.events.append(ev)
        if ev.kind == "close" or (ev.kind == "exit" and ev.op == "exit"):
            live.pop(key, None)
    return socks


def _listen_fd(detail: str | None) -> int | None:
    if detail and "listening fd " in detail:
        tail = detail.split("listening fd ", 1)[1].split()[0]
        return int(tail) if tail.isdigit() else None
    return None


def _pair(socks: list[Sock]) -> list[Conn]:
    """Match each connecting socket with the accepted socket at the other end."""
    accepted = [s for s in socks if s.events and s.events[0].kind == "accept"]
    connecting = [s for s in socks if any(e.kind == "connect" for e in s.events) and s.proto.startswith("tcp")]
    conns: list[Conn] = []
    taken: set[int] = set()
    for c in connecting:
        best: Sock | None = None
        for a in accepted:
            if id(a) in taken or (a.proc == c.proc and a.fd == c.fd):
                continue
            if not same_addr(a.local, c.peer):
                continue
            if c.local and a.peer:
                if same_addr(a.peer, c.local):
                    best = a
                    break
                continue
            if best is None or _gap(a, c) < _gap(best, c):
                best = a  # a socklab client did not record its own port: nearest in time
        if best is not None:
            taken.add(id(best))
        conn = Conn(a=c, b=best)
        c.conn = conn
        if best is not None:
            best.conn = conn
        conns.append(conn)
    for a in accepted:  # accepted from a client that was not traced
        if id(a) not in taken:
            a.conn = Conn(a=a, b=None)
            conns.append(a.conn)
    return conns


def _gap(a: Sock, c: Sock) -> float:
    return abs(a.events[0].t - next(e.t for e in c.events if e.kind == "connect"))


def _align(events: list[Ev], arrows: list[Arrow], paths: list[str]) -> list[str]:
    """Put files whose ts counts from their own start onto the clock of the others.

    Each arrow between two files is a constraint: what arrives cannot arrive before it left. A
    relative file's offset must be at least (send - recv) for arrows into it and at most
    (recv - send) for arrows out of it; it is put in the middle of what is allowed.
    """
    absolute = {e.file for e in events if (_num(e.raw.get("ts")) or 0.0) > EPOCH}
    relative = sorted(set(range(len(paths))) - absolute)
    if not relative:
        return []
    base = min((e.t for e in events if e.file in absolute), default=0.0)
    offset = {f: base for f in relative}
    for e in events:
        if e.file in offset:
            e.t += base
    for _ in range(3):  # a relative file may only meet another relative one: settle in a few rounds
        for f in relative:
            low, high = -float("inf"), float("inf")
            for a in arrows:
                if a.dst is None or a.src.file == a.dst.file:
                    continue
                if a.dst.file == f:
                    low = max(low, a.src.t - a.dst.t)
                elif a.src.file == f:
                    high = min(high, a.dst.t - a.src.t)
            if low == -float("inf") and high == float("inf"):
                continue
            shift = (low + high) / 2 if low > -float("inf") and high < float("inf") else \
                low if low > -float("inf") else high
            if shift:
                offset[f] += shift
                for e in events:
                    if e.file == f:
                        e.t += shift
    return [f"{paths[f]} counts time from its own start: it was put on the shared clock by its connections"
            for f in relative if absolute]


def _causal(events: list[Ev], arrows: list[Arrow]) -> None:
    """No arrow points up: a receiving event is moved to just after its cause where the clocks of two
    files disagree (a trace stamped after the call), keeping each thread's own order."""
    for _ in range(20):
        moved = False
        for a in arrows:
            if a.dst is not None and a.dst.t <= a.src.t and a.dst.file != a.src.file:
                a.dst.t = a.src.t + 1e-6
                moved = True
        last: dict[tuple[str, str], float] = {}
        for e in events:  # still in file order here; one thread's calls follow each other
            key = (e.proc, str(e.raw.get("tid") or e.raw.get("thread")))
            if key in last and e.t < last[key]:
                e.t = last[key]
                moved = True
            last[key] = e.t
        if not moved:
            return


def build(paths: list[str]) -> Ladder:
    """Read the files and lay out lanes, rows and arrows."""
    events = load(paths)
    events.sort(key=lambda e: (e.file, e.line))
    socks = _sockets(events)
    conns = _pair(socks)
    pre = _arrows(conns, [], events)
    warnings = _align(events, pre, paths)
    _causal(events, pre)
    events.sort(key=lambda e: (e.t, e.file, e.line))
    lanes, lane_of = _lanes(events)
    for ev in events:
        ev.lane = lane_of(ev)
    arrows = _arrows(conns, lanes, events)
    rows: list[Ev] = [e for e in events if _shown(e)]
    for i, ev in enumerate(rows):
        ev.row = i
    arrows = [a for a in arrows if a.src.row >= 0 and (a.dst is None or a.dst.row >= 0)]
    return Ladder(lanes=lanes, events=rows, arrows=arrows, files=paths, warnings=warnings)


def _shown(ev: Ev) -> bool:
    hidden = ev.kind in ("getsockname", "getpeername") or (ev.kind == "getsockopt" and not ev.detail)
    return not hidden and ev.lane >= 0


def _lanes(events: list[Ev]) -> tuple[list[Lane], Any]:
    """One lane per process and listening address (its server side), one per process for its clients."""
    lanes: list[Lane] = []
    index: dict[tuple[str, str], int] = {}

    def key_of(ev: Ev) -> tuple[str, str]:
        s = ev.sock
        while s is not None and s.listener is not None:
            s = s.listener
        if s is not None and s.listening:
            return ev.proc, f"server {s.local or '?'}"
        if s is not None and s.proto.startswith("udp") and any(e.kind == "bind" for e in s.events):
            return ev.proc, f"udp {s.local or '?'}"
        if s is not None and s.conn is not None and s.conn.b is s and s.conn.a.events[0].kind == "accept":
            return ev.proc, "server"
        return ev.proc, "client"

    last_lane: dict[str, int] = {}

    def lane_of(ev: Ev) -> int:
        if ev.sock is None and ev.proc in last_lane:  # a poll, a note: on the lane the process used last
            return last_lane[ev.proc]
        lane = _lane_for(key_of(ev))
        last_lane[ev.proc] = lane
        return lane

    def _lane_for(key: tuple[str, str]) -> int:
        if key not in index:
            name = key[0].split(":", 1)[1].split("@")[0]
            where = key[0].split("@", 1)[1] if "@" in key[0] else ""
            index[key] = len(lanes)
            lanes.append(Lane(title=f"{name} {key[1]}".strip(), subtitle=where))
        return index[key]

    return lanes, lane_of


def _arrows(conns: list[Conn], lanes: list[Lane], events: list[Ev]) -> list[Arrow]:
    out: list[Arrow] = []
    ghosts: dict[str, int] = {}
    for conn in conns:
        a, b = conn.a, conn.b
        if b is None:
            peer = a.peer or "?"
            if peer not in ghosts:
                ghosts[peer] = len(lanes)
                lanes.append(Lane(title=peer, subtitle="not traced", ghost=True))
            _one_side(a, ghosts[peer], out)
            continue
        connect = next((e for e in a.events if e.kind == "connect"), None)
        accept = b.events[0] if b.events and b.events[0].kind == "accept" else None
        if connect is not None and accept is not None:
            out.append(Arrow("handshake", connect, accept, accept.lane, "SYN, SYN-ACK, ACK"))
        for x, y in ((a, b), (b, a)):
            out.extend(_data(x, y))
            out.extend(_fin_rst(x, y))
    out.extend(_datagrams(socks_of(events), lanes, ghosts))
    return out


def socks_of(events: list[Ev]) -> list[Sock]:
    seen: dict[int, Sock] = {}
    for e in events:
        if e.sock is not None:
            seen.setdefault(id(e.sock), e.sock)
    return list(seen.values())


def _datagrams(socks: list[Sock], lanes: list[Lane], ghosts: dict[str, int]) -> list[Arrow]:
    """UDP: each datagram sent to the socket bound at its destination, to the first recv there of the
    same size from this sender; one that no traced socket received goes to the address's lane."""
    udp = [s for s in socks if s.proto.startswith("udp")]
    taken: set[int] = set()
    out: list[Arrow] = []
    for s in udp:
        for e in s.events:
            if e.kind != "send" or not e.peer or e.nbytes is None:
                continue
            got = None
            for other in udp:
                if other is s or not same_addr(other.local, e.peer):
                    continue
                for r in other.events:
                    if r.kind == "recv" and id(r) not in taken and r.nbytes == e.nbytes and r.t >= e.t - 1e-3 \
                            and (s.local is None or r.peer is None or same_addr(r.peer, s.local)):
                        got = r
                        break
                if got is not None:
                    break
            if got is not None:
                taken.add(id(got))
                out.append(Arrow("data", e, got, got.lane, f"{e.nbytes} B datagram", e.nbytes))
                continue
            home = next((o for o in udp if o is not s and same_addr(o.local, e.peer)), None)
            if home is not None and home.events:
                out.append(Arrow("data", e, None, home.events[0].lane, f"{e.nbytes} B datagram, never received",
                                 e.nbytes))
                continue
            if e.peer not in ghosts:
                ghosts[e.peer] = len(lanes)
                lanes.append(Lane(title=e.peer, subtitle="not traced", ghost=True))
            out.append(Arrow("data", e, None, ghosts[e.peer], f"{e.nbytes} B datagram", e.nbytes))
    return out


def _one_side(s: Sock, lane: int, out: list[Arrow]) -> None:
    """Arrows between a socket and a peer that was not traced: what it sent and what it got."""
    for e in s.events:
        if e.kind == "connect" and e.errno in (None, "EINPROGRESS"):
            out.append(Arrow("handshake", e, None, lane, "SYN, SYN-ACK, ACK"))
        elif e.kind == "accept":
            out.append(Arrow("handshake", e, None, lane, "SYN, SYN-ACK, ACK", reverse=True))
        elif e.kind == "send" and e.nbytes:
            out.append(Arrow("data", e, None, lane, f"{e.nbytes} B", e.nbytes))
        elif e.kind == "recv" and e.nbytes:
            out.append(Arrow("data", e, None, lane, f"{e.nbytes} B", e.nbytes, reverse=True))
        elif e.kind == "recv" and e.nbytes == 0 and e.errno is None and not _own_eof(e):
            out.append(Arrow("fin", e, None, lane, "FIN", reverse=True))
        elif e.errno in ("ECONNRESET", "EPIPE"):
            out.append(Arrow("rst", e, None, lane, "RST", reverse=True))
        elif e.kind in ("close", "exit") and _sends_rst(e):
            out.append(Arrow("rst", e, None, lane, "RST"))
        elif e.kind in ("shutdown", "close", "exit") and _sends_fin(e):
            out.append(Arrow("fin", e, None, lane, "FIN"))


def _data(x: Sock, y: Sock) -> list[Arrow]:
    """Arrows for the bytes x sent and y received, matched by offset in the stream."""
    sends = [(e, e.nbytes) for e in x.events if e.kind == "send" and e.nbytes]
    recvs = [(e, e.nbytes) for e in y.events if e.kind == "recv" and e.nbytes]
    out: list[Arrow] = []
    per_send: dict[int, int] = {}
    per_recv: dict[int, int] = {}
    i = j = 0
    s_off = r_off = 0  # bytes of the current send / recv already matched
    while i < len(sends) and j < len(recvs):
        se, sn = sends[i]
        re_, rn = recvs[j]
        assert sn is not None and rn is not None
        take = min(sn - s_off, rn - r_off)
        out.append(Arrow("data", se, re_, re_.lane, f"{take} B", take))
        per_send[id(se)] = per_send.get(id(se), 0) + 1
        per_recv[id(re_)] = per_recv.get(id(re_), 0) + 1
        s_off += take
        r_off += take
        if s_off == sn:
            i, s_off = i + 1, 0
        if r_off == rn:
            j, r_off = j + 1, 0
    said: set[int] = set()
    for arrow in out:  # say where TCP did not keep the sender's boundaries, once per send or recv
        n_recvs = per_send[id(arrow.src)]
        n_sends = per_recv[id(arrow.dst)] if arrow.dst is not None else 1
        if n_recvs > 1 and id(arrow.src) not in said:
            said.add(id(arrow.src))
            arrow.label += f": 1 send of {arrow.src.nbytes} B split over {n_recvs} recvs"
        elif n_sends > 1 and arrow.dst is not None and id(arrow.dst) not in said:
            said.add(id(arrow.dst))
            arrow.label += f": {n_sends} sends merged in 1 recv of {arrow.dst.nbytes} B"
    return out


def _sends_fin(e: Ev) -> bool:
    """trace run says which call sent FIN ("FIN sent"; a close after fork or dup does not); in
    socklab's own trace a connection's close and a SHUT_WR shutdown do."""
    if e.detail and "FIN sent" in e.detail:
        return True
    return e.raw.get("source") != "strace" and e.kind == "close" and not (e.detail and "listening" in e.detail)


def _own_eof(e: Ev) -> bool:
    """A recv of 0 after this side's shutdown(SHUT_RD) is no FIN from the peer (trace run says so)."""
    return any("SHUT_RD" in n for n in e.notes)


def _sends_rst(e: Ev) -> bool:
    """trace run says when a close aborted the connection (SO_LINGER 0): "RST sent"."""
    return bool(e.detail and "RST sent" in e.detail)


def _fin_rst(x: Sock, y: Sock) -> list[Arrow]:
    """FIN from x's shutdown(SHUT_WR) or last close to y's recv of 0; RST where y saw a reset or x's
    close sent one."""
    out: list[Arrow] = []
    abort = next((e for e in x.events if e.kind in ("close", "exit") and _sends_rst(e)), None)
    if abort is not None and not any(e.kind in ("shutdown", "close", "exit") and _sends_fin(e) for e in x.events):
        reset = next((e for e in y.events if e.errno in ("ECONNRESET", "EPIPE") and e.t >= abort.t - 1e-3), None)
        return [Arrow("rst", abort, reset, reset.lane if reset is not None else _lane_of(y), "RST")]
    fin = next((e for e in x.events if e.kind in ("shutdown", "close", "exit") and _sends_fin(e)), None)
    if fin is None:  # socklab's own trace does not say which close sent FIN: the last one did
        fin = next((e for e in reversed(x.events) if e.kind == "close"), None)
    eof = next((e for e in y.events if e.kind == "recv" and e.nbytes == 0 and not _own_eof(e)), None)
    reset = next((e for e in y.events if e.errno in ("ECONNRESET", "EPIPE")
                  or (e.kind == "error" and e.detail and "reset" in e.detail.lower())), None)
    if reset is not None:
        src = fin or (x.events[-1] if x.events else None)
        if src is not None:
            out.append(Arrow("rst", src, reset, reset.lane, "RST"))
    elif fin is not None:
        out.append(Arrow("fin", fin, eof, eof.lane if eof is not None else _lane_of(y), "FIN"))
    return out


def _lane_of(s: Sock) -> int:
    return s.events[-1].lane if s.events else -1
