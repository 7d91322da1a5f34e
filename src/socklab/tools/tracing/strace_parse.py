"""Reading strace's output: lines in, system calls out - no process, no file, no socket here.

Why this exists: ``socklab trace run`` watches a program socklab did not write through
``strace -f -Y -ttt -T -yy``. That output is a text protocol like any other, with its own
framing (one line per event), its own interleaving (with ``-f`` a call blocked in one thread is
printed as ``<unfinished ...>`` and finished later by a ``<... NAME resumed>`` line, while other
threads' calls come in between) and its own garbage (a line cut short when the tracer is killed).
So it is parsed the sans-I/O way, as h11 parses HTTP: :meth:`StraceParser.receive_data` takes
bytes in any chunking, :meth:`StraceParser.next_event` hands back one event at a time, and a line
that is not strace's grammar raises :class:`RemoteProtocolError` (the line is consumed; call
``next_event`` again to go on).

The line grammar (``-f -Y -ttt -T -yy`` with ``-o FILE``)::

    PID[<comm>]  EPOCH NAME(ARGS) = RET [ERRNO (message)] [(extra)] <DURATION>
    PID[<comm>]  EPOCH NAME(ARGS <unfinished ...>
    PID[<comm>]  EPOCH <... NAME resumed>REST) = RET ... <DURATION>
    PID[<comm>]  EPOCH +++ exited with CODE +++
    PID[<comm>]  EPOCH +++ killed by SIGNAME [(core dumped)] +++
    PID[<comm>]  EPOCH --- SIGNAME {...} ---

Events: :class:`Syscall` (a finished call; an unfinished one is held until it resumes, or is
reported with ``ret=None`` when its process ends first) and :class:`ProcessEnd`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from socklab.core.errors import RemoteProtocolError

__all__ = ["MAX_LINE", "ProcessEnd", "StraceEvent", "StraceParser", "Syscall", "split_args", "unquote"]

MAX_LINE = 1 << 20  # one strace line; -s bounds strings, so a longer one is not strace's

_PREFIX = re.compile(r"(\d+)(?:<([^>\n]*)>)?\s+(\d+(?:\.\d+)?)\s+(.*)\Z", re.S)
_CALL = re.compile(r"([a-z_][a-z0-9_]*)\((.*)\Z", re.S)
_RESUMED = re.compile(r"<\.\.\. ([a-z_][a-z0-9_]*) resumed>(.*)\Z", re.S)
_EXITED = re.compile(r"\+\+\+ exited with (-?\d+) \+\+\+\Z")
_KILLED = re.compile(r"\+\+\+ killed by (SIG[A-Z0-9+-]+)( \(core dumped\))? \+\+\+\Z")
_SIGNAL = re.compile(r"--- (SIG[A-Z0-9+-]+) .*---\Z", re.S)
_VALUE = re.compile(r"\s*=\s*(\?|0x[0-9a-f]+|-?\d+)")
_RESULT = re.compile(
    r"(?:\s+([A-Z][A-Z0-9_]+)\s+\(([^)\n]*)\))?"  # errno and message
    r"(?:\s+\((.*?)\))?"  # extra, e.g. (Timeout) or ([{fd=3, revents=POLLIN}])
    r"(?:\s+<(\d+(?:\.\d+)?)>)?\s*\Z", re.S)
_UNFINISHED = " <unfinished ...>"


@dataclass(frozen=True)
class StraceEvent:
    """Base of the parser's events: which process/thread (``pid`` is strace's, i.e. the thread id)."""

    pid: int
    ts: float
    comm: str | None


@dataclass(frozen=True)
class Syscall(StraceEvent):
    """One finished system call.

    Attributes:
        name: the call (``accept4``, ``sendto``...).
        args: the raw argument text between the parentheses.
        ret: the return value's text (``5``, ``-1``, ``?``), ``None`` if the process ended mid-call.
        ret_fd: the return value's fd annotation from ``-yy`` without its angle brackets
            (``TCP:[127.0.0.1:80->127.0.0.1:5000]``), for calls that return a descriptor.
        errno: ``EADDRINUSE`` and the like, when the call failed.
        errmsg: strace's words for that errno.
        extra: what strace adds after the value (``Timeout``, the poll result list).
        dur: seconds spent in the call (``-T``).
    """

    name: str = ""
    args: str = ""
    ret: str | None = None
    ret_fd: str | None = None
    errno: str | None = None
    errmsg: str | None = None
    extra: str | None = None
    dur: float | None = None

    @property
    def value(self) -> int | None:
        """The return value as an integer (``None`` for ``?`` or an unfinished call)."""
        if self.ret is None or self.ret == "?":
            return None
        return int(self.ret, 16) if self.ret.startswith("0x") else int(self.ret)


@dataclass(frozen=True)
class ProcessEnd(StraceEvent):
    """A process (or thread) ended: its exit code, or the signal that killed it."""

    code: int | None = None
    signal: str | None = None
    core_dumped: bool = False


@dataclass
class _Pending:
    ts: float
    comm: str | None
    name: str
    head: str = field(default="")


class StraceParser:
    """Incremental strace output parser (``-f -Y -ttt -T -yy``).

    Usage::

        p = StraceParser()
        p.receive_data(chunk)          # any chunking, down to one byte
        while (ev := p.next_event()) is not None:
            ...                        # Syscall / ProcessEnd
        p.receive_data(b"")            # end of input: a last line without newline is parsed

    Raises:
        RemoteProtocolError: from :meth:`next_event`, for a line that is not strace output or one
            longer than :data:`MAX_LINE`; the line is dropped and parsing can go on.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        self._skipping = False  # inside an over-long line: drop up to its newline
        self._pending: dict[int, _Pending] = {}
        self._ready: list[StraceEvent] = []

    def receive_data(self, data: bytes) -> None:
        """Add output; ``b""`` means the end of it."""
        if not data:
            self._eof = True
        else:
            self._buf += data

    def next_event(self) -> StraceEvent | None:
        """The next event, or ``None`` until more data arrives."""
        while not self._ready:
            line = self._next_line()
            if line is None:
                if self._eof:
                    self._flush_pending()
                    if self._ready:
                        break
                return None
            if line.strip():
                self._parse_line(line)
        return self._ready.pop(0)

    def _next_line(self) -> str | None:
        nl = self._buf.find(b"\n")
        if self._skipping:
            if nl < 0:
                self._buf.clear()
                return None
            del self._buf[:nl + 1]
            self._skipping = False
            nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > MAX_LINE:
                self._buf.clear()
                self._skipping = True
                raise RemoteProtocolError(f"strace line longer than {MAX_LINE} bytes")
            if not (self._eof and self._buf):
                return None
            nl = len(self._buf)
        raw = bytes(self._buf[:nl])
        del self._buf[:nl + 1]
        if len(raw) > MAX_LINE:
            raise RemoteProtocolError(f"strace line longer than {MAX_LINE} bytes")
        return raw.decode("utf-8", errors="replace").rstrip("\r")

    def _flush_pending(self) -> None:
        for pid, p in sorted(self._pending.items()):
            self._ready.append(Syscall(pid=pid, ts=p.ts, comm=p.comm, name=p.name, args=p.head))
        self._pending.clear()

    def _parse_line(self, line: str) -> None:
        m = _PREFIX.match(line)
        if m is None:
            raise RemoteProtocolError(f"not an strace line: {line[:80]!r}")
        pid, comm, ts, rest = int(m[1]), m[2], float(m[3]), m[4]
        if (e := _EXITED.match(rest)) is not None:
            self._end_of(pid)
            self._ready.append(ProcessEnd(pid=pid, ts=ts, comm=comm, code=int(e[1])))
            return
        if (k := _KILLED.match(rest)) is not None:
            self._end_of(pid)
            self._ready.append(ProcessEnd(pid=pid, ts=ts, comm=comm, signal=k[1], core_dumped=bool(k[2])))
            return
        if _SIGNAL.match(rest) is not None:
            return  # signal deliveries: -e signal=none normally hides them
        if (r := _RESUMED.match(rest)) is not None:
            pending = self._pending.pop(pid, None)
            if pending is None or pending.name != r[1]:
                # resumed without its start (strace attached mid-call): keep what we have
                pending = _Pending(ts=ts, comm=comm, name=r[1])
            self._finish(pid, pending, pending.head + r[2], comm or pending.comm)
            return
        c = _CALL.match(rest)
        if c is None:
            raise RemoteProtocolError(f"not a system call line: {rest[:80]!r}")
        body = c[2]
        if body.endswith(_UNFINISHED):
            if pid in self._pending:  # a second start without a resume: report the first as cut short
                self._flush_one(pid)
            self._pending[pid] = _Pending(ts=ts, comm=comm, name=c[1], head=body[: -len(_UNFINISHED)])
            return
        if body.endswith(_UNFINISHED + ") = ?"):  # killed mid-call
            self._ready.append(Syscall(pid=pid, ts=ts, comm=comm, name=c[1],
                                       args=body[: -len(_UNFINISHED + ") = ?")], ret="?"))
            return
        self._finish(pid, _Pending(ts=ts, comm=comm, name=c[1]), body, comm)

    def _flush_one(self, pid: int) -> None:
        p = self._pending.pop(pid)
        self._ready.append(Syscall(pid=pid, ts=p.ts, comm=p.comm, name=p.name, args=p.head))

    def _end_of(self, pid: int) -> None:
        if pid in self._pending:
            self._flush_one(pid)

    def _finish(self, pid: int, start: _Pending, body: str, comm: str | None) -> None:
        close = _closing_paren(body)
        if close < 0:
            raise RemoteProtocolError(f"{start.name}: no closing parenthesis: {body[:80]!r}")
        val = _VALUE.match(body, close + 1)
        if val is None:
            raise RemoteProtocolError(f"{start.name}: no result: {body[close:close + 80]!r}")
        pos = val.end()
        ret_fd = None
        if body.startswith("<", pos):  # the returned fd's annotation (-yy), e.g. 4<TCP:[a->b]>
            end = _skip_angle(body, pos)
            ret_fd = body[pos + 1:end - 1]
            pos = end
        res = _RESULT.match(body, pos)
        if res is None:
            raise RemoteProtocolError(f"{start.name}: no result: {body[close:close + 80]!r}")
        self._ready.append(Syscall(
            pid=pid, ts=start.ts, comm=comm or start.comm, name=start.name, args=body[:close],
            ret=val[1], ret_fd=ret_fd, errno=res[1], errmsg=res[2], extra=res[3],
            dur=float(res[4]) if res[4] else None))


