"""Message framing for JSON-RPC over a byte stream: newline-delimited JSON or Content-Length headers.

Why this exists: TCP delivers bytes, not messages, so a JSON-RPC server on a raw stream needs a
framing rule. Two are in common use and socklab speaks both on the same port:

- **newline-delimited JSON** ("ndjson", JSON Lines): one JSON text per line. JSON never needs a
  raw newline (``json.dumps`` escapes it inside strings), so LF is a safe terminator. Blank lines
  between messages are ignored; a CR before the LF is removed.
- **Content-Length headers**, as the Language Server Protocol frames its messages (LSP base
  protocol, "Header Part")::

      Content-Length: 52\\r\\n
      \\r\\n
      {"jsonrpc":"2.0","method":"sum","params":[1,2],"id":1}

  Other header fields (``Content-Type``) are accepted and ignored.

The decoder tells which one a client speaks from its first bytes: after optional whitespace a
header block starts with ``Content-`` (any case); anything else is taken as ndjson. The choice is made once
per connection and kept (:attr:`FrameDecoder.mode`); the server answers in the same framing.

Sans-I/O: ``receive_data(bytes)`` (``b""`` = EOF), then ``next_event()`` -> :class:`Frame`,
:class:`EndOfStream` or ``None``. A peer that breaks the framing (a line or body over
``max_frame``, a bad header) raises :class:`~socklab.core.errors.RemoteProtocolError` whose hint is
the JSON-RPC error code to answer with before closing (-32600 for oversize, -32700 for bad headers).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from socklab.core.errors import LocalProtocolError, RemoteProtocolError
from socklab.protocols.lines import EndOfStream  # the one end-of-stream event (partial: an unfinished frame)

__all__ = ["CONTENT_LENGTH", "NDJSON", "EndOfStream", "Frame", "FrameDecoder", "encode_frame"]

NDJSON = "ndjson"
CONTENT_LENGTH = "content-length"
_WHITESPACE = b" \t\r\n"
_HEADER_START = b"content-"  # LSP's header fields are Content-Length and Content-Type
_OVERSIZE = -32600  # JSON-RPC "Invalid Request": the message is too large to be one
_BAD_HEADER = -32700  # JSON-RPC "Parse error": the frame itself cannot be read


@dataclass(frozen=True)
class Frame:
    """One complete message body (a JSON text, not yet parsed)."""

    data: bytes


class FrameDecoder:
    """Cut a byte stream into JSON-RPC messages, detecting the framing from the first bytes.

    Args:
        max_frame: the largest message body accepted, in bytes.
        max_header: the largest Content-Length header block accepted, in bytes.
        mode: force ``"ndjson"`` or ``"content-length"`` instead of detecting it.
    """

    def __init__(self, max_frame: int = 1024 * 1024, max_header: int = 4096, mode: str | None = None) -> None:
        if mode not in (None, NDJSON, CONTENT_LENGTH):
            raise LocalProtocolError(f"unknown framing {mode!r}")
        self.max_frame = max_frame
        self.max_header = max_header
        self.mode = mode
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf known to hold no terminator (keeps scanning linear)
        self._need: int | None = None  # body length once a header block was read
        self._frames: deque[bytes] = deque()
        self._eof = False
        self._ended = False

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means EOF.

        Raises:
            RemoteProtocolError: the framing was broken (hint: the JSON-RPC code to answer with).
        """
        if not data:
            self._eof = True
            if self.mode is None and self._buf:
                self.mode = NDJSON  # a few bytes then EOF: too short for a header block
            if self.mode == NDJSON and self._buf.strip(_WHITESPACE):
                # a last line without its newline (``printf '...' | nc -N``): still a message
                self._frames.append(bytes(self._buf).rstrip(b"\r"))
                self._buf.clear()
            return
        if self._eof:
            raise RemoteProtocolError("data after end of stream")
        self._buf += data
        if self.mode is None:
            self._detect()
        if self.mode == NDJSON:
            self._cut_lines()
        elif self.mode == CONTENT_LENGTH:
            self._cut_bodies()

    def _detect(self) -> None:
        stripped = self._buf.lstrip(_WHITESPACE)
        if len(stripped) != len(self._buf):
            del self._buf[: len(self._buf) - len(stripped)]
        if not self._buf:
            return
        head = bytes(self._buf[: len(_HEADER_START)]).lower()
        if head == _HEADER_START:
            self.mode = CONTENT_LENGTH
        elif _HEADER_START.startswith(head):
            return  # "Cont": wait for more bytes to decide
        else:
            self.mode = NDJSON  # '{', '[' - or anything else, which the JSON parser will judge

    def _cut_lines(self) -> None:
        buf = self._buf
        start = 0
        while True:
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 13 else nl
            if end - start > self.max_frame:
                raise RemoteProtocolError(f"message larger than {self.max_frame} bytes (max_message_size)",
                                          hint=_OVERSIZE)
            line = bytes(buf[start:end])
            if line.strip(_WHITESPACE):
                self._frames.append(line)
            start = nl + 1
            self._scan = start
        if start:
            del buf[:start]
        self._scan = len(buf)
        if len(buf) > self.max_frame + 1:
            raise RemoteProtocolError(f"message larger than {self.max_frame} bytes (max_message_size)",
                                      hint=_OVERSIZE)

    def _cut_bodies(self) -> None:
        buf = self._buf
        while True:
            if self._need is None:
                if not buf:
                    return
                end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
                if end < 0:
                    self._scan = len(buf)
                    if len(buf) > self.max_header:
                        raise RemoteProtocolError(f"header block larger than {self.max_header} bytes",
                                                  hint=_BAD_HEADER)
                    return
                if end > self.max_header:
                    raise RemoteProtocolError(f"header block larger than {self.max_header} bytes",
                                              hint=_BAD_HEADER)
                self._need = self._content_length(bytes(buf[:end]))
                del buf[: end + 4]
                self._scan = 0
            if len(buf) < self._need:
                return
            self._frames.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = None

    def _content_length(self, block: bytes) -> int:
        # LSP base protocol: header fields "name: value" separated by CRLF, like HTTP (RFC 9112 5.1)
        length: int | None = None
        for raw in block.split(b"\r\n"):
            name, sep, value = raw.partition(b":")
            if not sep or not name or name != name.strip() or not name.isascii():
                raise RemoteProtocolError(f"malformed header line {raw[:40]!r}", hint=_BAD_HEADER)
            if name.lower() != b"content-length":
                continue
            value = value.strip(b" \t")
            if length is not None or not value.isdigit() or len(value) > 12:
                raise RemoteProtocolError(f"bad Content-Length {value[:20]!r}", hint=_BAD_HEADER)
            length = int(value)
        if length is None:
            raise RemoteProtocolError("header block without Content-Length", hint=_BAD_HEADER)
        if length > self.max_frame:
            raise RemoteProtocolError(f"message larger than {self.max_frame} bytes (max_message_size)",
                                      hint=_OVERSIZE)
        return length

    def next_event(self) -> Frame | EndOfStream | None:
        """The next complete message, then ``EndOfStream`` once after EOF, else ``None``."""
        if self._frames:
            return Frame(self._frames.popleft())
        if self._eof and not self._ended:
            self._ended = True
            partial = bytes(self._buf)
            self._buf.clear()
            return EndOfStream(partial)
        return None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buf)


def encode_frame(payload: bytes, mode: str | None = NDJSON) -> bytes:
    """Frame one message body for the wire.

    Args:
        payload: a JSON text (UTF-8). For ndjson it must not contain a raw newline.
        mode: ``"ndjson"`` (also when ``None``) or ``"content-length"``.

    Raises:
        LocalProtocolError: a newline inside an ndjson payload, or an unknown mode.
    """
    if mode == CONTENT_LENGTH:
        return b"Content-Length: %d\r\n\r\n" % len(payload) + payload
    if mode not in (None, NDJSON):
        raise LocalProtocolError(f"unknown framing {mode!r}")
    if b"\n" in payload:
        raise LocalProtocolError("an ndjson message cannot contain a raw newline")
    return payload + b"\n"
