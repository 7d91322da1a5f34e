"""Line framing: the simplest answer to "TCP is a stream, where does my message end?".

Why this exists: ``recv()`` returns whatever bytes have arrived - half a message, or two and a
half. Line-oriented protocols (echo's interactive mode, chat, newline-delimited JSON-RPC, SMTP,
Redis' inline commands) end each message with LF (or CRLF). :class:`LineDecoder` buffers bytes
and yields complete lines; it bounds the buffer so a peer that never sends a newline cannot use
unbounded memory (``max_line``), and reports how the lines were cut across receives so the trace
can show the classic surprises (a message split across recvs, two merged in one).

Sans-I/O: bytes in, :class:`Line` events out. Feed ``b""`` for EOF.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from socklab.core.errors import RemoteProtocolError

__all__ = ["EndOfStream", "Line", "LineDecoder", "encode_line"]


@dataclass(frozen=True)
class Line:
    """One complete line, without its terminator."""

    data: bytes


@dataclass(frozen=True)
class EndOfStream:
    """The peer closed its side; ``partial`` holds the bytes of an unfinished message, if any.

    The one end-of-stream event of every socklab decoder (lines, JSON-RPC framing, gossip): they
    import it from here.
    """

    partial: bytes = b""


class LineDecoder:
    """Split a byte stream into lines ending in LF (a preceding CR is removed).

    Args:
        max_line: the longest line accepted, terminator excluded. A longer one raises
            :class:`RemoteProtocolError` (hint 413) as soon as the buffer exceeds it.

    Attributes:
        split_count: receives that ended in the middle of a line (one message over several recvs).
        merged_count: receives that completed more than one line (several messages in one recv).
    """

    def __init__(self, max_line: int = 64 * 1024) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already known to hold no newline
        self._lines: deque[bytes] = deque()
        self._eof = False
        self._ended = False
        self.split_count = 0
        self.merged_count = 0

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; ``b""`` means the peer sent EOF.

        Raises:
            RemoteProtocolError: a line grew past ``max_line``.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RemoteProtocolError("data after end of stream")
        self._buf += data
        found = 0
        start = 0
        while True:
            nl = self._buf.find(b"\n", self._scan)
            if nl < 0:
                break
            end = nl - 1 if nl > start and self._buf[nl - 1] == 13 else nl
            if end - start > self.max_line:
                raise RemoteProtocolError(f"line longer than {self.max_line} bytes", hint=413)
            self._lines.append(bytes(self._buf[start:end]))
            start = nl + 1
            self._scan = start
            found += 1
        if start:
            del self._buf[:start]
        self._scan = len(self._buf)
        if found > 1:
            self.merged_count += 1
        if self._buf:
            self.split_count += 1
            if len(self._buf) > self.max_line + 1:
                raise RemoteProtocolError(f"line longer than {self.max_line} bytes", hint=413)

    def next_event(self) -> Line | EndOfStream | None:
        """The next complete line, ``EndOfStream`` once after EOF, else ``None``."""
        if self._lines:
            return Line(self._lines.popleft())
        if self._eof and not self._ended:
            self._ended = True
            partial = bytes(self._buf)
            self._buf.clear()
            return EndOfStream(partial)
        return None

    def lines(self) -> list[bytes]:
        """Every complete line available now (a convenience over ``next_event``)."""
        out = list(self._lines)
        self._lines.clear()
        return out

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline."""
        return len(self._buf)


def encode_line(text: str | bytes, crlf: bool = False) -> bytes:
    """Terminate one message; refuses embedded newlines (they would split it)."""
    data = text.encode() if isinstance(text, str) else text
    if b"\n" in data:
        raise ValueError("a line cannot contain a newline")
    return data + (b"\r\n" if crlf else b"\n")
