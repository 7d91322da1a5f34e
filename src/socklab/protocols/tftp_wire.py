"""TFTP on the wire, sans-I/O: packets, option negotiation and netascii.

Why this exists: the bytes of TFTP are small and exact - five opcodes (RFC 1350 section 5), the
OACK of RFC 2347, and the options of RFC 2348 (blksize), RFC 2349 (timeout, tsize) and RFC 7440
(windowsize). This module holds them, with no state beyond one netascii decoder's pending CR; the
transfer machines that use them are in :mod:`socklab.protocols.tftp` (which re-exports every name
here, so ``from socklab.protocols import tftp`` is all a user needs).

- packets: :func:`parse_packet` / :func:`encode_packet` (a malformed datagram raises
  :class:`RemoteProtocolError` whose hint is the ERROR code to answer with);
- options: :func:`negotiate` (server side, with the server's caps) and :func:`check_oack`
  (client side: the server may lower what we asked, never raise it);
- netascii (RFC 764 via RFC 1350): :class:`NetasciiEncoder` / :class:`NetasciiDecoder`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ACK", "DATA", "DEFAULT_BLKSIZE", "ERROR", "MAX_BLKSIZE", "MAX_TIMEOUT", "MAX_WINDOW", "MIN_BLKSIZE",
    "MIN_TIMEOUT", "MIN_WINDOW", "OACK", "RRQ", "WRQ", "Ack", "Address", "Data", "Error", "ErrorCode",
    "NetasciiDecoder", "NetasciiEncoder", "OAck", "Outgoing", "Packet", "Request", "TransferOptions",
    "check_oack", "encode_packet", "negotiate", "parse_packet",
]

Address = Any
Outgoing = list[tuple[bytes, Address]]

# RFC 1350 section 5: opcodes
RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348 section 2
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349 section 2
MIN_WINDOW, MAX_WINDOW = 1, 65535  # RFC 7440 section 3


class ErrorCode:
    """RFC 1350 appendix (and RFC 2347 for 8): the error codes of an ERROR packet."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


# ---- packets ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Packet:
    """Base of every TFTP packet."""


@dataclass(frozen=True)
class Request(Packet):
    """RRQ (``write=False``) or WRQ: filename, mode and RFC 2347 options (lower-case names)."""

    filename: str
    mode: str = "octet"
    options: dict[str, str] = field(default_factory=dict)
    write: bool = False


@dataclass(frozen=True)
class Data(Packet):
    """DATA: a 16-bit block number and up to blksize bytes."""

    block: int
    payload: bytes


@dataclass(frozen=True)
class Ack(Packet):
    """ACK of a 16-bit block number (0 acknowledges a WRQ or an OACK)."""

    block: int


@dataclass(frozen=True)
class Error(Packet):
    """ERROR: a code (see :class:`ErrorCode`) and a message; it ends the transfer."""

    code: int
    message: str


@dataclass(frozen=True)
class OAck(Packet):
    """OACK (RFC 2347): the options the server accepted, with their values."""

    options: dict[str, str]


def _cstrings(body: bytes) -> list[bytes]:
    if not body.endswith(b"\0"):
        raise RemoteProtocolError("TFTP string field not NUL-terminated", hint=ErrorCode.ILLEGAL_OPERATION)
    return body[:-1].split(b"\0")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        # names are netascii; accept other bytes 1:1 rather than refusing a Latin-1 filename
        return raw.decode("latin-1")


