"""The peer mesh's wire format and its pure logic, sans-I/O: frames, de-duplication, history, backoff.

Why this exists: in a peer-to-peer mesh every node is a client *and* a server, and every link
between two nodes speaks the same symmetric protocol. What travels on a link, how a flooded
message is recognised the second time it arrives, how much history a late joiner gets and how
long to wait before redialling a lost neighbour are all decisions that need no socket and no
clock - so they live here, testable byte by byte, with "now" always passed in by the caller.

Framing: one JSON object per line (newline-delimited JSON; ``json.dumps`` escapes every newline
inside strings, so LF is a safe terminator). The member ``"t"`` names the frame::

    {"t":"hello","id":"5f0c...","name":"ann","listen":"10.77.0.2:7000"}
    {"t":"members","members":[{"id":"...","name":"bob","listen":"10.77.0.3:7000"}]}
    {"t":"msg","mid":"9a1b...","origin":"5f0c...","from":"ann","text":"hi","hops":7,"path":["ann"]}
    {"t":"offer","mid":"...","origin":"...","from":"ann","hops":8,"path":["ann"],
     "file":"notes.txt","size":1234,"sha256":"<64 hex>","holder":"10.77.0.2:7000"}
    {"t":"ping","seq":3,"ts":12.5}            {"t":"pong","seq":3,"ts":12.5}
    {"t":"catchup","limit":100}               {"t":"caught-up","count":12}
    {"t":"want","sha256":"<64 hex>"}          {"t":"refused","reason":"no such file"}
    {"t":"transfer","sha256":"<64 hex>","port":40123}

A link starts with HELLO from both sides (who I am, where I listen), then MEMBERS (whom I know)
and CATCHUP (send me your recent messages; the answer is those messages as ordinary MSG/OFFER
frames followed by CAUGHT-UP). MSG and OFFER are *flooded*: each carries a unique id, a hop limit
decremented at each forward and the path of node names it took. A file is fetched over a fresh
connection to its holder: WANT, answered by TRANSFER (connect to this port of mine for a native
socklab transfer, see :mod:`socklab.protocols.transfer`) or REFUSED.

Sans-I/O: :class:`GossipConnection` - ``receive_data(bytes)`` (``b""`` = EOF), ``next_event()``
returns a frame (a frozen dataclass), :class:`EndOfStream`, or ``None``; ``send(frame) -> bytes``. A peer that breaks the
format raises :class:`~socklab.core.errors.RemoteProtocolError`; sending a malformed frame
ourselves raises :class:`~socklab.core.errors.LocalProtocolError`. No string in a frame (names,
paths, text, file names, reasons) may hold a control, bidi or zero-width character (see
:mod:`socklab.protocols.text`): they reach terminals, so such a frame is a protocol error.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from socklab.core.errors import LocalProtocolError, RemoteProtocolError
from socklab.protocols.lines import EndOfStream  # the one end-of-stream event (here: between frames)
from socklab.protocols.text import find_unsafe

__all__ = [
    "MAX_FRAME",
    "CatchUp",
    "CaughtUp",
    "EndOfStream",
    "Flooded",
    "Frame",
    "GossipConnection",
    "Hello",
    "History",
    "Member",
    "Members",
    "Msg",
    "Offer",
    "Ping",
    "Pong",
    "Refused",
    "SeenCache",
    "Transfer",
    "Want",
    "backoff_delay",
    "decode_frame",
    "encode_frame",
    "forward",
]

MAX_FRAME = 64 * 1024  # longest JSON line accepted by default, bytes
_ID_RE = re.compile(r"[0-9a-f]{8,64}\Z")
_SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
_MAX_TEXT = 16 * 1024
_MAX_NAME = 255


# ---- frames --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """Base of everything a link carries (both directions)."""


@dataclass(frozen=True)
class Member:
    """A node as others know it: its id, its name, the address it listens on (``HOST:PORT``)."""

    id: str
    name: str
    listen: str


@dataclass(frozen=True)
class Hello(Frame):
    """The first frame on a link, from each side."""

    id: str
    name: str
    listen: str


@dataclass(frozen=True)
class Members(Frame):
    """The nodes the sender knows (its neighbours and what they told it)."""

    members: tuple[Member, ...]


@dataclass(frozen=True)
class Flooded(Frame):
    """A frame that floods the mesh: unique id, origin, hop limit and the path it took."""

    mid: str
    origin: str
    sender: str  # the origin's name
    hops: int
    path: tuple[str, ...]


@dataclass(frozen=True)
class Msg(Flooded):
    """A chat line typed at some node's prompt."""

    text: str


