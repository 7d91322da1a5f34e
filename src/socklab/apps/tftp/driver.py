"""One TFTP transfer on an engine: the sans-I/O machine, its timers, its deadline and its file.

Why this exists: :mod:`socklab.protocols.tftp` decides what to send; something must send it, arm
the retransmission timer when the machine asks (``timer_generation``), store an upload before the
final ACK, and end a transfer that stopped moving. That is this adapter, the same in per-TID and
single-port mode.

Deadlines a peer cannot stretch: the retransmission timer is the negotiated timeout (capped by the
server, see ``--max-timeout``), and ``stall_timeout`` ends a transfer that made no progress for that
long, whatever its retry count - so a client that never acknowledges holds its slot seconds, not
``255 x retries``.

Storing an upload: when the machine stops in ``COMMITTING`` (last block in, no ACK sent yet) the
driver hands the commit to ``commit(callback)``, which runs it off the engine thread and calls
``callback`` back on the engine with ``None`` (stored: the final ACK goes out) or ``(code, message)``
(the client gets that ERROR instead).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from socklab.core.protocol import DatagramProtocol
from socklab.core.transport import DatagramTransport, TimerHandle
from socklab.protocols import tftp

__all__ = ["CommitResult", "TransferDriver", "TransferEndpoint"]

#: what a commit reports: None when stored, else the ERROR (code, message) to send
CommitResult = tuple[int, str] | None


class TransferDriver:
    """Runs one sans-I/O machine: sends what it returns, arms its timers, finishes the file.

    Args:
        machine: a :class:`~socklab.protocols.tftp.Sender` or ``Receiver``.
        sendto: sends one datagram to an address.
        call_later: the engine's timer.
        on_done: called once with the driver when the transfer is over (after dallying).
        finish: called with ``True`` (complete) or ``False`` when the transfer ends (close or
            delete the file).
        commit: for an upload, ``commit(callback)`` stores the file off the engine thread and
            calls ``callback(CommitResult)`` on the engine.
        stall_timeout: seconds without progress before the transfer is abandoned (0: no limit).
        on_end: called once when the transfer ends (before dallying: the slot it held is free).
        on_dally: called once if the transfer, ended, stays to re-acknowledge a resent last block
            (its socket stays open until ``on_done``; ``close()`` ends the dally early).
    """

    def __init__(self, machine: Any, sendto: Callable[[bytes, Any], None],
                 call_later: Callable[[float, Callable[[], None]], TimerHandle],
                 on_done: Callable[[TransferDriver], None], finish: Callable[[bool], None], *,
                 commit: Callable[[Callable[[CommitResult], None]], None] | None = None,
                 stall_timeout: float = 0.0, on_end: Callable[[TransferDriver], None] | None = None,
                 on_dally: Callable[[TransferDriver], None] | None = None) -> None:
        self.machine = machine
        self._sendto = sendto
        self._call_later = call_later
        self._on_done = on_done
        self._finish = finish
        self._commit = commit
        self._on_end = on_end
        self._on_dally = on_dally
        self._stall_timeout = stall_timeout
        self._timer: TimerHandle | None = None
        self._stall_timer: TimerHandle | None = None
        self._gen = -1
        self._seen_progress = -1
        self.last_progress = time.monotonic()
        self._committing = False  # a commit was handed to the worker...
        self._commit_returned = False  # ...and came back (until then the worker owns the file)
        self._finish_deferred = False
        self._ended = False
        self._closed = False
        self.endpoint: DatagramTransport | None = None
        self.request = b""  # the RRQ/WRQ datagram that started it (the server's to set)

    @property
    def active(self) -> bool:
        """Still transferring (or storing): not ended, not dallying."""
        return not self._ended

    @property
    def committing(self) -> bool:
        """An upload being stored: its last block is in, its final ACK waits for the commit."""
        return self.machine.state is tftp.State.COMMITTING

    @property
    def finishing(self) -> bool:
        """Nothing left but the peer's last word: every block of a download sent (its final ACK
        may already be queued, unread), an upload being stored, or ended and dallying."""
        m = self.machine
        if self._ended or m.state is tftp.State.COMMITTING:
            return True
        return (isinstance(m, tftp.Sender) and m.state is tftp.State.RUNNING and m.last_block is not None
                and m.next > m.last_block)

    def idle_for(self) -> float:
        """Seconds since the machine last moved forward."""
        return time.monotonic() - self.last_progress

    def handle(self, out: list[tuple[bytes, Any]]) -> None:
        """Send the machine's output, then commit, finish, dally or (re)arm the timer as its state says."""
        for data, addr in out:
            self._sendto(data, addr)
        m = self.machine
        if m.progress_count != self._seen_progress:
            self._seen_progress = m.progress_count
            self.last_progress = time.monotonic()
        if self._stall_timer is None and self._stall_timeout > 0 and not self._ended:
            self._stall_timer = self._call_later(self._stall_timeout, self._check_stall)
        if m.state is tftp.State.COMMITTING:
            if not self._committing and self._commit is not None:
                self._committing = True
                self._cancel_timer()
                self._commit(self._committed)
            return
        if m.finished and not self._ended:
            self._end(m.state is tftp.State.DONE)
            if isinstance(m, tftp.Receiver) and m.state is tftp.State.DONE:
                # dally: our final ACK may be lost; stay as long as the sender may retry, to
                # acknowledge a resent last block (RFC 1350 section 6)
                self._timer = self._call_later(m.timeout * max(2, m.max_retries), self.close)
                if self._on_dally is not None:
                    self._on_dally(self)
            else:
                self.close()
            return
        if m.timer_generation != self._gen and not m.finished:
            self._gen = m.timer_generation
            self._cancel_timer()
            self._timer = self._call_later(m.timeout, self._expired)

    def _end(self, ok: bool) -> None:
        self._ended = True
        self._cancel_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._committing and not self._commit_returned:
            self._finish_deferred = True  # aborted while the worker stores the file: finish after it
        else:
            self._call_finish(ok)
        if self._on_end is not None:
            self._on_end(self)

    def _call_finish(self, ok: bool) -> None:
        try:
            self._finish(ok)
        except OSError as exc:  # closing the file failed: tell the peer if still possible
            for data, addr in self.machine.abort(tftp.ErrorCode.DISK_FULL, f"cannot store the file: {exc}"):
                self._sendto(data, addr)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _committed(self, result: CommitResult) -> None:
        self._commit_returned = True
        if self._finish_deferred:
            self._finish_deferred = False
            self._call_finish(False)
        if not self._closed:
            self.handle(self.machine.commit_done(result))

    def _expired(self) -> None:
        self._timer = None
        if not self._closed:
            self._gen = -1
            self.handle(self.machine.timer_expired())

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self._ended or self._closed:
            return
        idle = self.idle_for()
        if self._committing or idle < self._stall_timeout:
            self._stall_timer = self._call_later(max(0.05, self._stall_timeout - idle), self._check_stall)
            return
        self.abort(f"no progress for {self._stall_timeout:g} s (stall_timeout): transfer abandoned")

    def datagram(self, data: bytes, addr: Any) -> None:
        """One datagram for this transfer."""
        if not self._closed:
            self.handle(self.machine.datagram_received(data, addr))

    def abort(self, message: str) -> None:
        """Stop now (shutdown, stall, eviction): ERROR 0 to the peer, partial upload removed.

        Not while an upload is being stored: an ERROR then could be a lie (the rename may still
        happen), so the commit's own answer - the final ACK or an ERROR - is the one the peer gets.
        """
        if self._committing and not self._commit_returned:
            return
        if not self._ended:
            self.handle(self.machine.abort(tftp.ErrorCode.NOT_DEFINED, message))
            if not self._ended:  # the machine had already finished: end it here
                self._end(False)
        self.close()

    def release(self) -> None:
        """The engine stopped under us: close the file (a partial upload is removed), send nothing."""
        if not self._ended:
            self._ended = True
            with contextlib.suppress(OSError):
                self._finish(False)

    def discard(self) -> None:
        """Its socket was refused after the machine started: stop the timers, send and tell nothing
        (the owner frees the slot and the file)."""
        self._ended = self._closed = True
        self._cancel_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def close(self) -> None:
        """The transfer is over (idempotent): cancel the timers, tell the owner."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if not self._ended:
            self._end(False)
        self._on_done(self)


class TransferEndpoint(DatagramProtocol):
    """The per-transfer socket (the server's new TID)."""

    def __init__(self, make_driver: Callable[[DatagramTransport], TransferDriver],
                 first: Callable[[], list[Any]]) -> None:
        self._make_driver = make_driver
        self._first = first
        self.driver: TransferDriver | None = None

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        self.driver = self._make_driver(transport)
        self.driver.handle(self._first())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.driver is not None:
            self.driver.datagram(data, addr)

    def error_received(self, exc: BaseException) -> None:
        pass  # ICMP port unreachable from a vanished client: the retry limit ends the transfer