def parse_packet(data: bytes) -> Packet:
    """Decode one datagram.

    Raises:
        RemoteProtocolError: not a valid TFTP packet (hint: the ERROR code to answer with).
    """
    if len(data) < 2:
        raise RemoteProtocolError("datagram too short for a TFTP opcode", hint=ErrorCode.ILLEGAL_OPERATION)
    op = int.from_bytes(data[:2], "big")
    body = data[2:]
    if op in (RRQ, WRQ):  # RFC 1350 section 5 fig. 5-1, RFC 2347 section 2
        parts = _cstrings(body)
        if len(parts) < 2 or len(parts) % 2:
            raise RemoteProtocolError("malformed request: need filename, mode and option pairs",
                                      hint=ErrorCode.ILLEGAL_OPERATION)
        filename, mode = _text(parts[0]), _text(parts[1]).lower()
        if not filename:
            raise RemoteProtocolError("empty filename", hint=ErrorCode.ILLEGAL_OPERATION)
        if mode not in ("octet", "netascii", "mail"):
            raise RemoteProtocolError(f"unknown transfer mode {mode!r}", hint=ErrorCode.ILLEGAL_OPERATION)
        options: dict[str, str] = {}
        for i in range(2, len(parts), 2):
            options.setdefault(_text(parts[i]).lower(), _text(parts[i + 1]))
        return Request(filename, mode, options, write=op == WRQ)
    if op == DATA:
        if len(body) < 2:
            raise RemoteProtocolError("DATA without a block number", hint=ErrorCode.ILLEGAL_OPERATION)
        return Data(int.from_bytes(body[:2], "big"), bytes(body[2:]))
    if op == ACK:
        if len(body) != 2:
            raise RemoteProtocolError("ACK must carry exactly a block number", hint=ErrorCode.ILLEGAL_OPERATION)
        return Ack(int.from_bytes(body, "big"))
    if op == ERROR:
        if len(body) < 2:
            raise RemoteProtocolError("ERROR without a code", hint=ErrorCode.ILLEGAL_OPERATION)
        msg = body[2:]
        return Error(int.from_bytes(body[:2], "big"), _text(msg.split(b"\0", 1)[0]))
    if op == OACK:
        parts = _cstrings(body) if body else []
        if parts == [b""]:
            parts = []
        if len(parts) % 2:
            raise RemoteProtocolError("OACK with an option lacking its value", hint=ErrorCode.ILLEGAL_OPERATION)
        return OAck({_text(parts[i]).lower(): _text(parts[i + 1]) for i in range(0, len(parts), 2)})
    raise RemoteProtocolError(f"unknown TFTP opcode {op}", hint=ErrorCode.ILLEGAL_OPERATION)


def encode_packet(packet: Packet) -> bytes:
    """Encode one packet. Raises LocalProtocolError for values that do not fit the format."""
    if isinstance(packet, Data):
        return struct.pack("!HH", DATA, packet.block & 0xFFFF) + packet.payload
    if isinstance(packet, Ack):
        return struct.pack("!HH", ACK, packet.block & 0xFFFF)
    if isinstance(packet, Error):
        return struct.pack("!HH", ERROR, packet.code) + packet.message.encode("latin-1", "replace") + b"\0"
    if isinstance(packet, Request):
        if not packet.filename or "\0" in packet.filename:
            raise LocalProtocolError("a request needs a filename without NUL")
        out = [packet.filename.encode("latin-1"), packet.mode.encode("ascii")]
        for k, v in packet.options.items():
            out += [k.encode("ascii"), str(v).encode("ascii")]
        return struct.pack("!H", WRQ if packet.write else RRQ) + b"\0".join(out) + b"\0"
    if isinstance(packet, OAck):
        out = []
        for k, v in packet.options.items():
            out += [k.encode("ascii"), str(v).encode("ascii")]
        return struct.pack("!H", OACK) + (b"\0".join(out) + b"\0" if out else b"")
    raise LocalProtocolError(f"cannot encode {packet!r}")


# ---- options ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransferOptions:
    """The values a transfer runs with once negotiation is over."""

    blksize: int = DEFAULT_BLKSIZE
    timeout: float = 1.0
    windowsize: int = 1
    tsize: int | None = None


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() and len(value) < 12 else None