_OPEN = {"(": ")", "[": "]", "{": "}"}


def _closing_paren(body: str) -> int:
    """Index of the ``)`` that closes the argument list (strings and nesting skipped), or -1."""
    depth = 0
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch == '"':
            i = _skip_string(body, i)
            continue
        if ch in "([{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == ")":
            if depth == 0:
                return i
            depth -= 1
        elif ch == "<" and i > 0 and body[i - 1].isdigit():
            i = _skip_angle(body, i)
            continue
        i += 1
    return -1


def _skip_string(s: str, i: int) -> int:
    """Index just past the ``"...."`` starting at ``i`` (and a trailing ``...``)."""
    i += 1
    n = len(s)
    while i < n:
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == '"':
            i += 1
            break
        i += 1
    if s.startswith("...", i):
        i += 3
    return i


def _skip_angle(s: str, i: int) -> int:
    """Index just past an fd annotation ``<TCP:[a->b]>`` (nested ``<..>`` and ``[..]`` allowed)."""
    depth = 0
    square = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == "[":
            square += 1
        elif ch == "]":
            square = max(0, square - 1)
        elif ch == "<":
            depth += 1
        elif ch == ">" and square == 0:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def split_args(args: str) -> list[str]:
    """The top-level arguments of an argument list, stripped (best effort, never raises)."""
    out: list[str] = []
    depth = 0
    start = 0
    i, n = 0, len(args)
    while i < n:
        ch = args[i]
        if ch == '"':
            i = _skip_string(args, i)
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "<" and i > 0 and args[i - 1].isdigit():
            i = _skip_angle(args, i)
            continue
        elif ch == "," and depth == 0:
            out.append(args[start:i].strip())
            start = i + 1
        i += 1
    tail = args[start:].strip()
    if tail or out:
        out.append(tail)
    return out


_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "\\": 92, '"': 34, "'": 39, "a": 7, "b": 8, "e": 27}


def unquote(text: str) -> tuple[bytes, bool] | None:
    """A strace string argument as bytes, and whether strace cut it short (``"..."...``).

    ``None`` if ``text`` is not a string argument.
    """
    text = text.strip()
    truncated = text.endswith('"...')
    if truncated:
        text = text[:-3]
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    body = text[1:-1]
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch != "\\" or i + 1 >= n:
            out += ch.encode("utf-8", errors="replace")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x" and i + 3 < n + 1 and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2:i + 4]):
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif nxt in "01234567":
            j = i + 1
            while j < n and j < i + 4 and body[j] in "01234567":
                j += 1
            out.append(int(body[i + 1:j], 8) & 0xFF)
            i = j
        else:
            out.append(_ESCAPES.get(nxt, ord(nxt) & 0xFF))
            i += 2
    return bytes(out), truncated