@dataclass(frozen=True)
class Offer(Flooded):
    """A node shares a file: fetch it from ``holder`` by its sha256."""

    file: str
    size: int
    sha256: str
    holder: str


@dataclass(frozen=True)
class Ping(Frame):
    """Liveness and RTT probe; ``ts`` is the sender's clock, echoed back in the PONG."""

    seq: int
    ts: float


@dataclass(frozen=True)
class Pong(Frame):
    seq: int
    ts: float


@dataclass(frozen=True)
class CatchUp(Frame):
    """Send me up to ``limit`` of your most recent flooded frames."""

    limit: int


@dataclass(frozen=True)
class CaughtUp(Frame):
    """The end of a catch-up answer: ``count`` frames were sent before it."""

    count: int


@dataclass(frozen=True)
class Want(Frame):
    """Ask a holder for the file with this sha256."""

    sha256: str


@dataclass(frozen=True)
class Refused(Frame):
    """The request cannot be served; the connection closes after it."""

    reason: str


@dataclass(frozen=True)
class Transfer(Frame):
    """The answer to WANT: connect to ``port`` on my address for a native transfer of that file."""

    sha256: str
    port: int


Event = Frame | EndOfStream


# ---- encoding and decoding of one frame ------------------------------------------------------------
def _member_json(m: Member) -> dict[str, Any]:
    return {"id": m.id, "name": m.name, "listen": m.listen}


def _flood_json(f: Flooded) -> dict[str, Any]:
    return {"mid": f.mid, "origin": f.origin, "from": f.sender, "hops": f.hops, "path": list(f.path)}


def encode_frame(frame: Frame) -> bytes:
    """One frame as one JSON line.

    Raises:
        LocalProtocolError: the frame does not pass the checks a receiver applies.
    """
    obj: dict[str, Any]
    if isinstance(frame, Hello):
        obj = {"t": "hello", "id": frame.id, "name": frame.name, "listen": frame.listen}
    elif isinstance(frame, Members):
        obj = {"t": "members", "members": [_member_json(m) for m in frame.members]}
    elif isinstance(frame, Msg):
        obj = {"t": "msg", **_flood_json(frame), "text": frame.text}
    elif isinstance(frame, Offer):
        obj = {"t": "offer", **_flood_json(frame), "file": frame.file, "size": frame.size,
               "sha256": frame.sha256, "holder": frame.holder}
    elif isinstance(frame, Ping):
        obj = {"t": "ping", "seq": frame.seq, "ts": frame.ts}
    elif isinstance(frame, Pong):
        obj = {"t": "pong", "seq": frame.seq, "ts": frame.ts}
    elif isinstance(frame, CatchUp):
        obj = {"t": "catchup", "limit": frame.limit}
    elif isinstance(frame, CaughtUp):
        obj = {"t": "caught-up", "count": frame.count}
    elif isinstance(frame, Want):
        obj = {"t": "want", "sha256": frame.sha256}
    elif isinstance(frame, Refused):
        obj = {"t": "refused", "reason": frame.reason}
    elif isinstance(frame, Transfer):
        obj = {"t": "transfer", "sha256": frame.sha256, "port": frame.port}
    else:
        raise LocalProtocolError(f"not a gossip frame: {frame!r}")
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        decode_frame(data)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"refusing to send an invalid frame: {exc}") from exc
    return data + b"\n"


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad gossip frame: {why}")


def _str(obj: dict[str, Any], key: str, *, pattern: re.Pattern[str] | None = None,
         max_len: int = _MAX_NAME, allow_empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"{key!r} must be a string")
    if (not value and not allow_empty) or len(value) > max_len:
        raise _bad(f"{key!r} is empty or too long")
    if pattern is not None and not pattern.match(value):
        raise _bad(f"{key!r} is malformed")
    if find_unsafe(value, allow_tab=key == "text") is not None:  # names and text reach terminals
        raise _bad(f"{key!r} holds a control, bidi or zero-width character")
    return value


def _int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(f"{key!r} must be an integer in {lo}..{hi}")
    return value


