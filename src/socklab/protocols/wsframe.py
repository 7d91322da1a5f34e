"""WebSocket framing after the handshake (RFC 6455 §5), server side, sans-I/O.

Why this exists: wsproto's pure-Python frame parser cost about half of socklab's ~19 µs of Python
time per echoed message (issue 19). This module parses and builds frames with ``struct`` and one
unmasking call over the whole payload (``websockets.speedups.apply_mask`` when that C helper is
installed, else an ``int.from_bytes`` XOR), with every check wsproto made:

- client frames must be masked; reserved bits must be 0 (no extension is negotiated); the opcode
  must be a known one; payload lengths must use the shortest encoding and fit in 63 bits;
- control frames (close, ping, pong) carry at most 125 bytes and are never fragmented; they may
  arrive between the fragments of a message; a continuation needs a message in progress and a
  new data frame may not start inside one - all of that closes with 1002;
- a close frame's code must be one a peer may send (1000-1003, 1007-1013, 3000-4999), its reason
  valid UTF-8 (else 1007);
- text must be valid UTF-8 (1007), checked fragment by fragment so an invalid byte fails fast;
- a message longer than ``max_message`` closes with 1009 as soon as a frame header says so,
  before its payload is read or kept.

Every violation raises :class:`WsProtocolError` (a :class:`RemoteProtocolError` whose ``hint`` is
the close code to send); no other exception leaves :meth:`FrameParser.feed`. Bytes fed whole or
byte by byte give the same events. After a close frame the parser ignores the rest.

    >>> p = FrameParser(max_message=1 << 20)
    >>> p.feed(bytes([0x81, 0x82, 1, 2, 3, 4]) + bytes([ord("h") ^ 1, ord("i") ^ 2]))
    ['hi']
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Final

from socklab.core.errors import RemoteProtocolError

__all__ = ["Close", "FrameParser", "Ping", "Pong", "WsProtocolError", "apply_mask", "close_frame",
           "data_frame", "frame"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_PROTOCOL, CLOSE_BAD_DATA, CLOSE_TOO_BIG, CLOSE_NO_STATUS = 1002, 1007, 1009, 1005
MAX_CONTROL: Final = 125
#: Close codes a peer may send (RFC 6455 §7.4, 1012-1013 registered since; wsproto's set): 1004-1006 and
#: 1015 never.
_PEER_CODES = frozenset((*range(1000, 1004), *range(1007, 1014)))

_H2 = struct.Struct("!H")
_Q = struct.Struct("!Q")


def _py_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated: one big-integer XOR over the whole payload."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


apply_mask: Callable[[bytes, bytes], bytes]
try:  # the C helper of the `websockets` package, when installed: ~10x faster on large payloads
    from websockets.speedups import apply_mask as _c_mask

    apply_mask = _c_mask
except ImportError:  # pragma: no cover - depends on the environment
    apply_mask = _py_mask


class WsProtocolError(RemoteProtocolError):
    """The peer broke RFC 6455; ``hint`` (``code``) is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason, code)
        self.code = code
        self.reason = reason
        #: the events the same :meth:`FrameParser.feed` call completed before the violation
        self.events: list[Event] = []


class Ping:
    """A ping from the peer; answer with a pong carrying ``payload``."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return type(other) is Ping and other.payload == self.payload

    def __repr__(self) -> str:
        return f"Ping({self.payload!r})"


class Pong(Ping):
    """A pong from the peer."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is Pong and other.payload == self.payload

    def __repr__(self) -> str:
        return f"Pong({self.payload!r})"


