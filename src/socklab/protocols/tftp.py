"""TFTP, sans-I/O: packets, option negotiation and the two transfer state machines.

Why this exists: TFTP (RFC 1350) is the classic lesson in building reliability out of
datagrams. UDP loses, duplicates and reorders; TFTP answers with block numbers, acknowledgements
and *timeouts*. This module holds all of that logic and no clock, no socket and no file: the
adapters (``socklab.apps.tftp``) feed it datagrams and timer expiries and send what it returns,
so every loss, duplicate and reordering can be replayed deterministically in a pure test.

The pieces:

- packets, options and netascii live in :mod:`socklab.protocols.tftp_wire` and are re-exported
  here (:func:`parse_packet`, :func:`encode_packet`, :func:`negotiate`, :func:`check_oack`...);
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
- An upload is acknowledged only once it is stored: a server's ``Receiver(hold_final_ack=True)``
  stops in ``COMMITTING`` on the last block, sends nothing, and answers with the final ACK or an
  ERROR when the adapter calls :meth:`Receiver.commit_done` (the adapter fsyncs, renames and
  fsyncs the directory in between, off its event loop).
- A datagram from an unknown transfer ID (source address) is answered with ERROR 5 and the
  transfer goes on (RFC 1350 section 4).

Timers: every machine has ``timeout`` (seconds) and ``timer_generation``. Whenever
``timer_generation`` changes after a call, the adapter (re)arms one timer for ``timeout``
seconds; when it fires, it calls ``timer_expired()``. After ``max_retries`` expiries without
progress the machine fails with a timeout error.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from socklab.core.errors import LocalProtocolError, RemoteProtocolError
from socklab.protocols.tftp_wire import (
    ACK,
    DATA,
    DEFAULT_BLKSIZE,
    ERROR,
    MAX_BLKSIZE,
    MAX_TIMEOUT,
    MAX_WINDOW,
    MIN_BLKSIZE,
    MIN_TIMEOUT,
    MIN_WINDOW,
    OACK,
    RRQ,
    WRQ,
    Ack,
    Address,
    Data,
    Error,
    ErrorCode,
    NetasciiDecoder,
    NetasciiEncoder,
    OAck,
    Outgoing,
    Packet,
    Request,
    TransferOptions,
    check_oack,
    encode_packet,
    negotiate,
    parse_packet,
)

__all__ = [
    "ACK", "DATA", "DEFAULT_BLKSIZE", "ERROR", "MAX_BLKSIZE", "MAX_TIMEOUT", "MAX_WINDOW", "MIN_BLKSIZE",
    "MIN_TIMEOUT", "MIN_WINDOW", "OACK", "RRQ", "WRQ", "Ack", "Data", "Error", "ErrorCode", "NetasciiDecoder",
    "NetasciiEncoder", "OAck", "Packet", "Receiver", "Request", "Sender", "State", "TransferOptions",
    "check_oack", "encode_packet", "negotiate", "parse_packet",
]


# ---- the transfer machines --------------------------------------------------------------------------
class State(Enum):
    """Where a transfer stands. Transitions (both machines)::

        REQUESTING --reply--> RUNNING --last ACK/DATA--> DONE
        RUNNING --last DATA (hold_final_ack)--> COMMITTING --commit_done--> DONE or FAILED
        any        --ERROR / max_retries / bad packet--> FAILED
    """

    REQUESTING = "requesting"  # client: request sent, no reply yet
    WAIT_OACK_ACK = "wait-oack-ack"  # server sender: OACK sent, waiting for ACK 0
    RUNNING = "running"
    COMMITTING = "committing"  # server receiver: last block in, the file being stored, no ACK yet
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
        self.progress_count = 0  # grows with every step forward (an adapter's stall deadline reads it)
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
        self.progress_count += 1
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
        if self.finished or self.state is State.COMMITTING:
            return []  # (committing: the final ACK waits for the disk, not for the network)
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
                 max_retries: int = 5, *, hold_final_ack: bool = False) -> None:
        super().__init__(peer, options, max_retries)
        self._write = write
        self._hold_final_ack = hold_final_ack
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
        if self.state is State.COMMITTING:
            return []  # the sender resent its last block while we store it: the commit answers
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
                if self._hold_final_ack:
                    self.state = State.COMMITTING
                    self.timer_generation += 1
                    return []
                return self._final()
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

    def _final(self) -> Outgoing:
        self.state = State.DONE
        out = self._ack()
        self._final_ack = out[0][0]
        return out

    def commit_done(self, error: tuple[int, str] | None = None) -> Outgoing:
        """The adapter stored the upload (``error`` None) or could not (``(code, message)``).

        Returns the final ACK, or the ERROR that tells the sender its file was not stored.
        """
        if self.state is not State.COMMITTING:
            return []  # the peer gave up meanwhile (its ERROR ended the transfer)
        if error is not None:
            return self._fail(*error)
        return self._final()

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