def _float(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise _bad(f"{key!r} must be a number")
    return float(value)


def _member(obj: Any) -> Member:
    if not isinstance(obj, dict):
        raise _bad("a member must be an object")
    return Member(_str(obj, "id", pattern=_ID_RE), _str(obj, "name"), _str(obj, "listen"))


def _flood_fields(obj: dict[str, Any]) -> dict[str, Any]:
    path = obj.get("path")
    if not isinstance(path, list) or len(path) > 255 or not all(
            isinstance(p, str) and 0 < len(p) <= _MAX_NAME and find_unsafe(p) is None for p in path):
        raise _bad("'path' must be a list of up to 255 names (no control characters)")
    return {"mid": _str(obj, "mid", pattern=_ID_RE), "origin": _str(obj, "origin", pattern=_ID_RE),
            "sender": _str(obj, "from"), "hops": _int(obj, "hops", 0, 255), "path": tuple(path)}


def decode_frame(line: bytes) -> Frame:
    """One JSON line (without its LF) as a frame.

    Raises:
        RemoteProtocolError: not JSON, not an object, an unknown ``t`` or a missing/ill-typed field.
    """
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise _bad("not JSON") from exc
    if not isinstance(obj, dict):
        raise _bad("not a JSON object")
    kind = obj.get("t")
    if kind == "hello":
        return Hello(_str(obj, "id", pattern=_ID_RE), _str(obj, "name"), _str(obj, "listen"))
    if kind == "members":
        members = obj.get("members")
        if not isinstance(members, list) or len(members) > 1024:
            raise _bad("'members' must be a list of up to 1024 members")
        return Members(tuple(_member(m) for m in members))
    if kind == "msg":
        return Msg(**_flood_fields(obj), text=_str(obj, "text", max_len=_MAX_TEXT))
    if kind == "offer":
        return Offer(**_flood_fields(obj), file=_str(obj, "file"), size=_int(obj, "size", 0, 2**62),
                     sha256=_str(obj, "sha256", pattern=_SHA_RE), holder=_str(obj, "holder"))
    if kind in ("ping", "pong"):
        cls = Ping if kind == "ping" else Pong
        return cls(_int(obj, "seq", 0, 2**62), _float(obj, "ts"))
    if kind == "catchup":
        return CatchUp(_int(obj, "limit", 0, 100_000))
    if kind == "caught-up":
        return CaughtUp(_int(obj, "count", 0, 100_000))
    if kind == "want":
        return Want(_str(obj, "sha256", pattern=_SHA_RE))
    if kind == "refused":
        return Refused(_str(obj, "reason", max_len=1024, allow_empty=True))
    if kind == "transfer":
        return Transfer(_str(obj, "sha256", pattern=_SHA_RE), _int(obj, "port", 1, 65535))
    raise _bad(f"unknown frame type {str(kind)[:40]!r}")


# ---- the connection ---------------------------------------------------------------------------------
class GossipConnection:
    """Frames a byte stream into gossip events; encodes frames to send.

    Args:
        max_frame: the longest JSON line accepted (bytes, LF excluded); longer raises
            :class:`RemoteProtocolError` with hint 413 as soon as the buffer passes it.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._scan = 0  # bytes before this offset hold no newline
        self._eof = False
        self._ended = False
        self._failed: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means EOF.

        Raises:
            RemoteProtocolError: data after EOF.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RemoteProtocolError("data after end of stream")
        self._buf += data

    def next_event(self) -> Event | None:
        """The next event, or ``None`` until more bytes arrive.

        Raises:
            RemoteProtocolError: a malformed or oversized frame, or EOF inside a frame.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise

    def _next(self) -> Event | None:
        buf = self._buf
        while True:
            nl = buf.find(b"\n", max(self._pos, self._scan))
            if nl < 0:
                self._compact(force=True)
                self._scan = len(buf)
                if len(buf) > self.max_frame + 1:
                    raise RemoteProtocolError(f"frame longer than {self.max_frame} bytes", hint=413)
                if self._eof and not self._ended:
                    if buf.strip():
                        raise RemoteProtocolError("connection closed in the middle of a frame")
                    self._ended = True
                    buf.clear()
                    return EndOfStream()
                return None
            start = self._pos
            end = nl - 1 if nl > start and buf[nl - 1] == 13 else nl
            if end - start > self.max_frame:
                raise RemoteProtocolError(f"frame longer than {self.max_frame} bytes", hint=413)
            line = bytes(buf[start:end])
            self._pos = nl + 1
            self._compact(force=False)
            if line.strip():  # blank lines between frames are ignored
                return decode_frame(line)

    def _compact(self, force: bool) -> None:
        """Drop consumed bytes - at once when asked, else only in big steps (no quadratic copying)."""
        if self._pos and (force or self._pos >= 65536 or self._pos == len(self._buf)):
            del self._buf[:self._pos]
            self._scan = max(0, self._scan - self._pos)
            self._pos = 0

    def events(self) -> Iterator[Event]:
        """Every event available now (a convenience over :meth:`next_event`)."""
        while (event := self.next_event()) is not None:
            yield event

    def send(self, frame: Frame) -> bytes:
        """The bytes for one frame.

        Raises:
            LocalProtocolError: the frame is malformed.
        """
        return encode_frame(frame)


# ---- flooding: de-duplication, hop limit, path --------------------------------------------------------
def forward(frame: Flooded, via: str) -> Flooded | None:
    """The copy to pass on after this node (named ``via``) delivered ``frame``, or ``None``.

    The hop limit is decremented at each forward (like IP's TTL, RFC 791 section 3.2): a frame
    that arrives with ``hops <= 1`` is delivered but goes no further.
    """
    if frame.hops <= 1:
        return None
    return replace(frame, hops=frame.hops - 1, path=(*frame.path, via)[-255:])


class SeenCache:
    """The ids of flooded frames seen recently: a bounded LRU with an optional age limit.

    A frame comes back to a node once per extra path to it in the mesh; this cache turns every
    arrival after the first into a duplicate. Bounded twice: at most ``capacity`` ids (the least
    recently seen goes first), and an id not seen for ``max_age`` seconds is forgotten (``now`` is
    always the caller's clock, and must not go backwards).

    Args:
        capacity: how many ids to remember (the oldest is evicted first).
        max_age: seconds an id is remembered, or 0 for "until evicted".
    """

    def __init__(self, capacity: int = 4096, max_age: float = 0.0) -> None:
        if capacity < 1:
            raise LocalProtocolError("SeenCache capacity must be at least 1")
        self.capacity = capacity
        self.max_age = max_age
        self._ids: OrderedDict[str, float] = OrderedDict()
        self.duplicates = 0

    def first_time(self, mid: str, now: float) -> bool:
        """Record ``mid``; True the first time it is seen (within the bounds), False after."""
        self._expire(now)
        if mid in self._ids:
            self._ids[mid] = now  # remembered for max_age after it was last seen
            self._ids.move_to_end(mid)
            self.duplicates += 1
            return False
        self._ids[mid] = now
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, mid: object) -> bool:
        return mid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def _expire(self, now: float) -> None:
        if self.max_age <= 0:
            return
        limit = now - self.max_age
        while self._ids:
            oldest, seen = next(iter(self._ids.items()))
            if seen >= limit:
                break
            del self._ids[oldest]