class Close:
    """The peer's close frame: ``code`` (1005 when it gave none) and ``reason``."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Close) and (other.code, other.reason) == (self.code, self.reason)

    def __repr__(self) -> str:
        return f"Close({self.code}, {self.reason!r})"


#: What :meth:`FrameParser.feed` returns: whole messages (``str`` text, ``bytes`` binary) and control events.
Event = str | bytes | Ping | Pong | Close


def parse_close(payload: bytes) -> Close:
    """A close frame's payload -> :class:`Close`, or :class:`WsProtocolError` (1002, or 1007 for the reason)."""
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise WsProtocolError(CLOSE_PROTOCOL, "close frame with a 1-byte payload")
    code = _H2.unpack_from(payload)[0]
    if code not in _PEER_CODES and not 3000 <= code <= 4999:
        raise WsProtocolError(CLOSE_PROTOCOL, f"close code {code} may not be sent by a peer")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WsProtocolError(CLOSE_BAD_DATA, "close reason is not valid UTF-8") from None
    return Close(code, reason)


class FrameParser:
    """Client-to-server frames -> events; see the module docstring for the checks.

    Args:
        max_message: the largest message (all its fragments together), bytes; more -> 1009.
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._chunks: list[bytes] = []  # unparsed bytes, joined only once ``_need`` of them are here
        self._have = 0
        self._need = 0
        self._op = 0  # opcode of the fragmented message in progress (0 = none)
        self._parts: list[bytes] = []
        self._texts: list[str] = []
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self.closed = False

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` (any split of the stream); return the events it completes, in order.

        Raises:
            WsProtocolError: the peer broke the protocol; its ``events`` are those completed before
                the violation (so whole and byte-by-byte feeds agree); nothing more is parsed.
        """
        if self.closed:
            return []
        if self._chunks:  # a frame in progress: keep the pieces until it can be complete (no quadratic joins)
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks = []
        else:
            if not self._op:  # the fast path: exactly one whole unfragmented data frame
                fast = self.one_message(data)
                if fast is not None:
                    return [fast]
            buf = data
        out: list[Event] = []
        try:
            pos = self._parse(buf, out)
        except WsProtocolError as exc:
            self.closed = True
            exc.events = out
            raise
        if pos < len(buf) and not self.closed:
            self._chunks = [buf[pos:]]
            self._have = len(buf) - pos
        return out

    def one_message(self, data: bytes) -> str | bytes | None:
        """The common case in one call: ``data`` is exactly one valid, final, masked text or binary
        frame of less than 64 KiB, and no frame or message is in progress - its message. Anything
        else returns None and changes nothing: hand the same ``data`` to :meth:`feed`, which
        parses it in full (and reports what is wrong with it). Never raises."""
        size = len(data)
        if size < 6 or self._chunks or self._op or self.closed:
            return None
        b0, n = data[0], data[1] ^ 0x80  # b1 without the mask bit; >= 128 if unmasked
        if b0 != 0x81 and b0 != 0x82:
            return None
        head = 6
        if n == 126 and size >= 8:
            n = data[2] << 8 | data[3]
            head = 8
            if n <= MAX_CONTROL:
                return None
        elif n >= 126:
            return None
        if head + n != size or n > self.max_message:
            return None
        payload = apply_mask(data[head:], data[head - 4:head])
        if b0 == 0x82:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return None  # the full path reports it

    def _parse(self, buf: bytes, out: list[Event]) -> int:
        pos, end = 0, len(buf)
        self._need = 2
        while end - pos >= 2 and not self.closed:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise WsProtocolError(CLOSE_PROTOCOL, "reserved bits set (no extension was negotiated)")
            if not b1 & 0x80:
                raise WsProtocolError(CLOSE_PROTOCOL, "client frame not masked")
            fin, op, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            head = 6
            if op >= OP_CLOSE:
                if op > OP_PONG:
                    raise WsProtocolError(CLOSE_PROTOCOL, f"unknown opcode {op}")
                if not fin:
                    raise WsProtocolError(CLOSE_PROTOCOL, "fragmented control frame")
                if n > MAX_CONTROL:
                    raise WsProtocolError(CLOSE_PROTOCOL, "control frame longer than 125 bytes")
            elif op > OP_BINARY:
                raise WsProtocolError(CLOSE_PROTOCOL, f"unknown opcode {op}")
            elif op == OP_CONT and not self._op:
                raise WsProtocolError(CLOSE_PROTOCOL, "continuation frame without a message to continue")
            elif op != OP_CONT and self._op:
                raise WsProtocolError(CLOSE_PROTOCOL, "new message inside a fragmented one")
            if n == 126:
                if end - pos < 4:
                    self._need = 4
                    break
                n = _H2.unpack_from(buf, pos + 2)[0]
                if n <= MAX_CONTROL:
                    raise WsProtocolError(CLOSE_PROTOCOL, "payload length not in its shortest form")
                head = 8
            elif n == 127:
                if end - pos < 10:
                    self._need = 10
                    break
                n = _Q.unpack_from(buf, pos + 2)[0]
                if n >> 63:
                    raise WsProtocolError(CLOSE_PROTOCOL, "payload length has its top bit set")
                if n <= 0xFFFF:
                    raise WsProtocolError(CLOSE_PROTOCOL, "payload length not in its shortest form")
                head = 14
            if op < OP_CLOSE and self._size + n > self.max_message:
                raise WsProtocolError(CLOSE_TOO_BIG, f"message larger than {self.max_message} bytes")
            if end - pos < head + n:
                self._need = head + n
                break
            self._need = 2
            mask = buf[pos + head - 4:pos + head]
            start = pos + head
            pos = start + n
            if n > 4096:  # no copy of a large payload before unmasking
                payload = apply_mask(memoryview(buf)[start:pos], mask)  # type: ignore[arg-type]
            else:
                payload = apply_mask(buf[start:pos], mask) if n else b""
            if op >= OP_CLOSE:
                self._control(op, payload, out)
            elif fin and not self._op:  # the fast path: a whole message in one frame
                if op == OP_TEXT:
                    try:
                        out.append(payload.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise WsProtocolError(CLOSE_BAD_DATA, "text message is not valid UTF-8") from None
                else:
                    out.append(payload)
            else:
                self._fragment(op, bool(fin), payload, out)
        return pos

    def _fragment(self, op: int, fin: bool, payload: bytes, out: list[Event]) -> None:
        if op:  # the first fragment
            self._op = op
            if op == OP_TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._size += len(payload)
        if self._op == OP_TEXT:
            assert self._decoder is not None
            try:
                self._texts.append(self._decoder.decode(payload, fin))
            except UnicodeDecodeError:
                raise WsProtocolError(CLOSE_BAD_DATA, "text message is not valid UTF-8") from None
        else:
            self._parts.append(payload)
        if fin:
            msg: str | bytes = "".join(self._texts) if self._op == OP_TEXT else b"".join(self._parts)
            self._texts, self._parts, self._size, self._op, self._decoder = [], [], 0, 0, None
            out.append(msg)

    def _control(self, op: int, payload: bytes, out: list[Event]) -> None:
        if op == OP_PING:
            out.append(Ping(payload))
        elif op == OP_PONG:
            out.append(Pong(payload))
        else:
            out.append(parse_close(payload))
            self.closed = True


def frame(op: int, payload: bytes) -> bytes:
    """One unmasked final frame (server to client) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | op, n)) + payload
    if n < 0x10000:
        return bytes((0x80 | op, 126)) + _H2.pack(n) + payload
    return bytes((0x80 | op, 127)) + _Q.pack(n) + payload


def data_frame(message: str | bytes) -> bytes:
    """A text (``str``) or binary (``bytes``) message as one frame."""
    if isinstance(message, str):
        payload, b0 = message.encode("utf-8"), 0x81
    else:
        payload, b0 = bytes(message), 0x82
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 0x10000:
        return bytes((b0, 126, n >> 8, n & 0xFF)) + payload
    return bytes((b0, 127)) + _Q.pack(n) + payload


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; ``code`` None (or 1005) sends none; the reason is cut to fit 125 bytes whole characters."""
    if code is None or code == CLOSE_NO_STATUS:
        return frame(OP_CLOSE, b"")
    raw = reason.encode("utf-8")[:MAX_CONTROL - 2].decode("utf-8", "ignore").encode("utf-8")
    return frame(OP_CLOSE, _H2.pack(code) + raw)
