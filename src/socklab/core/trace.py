"""The lifecycle trace: every socket system call, as it happens, for people learning sockets.

Why this exists: the socket lifecycle (socket, setsockopt, bind, listen, accept, connect, send,
recv, shutdown, close) is invisible in most programs. With ``--trace`` every socklab server and
client prints it, one line per call, with a timestamp, the file descriptor, the engine and
thread, the peer, the byte counts and - where the kernel reports it - the TCP state. Notes point
out the classic surprises inline: a partial send, a message split across recvs or two merged in
one (for protocols that declare their framing), back-pressure, EADDRINUSE and TIME_WAIT.

Timestamps are wall-clock time (the console shows the time of day with microseconds, the JSON
lines seconds since the epoch), so the traces of a server and of its clients - separate
processes - can be read side by side or merged (``socklab trace view``).

Where an event loop hides the system calls (asyncio, uvloop), the engines trace at the transport
level and say so (``level="transport"``).

A disabled tracer costs one attribute test per call site: engines hold ``tracer = None`` unless
tracing is on.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

__all__ = ["FRAMINGS", "TCP_STATES", "BoundaryNotes", "TraceEvent", "Tracer", "tcp_state", "time_of_day"]

# Linux include/net/tcp_states.h; the first byte of struct tcp_info is the state.
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}
_TCP_INFO = getattr(socket, "TCP_INFO", 11)


_CLOSING_OPS = frozenset({"socket", "accept", "recv", "shutdown", "close"})


def tcp_state(sock: socket.socket) -> str | None:
    """The kernel's TCP state of ``sock`` (Linux ``TCP_INFO``), or ``None`` where unknown."""
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)
    except OSError:
        return None
    return TCP_STATES.get(struct.unpack_from("B", raw)[0])


def format_addr(addr: Any) -> str:
    """``127.0.0.1:80``, ``[::1]:80``, a Unix path, or ``-``."""
    if addr is None or addr == "" or addr == b"":
        return "-"
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(addr, bytes):
        return addr.decode(errors="replace")
    return str(addr)


@dataclass
class TraceEvent:
    """One traced call. ``op`` is the system call (or transport method) name.

    ``ts`` is wall-clock time, seconds since the Unix epoch, so that traces written by different
    processes (a server, its clients, ``socklab trace run``) can be merged on one clock; within
    one tracer it advances with the monotonic clock (no jumps). ``rel`` is the same instant in
    seconds since the tracer started; ``pid`` the process that wrote the event.
    """

    ts: float
    op: str
    fd: int | None = None
    engine: str | None = None
    thread: str | None = None
    peer: str | None = None
    nbytes: int | None = None
    requested: int | None = None
    state: str | None = None
    level: str = "syscall"
    detail: str | None = None
    notes: list[str] = field(default_factory=list)
    rel: float | None = None
    pid: int | None = None