class History:
    """The most recent flooded frames, oldest first, for late joiners (a bounded ring)."""

    def __init__(self, capacity: int = 200) -> None:
        self._ring: deque[Flooded] = deque(maxlen=max(0, capacity))

    def add(self, frame: Flooded) -> None:
        self._ring.append(frame)

    def recent(self, limit: int) -> list[Flooded]:
        """Up to ``limit`` frames, oldest first."""
        if limit <= 0:
            return []
        return list(self._ring)[-limit:]

    def __iter__(self) -> Iterator[Flooded]:
        return iter(list(self._ring))

    def __len__(self) -> int:
        return len(self._ring)


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait before redial number ``attempt`` (0-based): exponential, capped, jittered.

    "Full jitter": a uniform draw in ``[delay/2, delay]`` so that nodes that lost the same
    neighbour at once do not redial in lock step. ``jitter`` is the caller's random number in
    ``[0, 1)`` (this module has no randomness of its own, so tests are exact).
    """
    delay = min(cap, base * float(1 << min(max(attempt, 0), 30)))
    return delay / 2 + (delay / 2) * min(max(jitter, 0.0), 1.0)


def members_of(frames: Iterable[Member], exclude: str) -> tuple[Member, ...]:
    """Members de-duplicated by id, without ``exclude`` (the receiver's own id)."""
    seen: dict[str, Member] = {}
    for m in frames:
        if m.id != exclude:
            seen[m.id] = m
    return tuple(seen.values())