def negotiate(request: Request, *, max_blksize: int = MAX_BLKSIZE, max_windowsize: int = 64,
              default_timeout: float = 1.0, tsize: int | None = None,
              max_tsize: int | None = None, max_timeout: int = MAX_TIMEOUT) -> tuple[TransferOptions, dict[str, str]]:
    """The server's side of RFC 2347: which requested options to accept, and at what value.

    Out-of-range values are left out of the OACK (the client then uses the defaults), except
    blksize and windowsize above our maximum, which are capped (RFC 2348 section 2 allows a
    smaller value; RFC 7440 section 3 likewise). A timeout above ``max_timeout`` is not
    acknowledged either (RFC 2349 section 2 lets the server only echo the value asked, not lower
    it): the server keeps ``default_timeout``, so no client holds a transfer slot for 255 s per try.

    Args:
        request: the RRQ or WRQ.
        tsize: for an RRQ, the file's size to report when the client sent ``tsize`` (RFC 2349).
        max_tsize: for a WRQ, the largest announced size accepted.
        max_timeout: the largest timeout (seconds) a client may ask for.

    Returns:
        The options to run with, and the OACK's options (empty: answer without OACK).

    Raises:
        RemoteProtocolError: a WRQ announces a tsize above ``max_tsize`` (hint 3, disk full).
    """
    opts = request.options
    accepted: dict[str, str] = {}
    blksize, timeout, window, size = DEFAULT_BLKSIZE, default_timeout, 1, None
    if "blksize" in opts:  # RFC 2348
        v = _int(opts["blksize"])
        if v is not None and v >= MIN_BLKSIZE:
            blksize = min(v, max_blksize, MAX_BLKSIZE)
            accepted["blksize"] = str(blksize)
    if "timeout" in opts:  # RFC 2349 section 2
        v = _int(opts["timeout"])
        if v is not None and MIN_TIMEOUT <= v <= min(max_timeout, MAX_TIMEOUT):
            timeout = float(v)
            accepted["timeout"] = str(v)
    if "tsize" in opts:  # RFC 2349 section 3
        v = _int(opts["tsize"])
        if v is not None:
            if request.write:
                if max_tsize is not None and v > max_tsize:
                    raise RemoteProtocolError(f"announced size {v} exceeds the limit {max_tsize}",
                                              hint=ErrorCode.DISK_FULL)
                size = v
                accepted["tsize"] = str(v)
            elif tsize is not None:
                size = tsize
                accepted["tsize"] = str(tsize)
    if "windowsize" in opts:  # RFC 7440 section 3
        v = _int(opts["windowsize"])
        if v is not None and v >= MIN_WINDOW:
            window = min(v, max_windowsize, MAX_WINDOW)
            accepted["windowsize"] = str(window)
    return TransferOptions(blksize, timeout, window, size), accepted


def check_oack(requested: dict[str, str], oack: OAck, default_timeout: float) -> TransferOptions:
    """The client's side of RFC 2347: validate the server's OACK against what we asked.

    Raises:
        RemoteProtocolError (hint 8): an option we did not request, or a value above ours.
    """
    got = oack.options
    for k in got:
        if k not in requested:
            raise RemoteProtocolError(f"server acknowledged option {k!r} we did not request",
                                      hint=ErrorCode.OPTION_REFUSED)
    blksize = _int(got.get("blksize", str(DEFAULT_BLKSIZE)))
    window = _int(got.get("windowsize", "1"))
    timeout = _int(got.get("timeout", "0"))
    tsize = _int(got["tsize"]) if "tsize" in got else None
    if blksize is None or not MIN_BLKSIZE <= blksize <= int(requested.get("blksize", DEFAULT_BLKSIZE)):
        raise RemoteProtocolError(f"server chose an invalid blksize {got.get('blksize')!r}",
                                  hint=ErrorCode.OPTION_REFUSED)
    if window is None or not MIN_WINDOW <= window <= int(requested.get("windowsize", 1)):
        raise RemoteProtocolError(f"server chose an invalid windowsize {got.get('windowsize')!r}",
                                  hint=ErrorCode.OPTION_REFUSED)
    if timeout is None or timeout > MAX_TIMEOUT:
        raise RemoteProtocolError("server chose an invalid timeout", hint=ErrorCode.OPTION_REFUSED)
    if "tsize" in got and tsize is None:
        raise RemoteProtocolError("server sent an invalid tsize", hint=ErrorCode.OPTION_REFUSED)
    return TransferOptions(blksize, float(timeout) if timeout else default_timeout, window, tsize)


# ---- netascii (RFC 764 NVT ASCII, as RFC 1350 section 1 asks) ---------------------------------------
class NetasciiEncoder:
    """Local text to netascii: LF becomes CR LF, a bare CR becomes CR NUL."""

    def encode(self, data: bytes) -> bytes:
        return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class NetasciiDecoder:
    """Netascii back to local text: CR LF -> LF, CR NUL -> CR; a CR split across blocks is kept."""

    def __init__(self) -> None:
        self._cr = False

    def decode(self, data: bytes, final: bool = False) -> bytes:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r") and not final:
            self._cr = True
            data = data[:-1]
        return data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")
