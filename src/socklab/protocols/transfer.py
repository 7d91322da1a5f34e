"""socklab's native file-transfer wire format, sans-I/O: frames, the session's order, chunk hashes.

Why this exists: moving a file fast over TCP is easy (``sendfile``); moving it *safely* needs a
little protocol around the bytes - what the file is called, how big it is, where to resume, and
a proof at the end that what arrived is what was sent. This module is that protocol with no
socket and no file: the apps (``socklab.apps.transfer``) move bytes and touch the disk.

Frames are ``type (1 byte) | length (4 bytes, big-endian) | JSON payload``; file contents travel
*unframed* right after a START frame, exactly ``size - offset`` bytes, so the sender can hand the
kernel the whole file with ``sendfile`` and the receiver can ``recv_into`` its own buffers.
Streams of unknown size (stdin) travel as CHUNK frames instead, ended by an empty one.

One session (S = sender, R = receiver)::

    S: HELLO                     R: HELLO
    per entry:
      S: ENTRY {name, kind, size, mode, mtime}
         kind "dir":             R: RESULT {ok}
         kind "file":            R: OFFER {have: full chunks already in the .part, crcs}
                                    (or RESULT {ok: false} - exists, bad name...)
                                 S: START {offset}   (offset = verified prefix, chunk-aligned)
                                 S: <size - offset raw bytes>
                                 S: TRAILER {sha256 of the whole file, crc32 of every chunk}
                                 R: RESULT {ok, error?}
         kind "stream":          S: START {offset: 0}  S: CHUNK* CHUNK(empty)  S: TRAILER  R: RESULT
    S: DONE                      (R closes)
    either side, at any time:    ERROR {message}  (fatal: the session ends)

Hashes: a fast CRC-32 per chunk (``chunk_size`` bytes, 1 MiB by default) locates damage and
proves a resumable prefix; SHA-256 of the whole file proves the result. Resuming re-sends at most
the one chunk that was partly received.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CHUNK_SIZE", "MAGIC", "Chunk", "Done", "Entry", "ErrorFrame", "Event", "FileHasher", "Hello", "Offer",
    "RawData", "Result", "Start", "Trailer", "TransferConnection", "check_name",
]

MAGIC = "socklab-transfer"
VERSION = 1
CHUNK_SIZE = 1 << 20
MAX_FRAME = 16 << 20  # JSON control frames (a trailer of a 1 TiB file lists 1 Mi CRCs: ~11 MiB)
_HEADER = 5

# frame type bytes
_T = {"hello": b"H", "entry": b"E", "offer": b"O", "start": b"S", "chunk": b"C", "trailer": b"T",
      "result": b"R", "done": b"D", "error": b"X"}
_NAMES = {v[0]: k for k, v in _T.items()}


class Event:
    """Base of every event, in both directions."""


@dataclass(frozen=True)
class Hello(Event):
    version: int = VERSION
    chunk_size: int = CHUNK_SIZE


@dataclass(frozen=True)
class Entry(Event):
    """One thing to transfer: ``kind`` is ``file``, ``dir`` or ``stream`` (size ``None``)."""

    name: str
    kind: str = "file"
    size: int | None = 0
    mode: int = 0o644
    mtime: float | None = None


@dataclass(frozen=True)
class Offer(Event):
    """The receiver already holds ``have`` full chunks (their CRC-32s follow) of a partial file."""

    have: int = 0
    crcs: tuple[int, ...] = ()


@dataclass(frozen=True)
class Start(Event):
    """Raw bytes from ``offset`` to the end follow (or CHUNK frames for a stream)."""

    offset: int = 0


@dataclass(frozen=True)
class RawData(Event):
    """File bytes of the unframed phase that arrived with control bytes (rare; usually zero-copy)."""

    data: bytes


@dataclass(frozen=True)
class Chunk(Event):
    """A piece of a stream; empty ends it."""

    data: bytes


@dataclass(frozen=True)
class Trailer(Event):
    sha256: str
    crcs: tuple[int, ...] = ()


@dataclass(frozen=True)
class Result(Event):
    ok: bool
    error: str | None = None
    code: str | None = None  # exists, name, verify, disk, io
    bytes: int = 0


@dataclass(frozen=True)
class Done(Event):
    """The sender has nothing more."""


@dataclass(frozen=True)
class ErrorFrame(Event):
    message: str
    code: str | None = None


def check_name(name: str) -> list[str]:
    """The path components of a relative name, or a refusal.

    Raises:
        RemoteProtocolError: absolute, empty, ``..``, NUL or backslash - a name must stay inside
            the destination directory (hint: none; the receiver answers RESULT code ``name``).
    """
    if not name or "\0" in name or "\\" in name:
        raise RemoteProtocolError(f"refused name {name!r}: empty or illegal character")
    if name.startswith("/"):
        raise RemoteProtocolError(f"refused name {name!r}: absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise RemoteProtocolError(f"refused name {name!r}: '..', '.' or empty component")
    return parts


class FileHasher:
    """CRC-32 per chunk and SHA-256 of the whole, fed in order (the receiver's and sender's view).

    ``snapshot()``/``restore`` are not needed: a resumed transfer re-hashes its prefix.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.sha = hashlib.sha256()
        self.crcs: list[int] = []
        self._crc = 0
        self._in_chunk = 0
        self.size = 0

    def update_crc(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the CRC side only (run it and :meth:`update_sha` on two threads if you like)."""
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._in_chunk)
            self._crc = zlib.crc32(view[:take], self._crc)
            self._in_chunk += take
            self.size += take
            view = view[take:]
            if self._in_chunk == self.chunk_size:
                self.crcs.append(self._crc)
                self._crc, self._in_chunk = 0, 0

    def update_sha(self, data: bytes | bytearray | memoryview) -> None:
        self.sha.update(data)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.update_crc(data)
        self.update_sha(data)

    def final_crcs(self) -> tuple[int, ...]:
        """Every chunk's CRC, the short last one included."""
        return (*self.crcs, self._crc) if self._in_chunk else tuple(self.crcs)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def _encode(kind: str, payload: dict[str, Any] | bytes) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    return _T[kind] + len(body).to_bytes(4, "big") + body


# what each side may receive next: state -> allowed frame kinds
_RECEIVER_EXPECTS = {"hello": {"hello"}, "entries": {"entry", "done"}, "offer-sent": {"start"},
                     "stream": {"chunk"}, "trailer": {"trailer"}, "result-pending": set(), "closed": set()}
_SENDER_EXPECTS = {"hello": {"hello"}, "idle": set(), "answer": {"offer", "result"}, "sending": {"result"},
                   "closed": set()}


@dataclass
class TransferConnection:
    """One side of a session: bytes in, events out; events in, bytes out.

    Args:
        role: ``"sender"`` or ``"receiver"``.
        max_frame: the largest control frame accepted.

    The receiver's unframed phase: after a START for a file, :attr:`raw_remaining` says how many
    raw bytes belong to the file. Bytes already buffered come out as :class:`RawData` events;
    an adapter that receives straight into its own buffer reports them with :meth:`raw_received`.
    """

    role: str
    max_frame: int = MAX_FRAME
    state: str = "hello"
    raw_remaining: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _events: deque[Event] = field(default_factory=deque)
    _entry: Entry | None = None
    _eof: bool = False

    # ---- receiving --------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` is EOF.

        Raises:
            RemoteProtocolError: bad frame, frame out of order, oversize, EOF mid-session.
        """
        if not data:
            self._eof = True
            clean = self.state in ("entries", "hello", "idle") and not self._buf and not self.raw_remaining
            if not clean and self.state != "closed":
                raise RemoteProtocolError(f"connection closed in the middle of the session ({self.state})")
            return
        self._buf += data
        self._parse()

    def _parse(self) -> None:
        while self._buf:
            if self.raw_remaining:
                take = min(self.raw_remaining, len(self._buf))
                self._events.append(RawData(bytes(self._buf[:take])))
                del self._buf[:take]
                self.raw_received(take)
                continue
            if len(self._buf) < _HEADER:
                return
            kind = _NAMES.get(self._buf[0])
            length = int.from_bytes(self._buf[1:5], "big")
            if kind is None:
                raise RemoteProtocolError(f"unknown frame type {self._buf[0]:#04x}: not a socklab transfer peer?")
            if length > self.max_frame:
                raise RemoteProtocolError(f"{kind} frame of {length} bytes exceeds the {self.max_frame}-byte limit")
            if len(self._buf) < _HEADER + length:
                return
            body = bytes(self._buf[_HEADER:_HEADER + length])
            del self._buf[:_HEADER + length]
            self._events.append(self._frame(kind, body))

    def _frame(self, kind: str, body: bytes) -> Event:
        if kind == "chunk":
            if self.state != "stream":
                raise RemoteProtocolError("CHUNK frame outside a stream")
            if not body:
                self.state = "trailer"
            return Chunk(body)
        try:
            obj = json.loads(body) if body else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteProtocolError(f"{kind} frame is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise RemoteProtocolError(f"{kind} frame must hold a JSON object")
        if kind == "error":
            self.state = "closed"
            return ErrorFrame(str(obj.get("message", "unspecified error")), _opt_str(obj.get("code")))
        expects = (_RECEIVER_EXPECTS if self.role == "receiver" else _SENDER_EXPECTS)[self.state]
        if kind not in expects:
            raise RemoteProtocolError(f"unexpected {kind} frame while {self.state}")
        try:
            return self._decode(kind, obj)
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"malformed {kind} frame: {exc!r}") from None

    def _decode(self, kind: str, o: dict[str, Any]) -> Event:
        if kind == "hello":
            if o.get("magic") != MAGIC:
                raise RemoteProtocolError("peer is not a socklab transfer endpoint (bad magic)")
            if o.get("version") != VERSION:
                raise RemoteProtocolError(f"peer speaks version {o.get('version')!r}, we speak {VERSION}")
            chunk = _int(o.get("chunk_size", CHUNK_SIZE), "chunk_size")
            if not 4096 <= chunk <= 1 << 30:
                raise RemoteProtocolError(f"chunk size {chunk} out of range")
            self.state = "entries" if self.role == "receiver" else "idle"
            return Hello(VERSION, chunk)
        if kind == "entry":
            entry = Entry(str(o["name"]), str(o.get("kind", "file")),
                          None if o.get("size") is None else _int(o["size"], "size"),
                          _int(o.get("mode", 0o644), "mode") & 0o7777,
                          None if o.get("mtime") is None else float(o["mtime"]))
            if entry.kind not in ("file", "dir", "stream"):
                raise RemoteProtocolError(f"unknown entry kind {entry.kind!r}")
            if entry.kind == "file" and entry.size is None:
                raise RemoteProtocolError("a file entry needs a size")
            self._entry = entry
            self.state = "result-pending" if entry.kind == "dir" else "offer-sent"
            return entry
        if kind == "offer":
            self.state = "idle"
            crcs = tuple(_int(c, "crc") for c in o.get("crcs", ()))
            return Offer(_int(o.get("have", 0), "have"), crcs)
        if kind == "start":
            offset = _int(o.get("offset", 0), "offset")
            current = self._entry
            assert current is not None
            if current.kind == "stream":
                self.state = "stream"
            else:
                if current.size is None or offset > current.size:
                    raise RemoteProtocolError(f"start offset {offset} beyond the file's size")
                self.raw_remaining = current.size - offset
                self.state = "trailer"
            return Start(offset)
        if kind == "trailer":
            self.state = "result-pending"
            return Trailer(str(o["sha256"]), tuple(_int(c, "crc") for c in o.get("crcs", ())))
        if kind == "result":
            self.state = "idle"
            return Result(bool(o["ok"]), _opt_str(o.get("error")), _opt_str(o.get("code")),
                          _int(o.get("bytes", 0), "bytes"))
        if kind == "done":
            self.state = "closed"
            return Done()
        raise RemoteProtocolError(f"unexpected {kind} frame")  # pragma: no cover - table covers it

    def raw_received(self, n: int) -> None:
        """``n`` raw file bytes were received outside :meth:`receive_data` (zero-copy path)."""
        if n > self.raw_remaining:
            raise LocalProtocolError(f"{n} raw bytes reported but only {self.raw_remaining} expected")
        self.raw_remaining -= n

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more bytes are needed."""
        return self._events.popleft() if self._events else None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf)

    # ---- sending ----------------------------------------------------------------------------------
    def send(self, event: Event) -> bytes:
        """The bytes for ``event``; updates our state.

        Raises:
            LocalProtocolError: the event is out of turn for our role and state.
        """
        if isinstance(event, ErrorFrame):
            self.state = "closed"
            return _encode("error", {"message": event.message, "code": event.code})
        if isinstance(event, Hello):
            if self.state != "hello" and not (self.role == "receiver" and self.state == "entries"):
                raise LocalProtocolError("HELLO out of turn")
            return _encode("hello", {"magic": MAGIC, "version": event.version, "chunk_size": event.chunk_size})
        if self.role == "sender":
            return self._send_sender(event)
        return self._send_receiver(event)

    def _send_sender(self, event: Event) -> bytes:
        if isinstance(event, Entry):
            if self.state != "idle":
                raise LocalProtocolError(f"ENTRY out of turn ({self.state})")
            self._entry = event
            self.state = "answer"
            return _encode("entry", {"name": event.name, "kind": event.kind, "size": event.size,
                                     "mode": event.mode, "mtime": event.mtime})
        if isinstance(event, Start):
            self.state = "sending"
            return _encode("start", {"offset": event.offset})
        if isinstance(event, Chunk):
            return _encode("chunk", event.data)
        if isinstance(event, Trailer):
            return _encode("trailer", {"sha256": event.sha256, "crcs": list(event.crcs)})
        if isinstance(event, Done):
            if self.state != "idle":
                raise LocalProtocolError(f"DONE out of turn ({self.state})")
            self.state = "closed"
            return _encode("done", {})
        raise LocalProtocolError(f"a sender does not send {type(event).__name__}")

    def _send_receiver(self, event: Event) -> bytes:
        if isinstance(event, Offer):
            if self.state != "offer-sent":
                raise LocalProtocolError(f"OFFER out of turn ({self.state})")
            return _encode("offer", {"have": event.have, "crcs": list(event.crcs)})
        if isinstance(event, Result):
            if self.state not in ("result-pending", "offer-sent"):
                raise LocalProtocolError(f"RESULT out of turn ({self.state})")
            self.state = "entries"
            return _encode("result", {"ok": event.ok, "error": event.error, "code": event.code,
                                      "bytes": event.bytes})
        raise LocalProtocolError(f"a receiver does not send {type(event).__name__}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