class Tracer:
    """Collects trace events and hands them to sinks (console, JSON lines, a list in tests).

    Args:
        engine: the engine name recorded on every event.
        console: a text stream for the human-readable lines (``None``: no console output).
        json_file: a path (or open text file) receiving one JSON object per event.
        color: colour the console lines (rich markup) when the stream is a terminal.
        clock: the console's time column: ``"wall"`` (time of day with microseconds, the
            default: comparable between processes) or ``"relative"`` (``+seconds`` since start).
            The JSON lines always carry both (``ts`` since the epoch, ``rel`` since start).

    Thread-safe: events from several threads are written whole, in order of emission.
    """

    def __init__(self, engine: str = "-", console: IO[str] | None = None,
                 json_file: str | IO[str] | None = None, color: bool | None = None,
                 clock: str = "wall") -> None:
        if clock not in ("wall", "relative"):
            raise ValueError(f"clock must be 'wall' or 'relative', not {clock!r}")
        self.engine = engine
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._wall0 = time.time()  # ts = _wall0 + (monotonic - _t0): comparable across processes
        self._pid = os.getpid()
        self._sinks: list[Callable[[TraceEvent], None]] = []
        self._json: IO[str] | None = None
        self._own_json = False
        if console is not None:
            self._sinks.append(_ConsoleSink(console, color, clock))
        if json_file is not None:
            if isinstance(json_file, str):
                self._json = open(json_file, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
                self._own_json = True
            else:
                self._json = json_file
            self._sinks.append(self._write_json)
        self.events: list[TraceEvent] | None = None
        self._closing: dict[int, str | None] = {}  # fd -> "fin_sent" | "peer_fin" | "time_wait"

    def record(self) -> list[TraceEvent]:
        """Also keep every event in a list (for tests and replay); returns that list."""
        self.events = []
        return self.events

    def add_sink(self, sink: Callable[[TraceEvent], None]) -> None:
        self._sinks.append(sink)

    def emit(self, op: str, sock: socket.socket | None = None, *, fd: int | None = None,
             peer: Any = None, nbytes: int | None = None, requested: int | None = None,
             detail: str | None = None, level: str = "syscall", state: str | None = None,
             notes: list[str] | None = None, engine: str | None = None) -> TraceEvent:
        """Record one event. ``sock`` fills in the fd and TCP state when given."""
        if sock is not None:
            if fd is None:
                try:
                    fd = sock.fileno()
                except OSError:
                    fd = None
            if state is None and fd is not None and fd >= 0:
                state = tcp_state(sock)
        rel = time.monotonic() - self._t0
        with self._lock:
            if fd is not None and op in _CLOSING_OPS:
                state = self._closing_story(op, fd, nbytes, detail, state)
        event = TraceEvent(
            ts=self._wall0 + rel, op=op, fd=fd, engine=engine or self.engine,
            thread=threading.current_thread().name, peer=None if peer is None else format_addr(peer),
            nbytes=nbytes, requested=requested, state=state, level=level, detail=detail,
            notes=list(notes or ()), rel=rel, pid=self._pid,
        )
        event.notes.extend(_automatic_notes(event))
        with self._lock:
            if self.events is not None:
                self.events.append(event)
            for sink in self._sinks:
                sink(event)
        return event

    def _closing_story(self, op: str, fd: int, nbytes: int | None, detail: str | None,
                       state: str | None) -> str | None:
        """Who sent FIN first on ``fd``, so the state shown after both FINs is TCP's, not the fd's.

        When the side that closed first gets the peer's FIN, Linux hands the connection to a
        TIME_WAIT mini-socket (what ``ss`` lists) and the socket the program still holds reports
        CLOSE. A learner must see TIME_WAIT there: it is the state of the connection, and the
        reason a restarted server may meet EADDRINUSE. The side that closed second really ends in
        CLOSE (after LAST_ACK). Called under the lock.
        """
        story = self._closing.get(fd)
        if op in ("socket", "accept"):
            self._closing.pop(fd, None)
            return state
        if op == "recv" and nbytes == 0:
            story = "time_wait" if story == "fin_sent" else (story or "peer_fin")
        elif story is None and (op == "close" or (op == "shutdown" and (detail is None or "SHUT_RD:" not in detail))):
            story = "fin_sent"
        self._closing[fd] = story
        if op == "close":
            del self._closing[fd]  # the fd number may be reused by the next socket
        return "TIME_WAIT" if story == "time_wait" and state == "CLOSE" else state

    def note(self, text: str, sock: socket.socket | None = None, **kw: Any) -> TraceEvent:
        """An explanatory line that is not a system call (a split message, a state change...)."""
        return self.emit("note", sock, detail=text, **kw)

    def _write_json(self, event: TraceEvent) -> None:
        assert self._json is not None
        self._json.write(json.dumps(asdict(event), separators=(",", ":")) + "\n")
        self._json.flush()

    def close(self) -> None:
        if self._own_json and self._json is not None:
            self._json.close()


#: framings a protocol can declare (``Protocol.framing``) for the trace's message-boundary notes
FRAMINGS = ("lines", "u32-length")


class BoundaryNotes:
    """Exact notes on how TCP cut a protocol's messages across ``recv()`` calls.

    Only a protocol that declares its framing (``Protocol.framing``: ``"lines"``, each message
    ends with LF; ``"u32-length"``, a 4-byte big-endian length before each message) gets them:
    for any other byte stream (echo's random ping payloads, a file) the trace cannot know where
    a message ends, and says nothing about it rather than something false. Fed each ``recv()``'s
    bytes in order, on traced connections only.
    """

    __slots__ = ("_acc", "_framing", "_header", "_left", "_mid")

    def __init__(self, framing: str) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}; declare one of: {', '.join(FRAMINGS)}")
        self._framing = framing
        self._mid = False  # the last recv() ended inside a message
        self._header = 0  # u32-length: bytes of the current length prefix seen so far
        self._left = 0  # u32-length: body bytes of the current message still to come
        self._acc = 0  # u32-length: the length prefix being read

    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        """The notes for one ``recv()`` that returned ``data`` (not EOF)."""
        if not data:
            return []
        continued = self._mid
        if self._framing == "lines":
            view = bytes(data)
            messages = view.count(b"\n")
            self._mid = not view.endswith(b"\n")
            messages += self._mid
            unit = "lines"
        else:
            messages = self._feed_length(memoryview(data).cast("B"), continued)
            unit = "length-prefixed messages"
        notes = []
        if continued:
            what = "line" if self._framing == "lines" else "message"
            notes.append(f"this recv() continues a {what} begun in an earlier recv(): one message split "
                         "across reads")
        if messages > 1:
            ends = [part for part, yes in (("the first began in an earlier recv()", continued),
                                           ("the last is not complete yet", self._mid)) if yes]
            notes.append(f"this recv() held {messages} {unit}" + (f" ({'; '.join(ends)})" if ends else "")
                         + ": TCP merged several messages into one read; a protocol must find message "
                         "boundaries itself")
        return notes

    def _feed_length(self, data: memoryview, continued: bool) -> int:
        """Walk length prefixes and bodies; returns how many messages this recv() touched."""
        i, n, touched = 0, len(data), int(continued)
        while i < n:
            if self._left:  # inside a body
                take = min(self._left, n - i)
                self._left -= take
                i += take
                continue
            if self._header == 0:
                touched += 1  # a new message (its length prefix) starts here
                self._acc = 0
            while self._header < 4 and i < n:
                self._acc = (self._acc << 8) | data[i]
                self._header += 1
                i += 1
            if self._header == 4:
                self._header = 0
                self._left = self._acc  # 0: an empty message, complete already
        self._mid = bool(self._left or self._header)
        return touched


