"""TFTP, sans-I/O: packets, option negotiation and the two transfer state machines.

Why this exists: TFTP (RFC 1350) is the classic lesson in building reliability out of
datagrams. UDP loses, duplicates and reorders; TFTP answers with block numbers, acknowledgements
and *timeouts*. This module holds all of that logic and no clock, no socket and no file: the
adapters (``socklab.apps.tftp``) feed it datagrams and timer expiries and send what it returns,
so every loss, duplicate and reordering can be replayed deterministically in a pure test.

The pieces:

- packets (RFC 1350 section 5, RFC 2347 OACK): :func:`parse_packet` / :func:`encode_packet`;
- options (RFC 2347 negotiation, RFC 2348 blksize, RFC 2349 timeout and tsize, RFC 7440
  windowsize): :func:`negotiate` (server side) and :func:`check_oack` (client side);
- netascii (RFC 764 via RFC 1350): :class:`NetasciiEncoder` / :class:`NetasciiDecoder`;
- :class:`Sender` (sends DATA, reads ACKs) and :class:`Receiver` (reads DATA, sends ACKs), each
  usable by a server (after RRQ / WRQ) or a client (get / put).

Rules the machines keep, with where they come from:

- Block numbers are 16 bits; past 65,535 they roll over to 0 (the common practice of tftp-hpa
  and curl; RFC 1350 has no word on it). Internally blocks are counted without wrapping.
- Retransmission happens **on timeout only**. A duplicate ACK never triggers DATA: answering
  duplicates doubles every packet for the rest of the transfer (the Sorcerer's Apprentice bug,
  RFC 1123 section 4.2.3.1).
- Windows (RFC 7440 section 4): the sender keeps up to ``windowsize`` blocks in flight; the
  receiver acknowledges after ``windowsize`` in-order blocks, on the last block, and - once per
  gap - when a block arrives out of order (it then acknowledges the last in-order block, and the
  sender goes back to the block after it). On timeout the sender resends its window.
- A datagram from an unknown transfer ID (source address) is answered with ERROR 5 and the
  transfer goes on (RFC 1350 section 4).

Timers: every machine has ``timeout`` (seconds) and ``timer_generation``. Whenever
``timer_generation`` changes after a call, the adapter (re)arms one timer for ``timeout``
seconds; when it fires, it calls ``timer_expired()``. After ``max_retries`` expiries without
progress the machine fails with a timeout error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from socklab.core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_BLKSIZE", "Ack", "Data", "Error", "ErrorCode", "NetasciiDecoder", "NetasciiEncoder", "OAck",
    "Packet", "Receiver", "Request", "Sender", "TransferOptions", "check_oack", "encode_packet",
    "negotiate", "parse_packet",
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
              max_tsize: int | None = None) -> tuple[TransferOptions, dict[str, str]]:
    """The server's side of RFC 2347: which requested options to accept, and at what value.

    Out-of-range values are left out of the OACK (the client then uses the defaults), except
    blksize and windowsize above our maximum, which are capped (RFC 2348 section 2 allows a
    smaller value; RFC 7440 section 3 likewise).

    Args:
        request: the RRQ or WRQ.
        tsize: for an RRQ, the file's size to report when the client sent ``tsize`` (RFC 2349).
        max_tsize: for a WRQ, the largest announced size accepted.

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
        if v is not None and MIN_TIMEOUT <= v <= MAX_TIMEOUT:
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


