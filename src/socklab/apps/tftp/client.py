"""The TFTP client: ``get`` and ``put`` over one UDP socket on an engine, the machine's timers as engine timers.

Why this exists: a client has exactly one transfer, run like a server's on the same contract
(:mod:`socklab.runtime.client`): an engine drives one unconnected UDP socket, its datagrams go to
the machine and the machine's timer is an engine timer. The logic (options, windows, rollover, retransmission, TID checks) is the same sans-I/O machine the
server runs (:mod:`socklab.protocols.tftp`).

Before asking for a window, the client sizes its socket buffers for it and asks for no more
blocks than its receive buffer holds (see :mod:`socklab.apps.tftp.sockbuf`): a window the kernel
drops the tail of costs a whole timeout per window.

The server's transfer ID is learned from its first reply (RFC 1350 section 4): the request goes to
port 69 (or ``--port``), everything after that to the port the answer came from.

A download returns as soon as its final ACK is sent, as tftp-hpa's client does: no dally. Waiting
to re-acknowledge a resent last block would cost every ``get`` a whole timeout, and the caller
gains nothing by it - the file is complete once the last block is read. If that final ACK is lost,
the server resends its last block to a closed port and ends the transfer on its own (socklab's
server at its retry limit; tftp-hpa's ``in.tftpd`` gives up too). The receiver that dallies is the
server, after an upload.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from socklab.apps.tftp.sockbuf import size_for_window
from socklab.core.errors import ConnectionRefused, NetworkError, RemoteProtocolError
from socklab.core.protocol import DatagramProtocol
from socklab.core.sockets import Endpoint
from socklab.core.transport import DatagramTransport, TimerHandle
from socklab.engines import Engine
from socklab.protocols import tftp
from socklab.protocols.text import escape_peer_text
from socklab.runtime.client import BlockingClient

__all__ = ["TftpClientOptions", "TftpResult", "tftp_get", "tftp_put"]


@dataclass(frozen=True)
class TftpClientOptions:
    """What a client asks for. ``None`` leaves an option out of the request."""

    mode: str = "octet"
    blksize: int | None = None
    windowsize: int | None = None
    timeout: float = 1.0
    max_retries: int = 5
    tsize: bool = True
    send_timeout_option: bool = False  # ask the server to use our timeout (RFC 2349; whole seconds)

    def request_options(self, size: int | None) -> dict[str, str]:
        """The RFC 2347 options of the request (``size``: the upload's tsize, RFC 2349)."""
        opts: dict[str, str] = {}
        if self.blksize is not None:
            opts["blksize"] = str(self.blksize)
        if self.windowsize is not None:
            opts["windowsize"] = str(self.windowsize)
        if self.send_timeout_option:
            opts["timeout"] = str(max(1, round(self.timeout)))
        if self.tsize and self.mode == "octet":
            opts["tsize"] = str(size or 0)
        return opts


@dataclass(frozen=True)
class TftpResult:
    """What a finished transfer did."""

    bytes: int
    seconds: float
    blksize: int
    windowsize: int
    tsize: int | None
    retransmissions: int
    packets_sent: int
    unknown_tid: int

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class _Transfer(DatagramProtocol):
    """One transfer on the client's engine: the machine's datagrams out, the server's in, its timer armed."""

    def __init__(self, machine: Any, progress: Callable[[int, int | None], None] | None) -> None:
        self.machine, self.progress = machine, progress
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.timer: TimerHandle | None = None
        self.gen = -1
        self.start = self.elapsed = self.deadline = 0.0
        self.engine: Engine | None = None

    def begin(self, request: tftp.Request, server: Any) -> None:
        request = _fit_window(self.transport, request)
        self.start = time.monotonic()
        self.send(self.machine.request(request, server))

    def send(self, out: list[tuple[bytes, Any]]) -> None:
        for data, addr in out:
            self.transport.sendto(data, addr)
        self.settle()

    def settle(self) -> None:
        """After each step: finished (the final ACK, if any, is already sent: end now), or re-arm the
        timer if the machine asked."""
        m = self.machine
        if self.done.is_set():
            return
        if m.finished:
            self.elapsed = time.monotonic() - self.start
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.done.set()  # no dally: see the module's docstring
            return
        if m.timer_generation != self.gen:
            # One engine timer, moved lazily: a new generation only sets the deadline (no timer
            # heap work per block); the timer, when it fires early, sleeps again until the deadline.
            self.gen = m.timer_generation
            self.deadline = time.monotonic() + m.timeout
            if self.timer is None:
                self.timer = self.call_later(m.timeout, self.expired)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        assert self.engine is not None
        return self.engine.call_later(delay, callback)

    def expired(self) -> None:
        self.timer = None
        if self.done.is_set():
            return
        left = self.deadline - time.monotonic()
        if left > 0.001:
            self.timer = self.call_later(left, self.expired)
            return
        self.gen = -1  # the machine's timer fired: re-arm after its answer
        self.send(self.machine.timer_expired())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.done.is_set():
            return
        self.send(self.machine.datagram_received(data, addr))
        if self.progress is not None:
            self.progress(self.machine.bytes, self.machine.options.tsize)

    def error_received(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionRefused):
            return  # ICMP port unreachable for an earlier datagram: the timer decides
        self.error = exc
        self.done.set()


def _run(machine: Any, request: tftp.Request, host: str, port: int,
         progress: Callable[[int, int | None], None] | None) -> float:
    """Run one transfer; the request's window is lowered to what the socket's buffers hold."""
    with BlockingClient(background=False) as client:  # a reactor turns on this thread while it waits
        transfer = _Transfer(machine, progress)
        transfer.engine = client.engine
        handle = client.open_datagram(Endpoint(host, port), lambda: transfer, connected=False)
        client.call(lambda: transfer.begin(request, handle.remote))
        client.wait(transfer.done)
        if transfer.timer is not None:
            client.call(transfer.timer.cancel)
        client.call(transfer.transport.close)
    if transfer.error is not None:
        raise transfer.error
    return transfer.elapsed


def _fit_window(transport: DatagramTransport, request: tftp.Request) -> tftp.Request:
    opts = request.options
    blksize = int(opts.get("blksize", tftp.DEFAULT_BLKSIZE))
    window = int(opts.get("windowsize", 1))
    # get: we receive the window (its tail must fit our receive buffer); put: we send it
    fits = size_for_window(transport, blksize, window, receive=not request.write, send=request.write)
    if fits < window:
        return tftp.Request(request.filename, request.mode, {**opts, "windowsize": str(fits)}, request.write)
    return request


def _check(machine: Any) -> None:
    if machine.state is not tftp.State.DONE:
        message = escape_peer_text(machine.error or "transfer failed")  # it may quote the server
        if machine.error_code is not None and "timed out" not in message:
            raise RemoteProtocolError(message, hint=machine.error_code)
        raise NetworkError(message)


def _result(machine: Any, seconds: float) -> TftpResult:
    o = machine.options
    return TftpResult(machine.bytes, seconds, o.blksize, o.windowsize, o.tsize, machine.retransmissions,
                      machine.packets_sent, machine.unknown_tid)


def tftp_get(host: str, port: int, remote: str, out: IO[bytes], options: TftpClientOptions | None = None,
             progress: Callable[[int, int | None], None] | None = None) -> TftpResult:
    """Download ``remote`` into the binary file ``out``.

    Args:
        host, port: the server's request port (69 unless told otherwise).
        remote: the file's name on the server.
        out: where the bytes go (netascii is converted back to local line ends).
        options: what to ask for (blksize, windowsize, timeout...).
        progress: called with (bytes so far, tsize or None) after each datagram.

    Returns:
        A :class:`TftpResult` (bytes, seconds, negotiated options, retransmissions).

    Raises:
        RemoteProtocolError: the server answered with ERROR (hint: its code) or broke the protocol.
        NetworkError: no answer after ``max_retries`` timeouts, or a socket error.
    """
    o = options or TftpClientOptions()
    decoder = tftp.NetasciiDecoder() if o.mode == "netascii" else None

    def write(data: bytes) -> None:
        out.write(decoder.decode(data) if decoder is not None else data)

    machine = tftp.Receiver(write, tftp.TransferOptions(timeout=o.timeout), max_retries=o.max_retries)
    req = tftp.Request(remote, o.mode, o.request_options(None))
    seconds = _run(machine, req, host, port, progress)
    _check(machine)
    if decoder is not None:
        out.write(decoder.decode(b"", final=True))
    return _result(machine, seconds)


def tftp_put(host: str, port: int, remote: str, src: IO[bytes], options: TftpClientOptions | None = None,
             progress: Callable[[int, int | None], None] | None = None) -> TftpResult:
    """Upload the binary file ``src`` as ``remote``.

    Returns:
        A :class:`TftpResult`.

    Raises:
        RemoteProtocolError, NetworkError: as for :func:`tftp_get`.
    """
    o = options or TftpClientOptions()
    try:
        size: int | None = os.fstat(src.fileno()).st_size
    except (OSError, ValueError, AttributeError):
        size = None
    encoder = tftp.NetasciiEncoder() if o.mode == "netascii" else None
    pending = b""

    def read(n: int) -> bytes:
        nonlocal pending
        if encoder is None:
            return src.read(n)
        while len(pending) < n:
            raw = src.read(max(n, 4096))
            if not raw:
                break
            pending += encoder.encode(raw)
        chunk, pending = pending[:n], pending[n:]
        return chunk

    machine = tftp.Sender(read, tftp.TransferOptions(timeout=o.timeout), max_retries=o.max_retries)
    req = tftp.Request(remote, o.mode, o.request_options(size), write=True)
    seconds = _run(machine, req, host, port, progress)
    _check(machine)
    return _result(machine, seconds)