def _automatic_notes(event: TraceEvent) -> list[str]:
    notes = []
    if event.op in ("send", "sendto") and event.requested is not None and event.nbytes is not None \
            and event.nbytes < event.requested:
        notes.append(f"partial send: the kernel took {event.nbytes} of {event.requested} bytes; "
                     "the rest must be sent again (sendall/the transport does it)")
    if event.op == "recv" and event.nbytes == 0:
        notes.append("recv returned 0 bytes: the peer sent FIN (end of its stream)")
    return notes


def time_of_day(ts: float) -> str:
    """``12:04:31.123456``: local wall-clock time with microseconds, comparable across processes."""
    seconds = int(ts)
    micros = int((ts - seconds) * 1_000_000)
    return f"{time.strftime('%H:%M:%S', time.localtime(seconds))}.{micros:06d}"


class _ConsoleSink:
    """Human-readable lines: ``12:04:31.123456 epoll/main fd=5 accept peer=127.0.0.1:5000 [ESTABLISHED]``.

    The time is the wall clock's time of day, so the lines of a server and of its clients (each
    on its own terminal) can be put in order; ``clock="relative"`` prints ``+0.000123`` (seconds
    since the tracer started) instead.
    """

    _STYLE = {"note": "yellow", "close": "red", "shutdown": "red", "accept": "green", "connect": "green",
              "listen": "cyan", "bind": "cyan", "socket": "cyan", "error": "bold red"}

    def __init__(self, stream: IO[str], color: bool | None, clock: str = "wall") -> None:
        self.stream = stream
        if color is None:
            color = stream.isatty() and "NO_COLOR" not in os.environ
        self.color = color
        self.relative = clock == "relative"

    def __call__(self, e: TraceEvent) -> None:
        when = f"+{e.rel if e.rel is not None else e.ts:9.6f}" if self.relative else time_of_day(e.ts)
        parts = [when, f"{e.engine}/{e.thread}"]
        parts.append(f"fd={e.fd}" if e.fd is not None else "fd=-")
        op = e.op if e.level == "syscall" else f"{e.op}(transport)"
        parts.append(op)
        if e.nbytes is not None:
            if e.requested in (None, e.nbytes):
                parts.append(f"{e.nbytes} bytes")
            elif e.op.startswith("recv"):
                parts.append(f"{e.nbytes} bytes (asked for up to {e.requested})")
            else:
                parts.append(f"{e.nbytes} of {e.requested} bytes")
        if e.peer:
            parts.append(f"peer={e.peer}")
        if e.detail:
            parts.append(e.detail)
        if e.state:
            parts.append(f"[{e.state}]")
        line = " ".join(parts)
        if self.color:
            style = self._STYLE.get(e.op)
            line = f"\x1b[{_ANSI[style]}m{line}\x1b[0m" if style else line
        out = [line] + [f"    note: {n}" for n in e.notes]
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()


_ANSI = {"yellow": "33", "red": "31", "green": "32", "cyan": "36", "bold red": "1;31"}