# ---- the transfer machines --------------------------------------------------------------------------
class State(Enum):
    """Where a transfer stands. Transitions (both machines)::

        REQUESTING --reply--> RUNNING --last ACK/DATA--> DONE
        any        --ERROR / max_retries / bad packet--> FAILED
    """

    REQUESTING = "requesting"  # client: request sent, no reply yet
    WAIT_OACK_ACK = "wait-oack-ack"  # server sender: OACK sent, waiting for ACK 0
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class _Machine:
    """What both machines share: peer TID checks, timers, retries, statistics."""

    def __init__(self, peer: Address | None, options: TransferOptions, max_retries: int) -> None:
        self.peer = peer  # None until a client learns the server's TID from its first reply
        self.options = options
        self.max_retries = max_retries
        self.state = State.RUNNING
        self.timer_generation = 0
        self.retries = 0
        self.error: str | None = None
        self.error_code: int | None = None
        self.retransmissions = 0
        self.packets_sent = 0
        self.unknown_tid = 0
        self.bytes = 0
        self._last: list[bytes] = []  # what a timeout resends (request, OACK, last ACK)

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def finished(self) -> bool:
        return self.state in (State.DONE, State.FAILED)

    def _progress(self) -> None:
        self.retries = 0
        self.timer_generation += 1

    def _fail(self, code: int, message: str, *, tell_peer: bool = True) -> Outgoing:
        self.state = State.FAILED
        self.error, self.error_code = message, code
        self.timer_generation += 1
        if tell_peer and self.peer is not None:
            return [(encode_packet(Error(code, message)), self.peer)]
        return []

    def _out(self, packets: list[bytes]) -> Outgoing:
        self.packets_sent += len(packets)
        return [(p, self.peer) for p in packets]

    def datagram_received(self, data: bytes, addr: Address) -> Outgoing:
        """Feed one datagram from ``addr``; returns the datagrams to send."""
        if self.peer is not None and addr != self.peer:
            # RFC 1350 section 4: a packet from a foreign TID gets ERROR 5; the transfer goes on
            self.unknown_tid += 1
            return [(encode_packet(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")), addr)]
        if self.state in (State.DONE, State.FAILED):
            return self._after_end(data)
        try:
            packet = parse_packet(data)
        except RemoteProtocolError as exc:
            if self.peer is None:
                self.peer = addr
            return self._fail(exc.hint or ErrorCode.ILLEGAL_OPERATION, str(exc))
        if isinstance(packet, Error):
            if self.peer is None:
                self.peer = addr
            return self._fail(packet.code, f"peer error {packet.code}: {packet.message}", tell_peer=False)
        if self.peer is None:
            self.peer = addr
        return self._packet(packet)

    def _after_end(self, data: bytes) -> Outgoing:
        return []

    def _packet(self, packet: Packet) -> Outgoing:
        raise NotImplementedError

    def timer_expired(self) -> Outgoing:
        """The timer armed for ``timeout`` seconds fired with no progress: retransmit or give up."""
        if self.finished:
            return []
        self.retries += 1
        if self.retries > self.max_retries:
            return self._fail(ErrorCode.NOT_DEFINED,
                              f"timed out: no answer after {self.max_retries} retransmissions")
        self.timer_generation += 1
        return self._retransmit()

    def _retransmit(self) -> Outgoing:
        self.retransmissions += len(self._last)
        if self.peer is not None:
            return self._out(list(self._last))
        self.packets_sent += len(self._last)
        return [(p, self._initial_addr) for p in self._last]

    _initial_addr: Address = None

    def abort(self, code: int, message: str) -> Outgoing:
        """Our side gives up (disk full, interrupted): returns the ERROR to send."""
        if self.finished:
            return []
        return self._fail(code, message)


class Sender(_Machine):
    """Sends a file as DATA blocks and reads ACKs (server after RRQ, client after WRQ).

    Args:
        read: returns the next ``n`` bytes of the file (fewer only at its end).
        options: the negotiated options.
        peer: the receiver's address (``None`` for a client still waiting for the server's TID).
        max_retries: timeouts without progress before giving up.
    """

    def __init__(self, read: Callable[[int], bytes], options: TransferOptions, peer: Address | None = None,
                 max_retries: int = 5) -> None:
        super().__init__(peer, options, max_retries)
        self._read = read
        self._blocks: dict[int, bytes] = {}  # absolute block -> payload, for blocks in flight
        self.base = 1  # first unacknowledged absolute block
        self.next = 1  # next absolute block to send
        self.last_block: int | None = None  # absolute number of the final (short) block, once read

    # -- starting -----------------------------------------------------------------------------------
    def start_after_oack(self, oack: OAck) -> Outgoing:
        """Server: send the OACK and wait for ACK 0 (RFC 2347 section 3)."""
        self.state = State.WAIT_OACK_ACK
        self._last = [encode_packet(oack)]
        self.timer_generation += 1
        return self._out(list(self._last))

    def start(self) -> Outgoing:
        """Begin sending DATA (server without options, or client once ACK 0/OACK came)."""
        self.state = State.RUNNING
        self.timer_generation += 1
        return self._fill()

    def request(self, packet: Request, server: Address) -> Outgoing:
        """Client (put): send the WRQ to the server's well-known port and wait for its reply."""
        self.state = State.REQUESTING
        self._initial_addr = server
        self._requested = dict(packet.options)
        self._last = [encode_packet(packet)]
        self.timer_generation += 1
        self.packets_sent += 1
        return [(self._last[0], server)]

    _requested: dict[str, str] = {}

    # -- the window ---------------------------------------------------------------------------------
    def _payload(self, block: int) -> bytes:
        data = self._blocks.get(block)
        if data is None:
            data = self._read(self.options.blksize)
            if len(data) > self.options.blksize:
                raise LocalProtocolError("read() returned more than asked")
            self._blocks[block] = data
            if len(data) < self.options.blksize:
                self.last_block = block
        return data

    def _fill(self) -> Outgoing:
        out: list[bytes] = []
        limit = self.base + self.options.windowsize
        while self.next < limit and (self.last_block is None or self.next <= self.last_block):
            payload = self._payload(self.next)
            out.append(encode_packet(Data(self.next, payload)))
            self.next += 1
        return self._out(out)

    def _packet(self, packet: Packet) -> Outgoing:
        if self.state is State.REQUESTING:
            if isinstance(packet, OAck):
                try:
                    self.options = check_oack(self._requested, packet, self.options.timeout)
                except RemoteProtocolError as exc:
                    return self._fail(ErrorCode.OPTION_REFUSED, str(exc))
                self._progress()
                return self.start()
            if isinstance(packet, Ack) and packet.block == 0:
                self.options = TransferOptions(DEFAULT_BLKSIZE, self.options.timeout, 1, None)
                self._progress()
                return self.start()
            return self._fail(ErrorCode.ILLEGAL_OPERATION, f"unexpected {type(packet).__name__} "
                                                           "in answer to a write request")
        if isinstance(packet, OAck):
            return []  # a duplicate of the OACK we already acted on
        if not isinstance(packet, Ack):
            return self._fail(ErrorCode.ILLEGAL_OPERATION, f"expected ACK, got {type(packet).__name__}")
        if self.state is State.WAIT_OACK_ACK:
            if packet.block == 0:
                self._progress()
                return self.start()
            return []  # stray ACK before the transfer started: ignore
        # Which absolute block does this 16-bit number acknowledge? Only base-1 .. next-1 qualify.
        rel = (packet.block - (self.base - 1)) & 0xFFFF
        if rel == 0 or rel > self.next - self.base:
            # A duplicate (rel 0) or stale ACK: never answer it with DATA (RFC 1123 4.2.3.1).
            return []
        acked = self.base - 1 + rel
        for b in range(self.base, acked + 1):
            payload = self._blocks.pop(b)
            self.bytes += len(payload)
        self.base = acked + 1
        self._progress()
        if self.last_block is not None and acked >= self.last_block:
            self.state = State.DONE
            return []
        if acked < self.next - 1:
            # RFC 7440: the receiver saw a gap after `acked`; go back and resend from there
            self.retransmissions += self.next - 1 - acked
            self.next = acked + 1
        return self._fill()

    def _retransmit(self) -> Outgoing:
        if self.state is not State.RUNNING:
            return super()._retransmit()
        # resend the window in flight: base .. next-1
        out = [encode_packet(Data(b, self._blocks[b])) for b in range(self.base, self.next)]
        self.retransmissions += len(out)
        return self._out(out)


class Receiver(_Machine):
    """Reads DATA blocks and acknowledges them (server after WRQ, client after RRQ).

    Args:
        write: called with each in-order payload (the adapter writes the file).
        options: the negotiated options (a client updates them from the OACK).
        peer: the sender's address (``None`` for a client still waiting for the server's TID).
    """

    def __init__(self, write: Callable[[bytes], None], options: TransferOptions, peer: Address | None = None,
                 max_retries: int = 5) -> None:
        super().__init__(peer, options, max_retries)
        self._write = write
        self.expected = 1  # next absolute block wanted
        self._since_ack = 0
        self._gap_acked = False
        self._final_ack: bytes | None = None

    def request(self, packet: Request, server: Address) -> Outgoing:
        """Client (get): send the RRQ and wait for OACK, DATA 1 or ERROR."""
        self.state = State.REQUESTING
        self._initial_addr = server
        self._requested = dict(packet.options)
        self._last = [encode_packet(packet)]
        self.timer_generation += 1
        self.packets_sent += 1
        return [(self._last[0], server)]

    _requested: dict[str, str] = {}

    def start(self, oack: OAck | None = None) -> Outgoing:
        """Server (WRQ): acknowledge with OACK when options were accepted, else ACK 0."""
        self.state = State.RUNNING
        self._last = [encode_packet(oack if oack is not None else Ack(0))]
        self.timer_generation += 1
        return self._out(list(self._last))

    def _ack(self) -> Outgoing:
        self._since_ack = 0
        self._last = [encode_packet(Ack(self.expected - 1))]
        return self._out(list(self._last))

    def _packet(self, packet: Packet) -> Outgoing:
        if self.state is State.REQUESTING:
            if isinstance(packet, OAck):
                try:
                    self.options = check_oack(self._requested, packet, self.options.timeout)
                except RemoteProtocolError as exc:
                    return self._fail(ErrorCode.OPTION_REFUSED, str(exc))
                self.state = State.RUNNING
                self._progress()
                return self._ack()  # ACK 0 acknowledges the OACK
            if isinstance(packet, Data):
                # no OACK: the server ignored our options; RFC 1350 defaults apply
                self.options = TransferOptions(DEFAULT_BLKSIZE, self.options.timeout, 1, None)
                self.state = State.RUNNING
            else:
                return self._fail(ErrorCode.ILLEGAL_OPERATION,
                                  f"unexpected {type(packet).__name__} in answer to a read request")
        if isinstance(packet, OAck) and self.expected == 1:
            return self._ack()  # our ACK 0 was lost and the server resent its OACK: answer again
        if not isinstance(packet, Data):
            return self._fail(ErrorCode.ILLEGAL_OPERATION, f"expected DATA, got {type(packet).__name__}")
        if len(packet.payload) > self.options.blksize:
            return self._fail(ErrorCode.ILLEGAL_OPERATION,
                              f"DATA block of {len(packet.payload)} bytes exceeds blksize {self.options.blksize}")
        rel = (packet.block - self.expected) & 0xFFFF
        if rel == 0:
            self._write(packet.payload)
            self.bytes += len(packet.payload)
            self.expected += 1
            self._since_ack += 1
            self._gap_acked = False
            self._progress()
            if len(packet.payload) < self.options.blksize:
                self.state = State.DONE
                out = self._ack()
                self._final_ack = out[0][0]
                return out
            if self._since_ack >= self.options.windowsize:
                return self._ack()
            return []
        if rel >= 0x8000:
            # an old block: a network duplicate, or the sender resent its window because our ACK
            # was lost. Ignored: our own timer re-acknowledges, so duplicates cost no extra packets
            return []
        # a future block: something before it was lost or reordered. Acknowledge the last in-order
        # block once per gap, so the sender goes back to the block after it (RFC 7440 section 4)
        if self._gap_acked:
            return []
        self._gap_acked = True
        return self._ack()

    def _after_end(self, data: bytes) -> Outgoing:
        # the sender did not get our final ACK and resent the last block: acknowledge it again
        # (this is why a receiver "dallies" a while after the last block, RFC 1350 section 6)
        if self.state is State.DONE and self._final_ack is not None:
            try:
                packet = parse_packet(data)
            except RemoteProtocolError:
                return []
            if isinstance(packet, Data) and packet.block == (self.expected - 1) & 0xFFFF:
                self.retransmissions += 1
                return self._out([self._final_ack])
        return []

    def _retransmit(self) -> Outgoing:
        if self.state is State.RUNNING and self.expected > 1:
            # RFC 7440 section 4: on timeout, acknowledge the last block received in order
            self.retransmissions += 1
            return self._ack()
        return super()._retransmit()  # the RRQ, or our OACK / ACK 0 of a WRQ

    def timer_expired(self) -> Outgoing:
        self._gap_acked = False
        return super().timer_expired()
