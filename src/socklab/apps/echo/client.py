"""The echo client: interactive (each line back with its round-trip time) or ping mode.

Why this exists: a client is the other half of every lesson. It stands on the same contract as
the server (:mod:`socklab.runtime.client`): a protocol driven by an engine, whose callbacks say
what arrived, and the engine's own trace of every ``connect``, ``send`` and ``recv``. The whole
ping runs on the engine - the next message leaves from the callback that received the last echo
- and a reactor engine turns on the calling thread while it waits (``background=False``), so
neither a round trip nor a typed line costs a thread switch. Over TCP a reply may arrive in pieces (the
trace notes it); over UDP a datagram may never arrive, so ping mode waits ``timeout`` seconds,
retries, and counts losses like ``ping`` does.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import BrokenError, OperationTimeout, RemoteProtocolError
from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.core.trace import Tracer
from socklab.core.transport import TimerHandle
from socklab.runtime.client import BlockingClient, ClientHandle

__all__ = ["EchoClient", "PingStats"]

Report = Callable[[bytes, float | None, str | None], None]


@dataclass
class PingStats:
    """What ping mode reports at the end, like ``ping``'s summary."""

    sent: int = 0
    received: int = 0
    retries: int = 0
    rtts_ms: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return 0.0 if not self.sent else 100.0 * (self.sent - self.received) / self.sent

    def summary(self) -> dict[str, float | int]:
        r = self.rtts_ms
        return {
            "sent": self.sent, "received": self.received, "loss_percent": round(self.loss, 2),
            "retries": self.retries,
            "rtt_min_ms": round(min(r), 3) if r else 0.0,
            "rtt_avg_ms": round(statistics.fmean(r), 3) if r else 0.0,
            "rtt_max_ms": round(max(r), 3) if r else 0.0,
            "rtt_mdev_ms": round(statistics.pstdev(r), 3) if len(r) > 1 else 0.0,
        }


class _Run:
    """One series of round trips, driven by the engine; the caller waits for ``done`` (turning it).

    ``report(message, rtt_ms | None, error | None)`` is called (on the engine) after each message;
    a loss on UDP is reported and the series goes on, any other error ends it.
    """

    def __init__(self, client: EchoClient, messages: Iterator[bytes], interval: float, report: Report) -> None:
        self.client, self.messages, self.interval, self.report = client, messages, interval, report
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.message = b""
        self.payload = b""
        self.got = bytearray()
        self.recvs = 0
        self.t0 = 0.0
        self.attempt = 0
        self.timer: TimerHandle | None = None
        self.ahead: bytes | None = None  # the message after this one (None: this is the last)

    def next(self) -> None:
        if self.done.is_set():
            return
        message = self.ahead if self.t0 else next(self.messages, None)
        if message is None:
            self.finish(None)
            return
        self.message = message
        self.ahead = next(self.messages, None)
        self.attempt = 0
        self.send()

    def send(self) -> None:
        c = self.client
        self.got.clear()
        self.recvs = 0
        if c.udp:
            c._seq += 1
            self.payload = c._seq.to_bytes(4, "big") + self.message
        else:
            self.payload = self.message
        self.timer = c._engine.call_later(c.timeout, self.timed_out)
        self.t0 = time.perf_counter()
        if c.udp:
            c._transport.sendto(self.payload)
        else:
            c._transport.write(self.payload)

    def stream_data(self, data: bytes) -> None:
        self.got += data
        self.recvs += 1
        if len(self.got) >= len(self.payload):
            rtt = (time.perf_counter() - self.t0) * 1000
            tr = self.client.tracer
            if tr and self.recvs > 1:
                tr.note(f"one message of {len(self.payload)} bytes arrived in {self.recvs} recv() calls: TCP "
                        "is a byte stream, it keeps no message boundaries - loop until you have it all")
            if bytes(self.got) != self.payload:
                self.finish(RemoteProtocolError("the echo differs from what was sent"))
                return
            self.answered(rtt)

    def datagram(self, data: bytes) -> None:
        if data[:4] != self.payload[:4] or not self.payload:
            if self.client.tracer:
                self.client.tracer.note("a late reply to an earlier datagram arrived: UDP does not order or "
                                        "deduplicate")
            return
        rtt = (time.perf_counter() - self.t0) * 1000
        if data != self.payload:
            self.finish(RemoteProtocolError("the echoed datagram differs from what was sent"))
            return
        self.payload = b""
        self.answered(rtt)

    def answered(self, rtt: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.report(self.message, rtt, None)
        self.then_next()

    def then_next(self) -> None:
        if self.interval > 0 and self.ahead is not None:
            self.client._engine.call_later(self.interval, self.next)
        else:
            self.next()

    def timed_out(self) -> None:
        c = self.client
        if self.done.is_set():
            return
        if not c.udp:
            self.finish(OperationTimeout(f"no complete echo within {c.timeout:g} s"))
            return
        if self.attempt < c.retries:
            self.attempt += 1
            c.resends += 1
            if c.tracer:
                c.tracer.note(f"no reply within {c.timeout:g} s: the datagram or its echo was lost; resending")
            c._seq -= 1  # the same sequence number again: a late echo of the first try still counts
            self.send()
            return
        self.payload = b""
        err = OperationTimeout(f"no echo within {c.timeout:g} s after {c.retries + 1} tries")
        if c.raise_loss:
            self.finish(err)
            return
        self.report(self.message, None, str(err))
        self.then_next()

    def finish(self, error: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.error is None:
            self.error = error
        self.done.set()


class _StreamSide(Protocol):
    def __init__(self, client: EchoClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        run = self.client._run
        if run is not None:
            run.stream_data(data)

    def eof_received(self) -> bool | None:
        run = self.client._run
        if run is not None and not run.done.is_set():
            run.finish(BrokenError(f"the server closed the connection after {len(run.got)} of "
                                   f"{len(run.payload)} bytes"))
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        run = self.client._run
        if run is not None and not run.done.is_set():
            run.finish(exc or BrokenError("the server closed the connection"))


class _DatagramSide(DatagramProtocol):
    def __init__(self, client: EchoClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        run = self.client._run
        if run is not None:
            run.datagram(data)

    def error_received(self, exc: BaseException) -> None:  # ICMP: nothing listens on that UDP port
        run = self.client._run
        if run is not None:
            run.finish(exc)


class EchoClient:
    """An echo client over TCP (optionally TLS), Unix or UDP, on an engine.

    Args:
        endpoint: where the server is.
        udp: speak UDP (one datagram per message).
        timeout: seconds to wait for each reply.
        retries: UDP only - how many times to resend an unanswered datagram.
        settings: connect timeout and TLS (:class:`~socklab.core.settings.ClientSettings`).
        engine: the engine that drives the client (``epoll`` by default).
        tracer: the lifecycle trace, or ``None``.

    Raises:
        ConnectionRefused, ConnectTimeout, ResolveError, TlsError...: from connecting.
    """

    def __init__(self, endpoint: Endpoint, *, udp: bool = False, timeout: float = 2.0, retries: int = 2,
                 settings: ClientSettings | None = None, engine: str = "epoll",
                 tracer: Tracer | None = None) -> None:
        self.endpoint, self.udp, self.timeout, self.retries, self.tracer = endpoint, udp, timeout, retries, tracer
        self._seq = 0
        self.resends = 0
        self.raise_loss = True
        self._run: _Run | None = None
        self._client = BlockingClient(settings, engine=engine, tracer=tracer, background=False)
        self._engine = self._client.engine
        try:
            self._handle: ClientHandle[Any] = (
                self._client.open_datagram(endpoint, lambda: _DatagramSide(self)) if udp
                else self._client.connect(endpoint, lambda: _StreamSide(self)))
        except BaseException:
            self._client.close()
            raise
        self._transport: Any = self._handle.transport

    def _series(self, messages: Iterable[bytes], interval: float, report: Report) -> None:
        run = self._run = _Run(self, iter(messages), interval, report)
        self._client.wait(run.done, start=run.next)
        self._run = None
        if run.error is not None:
            raise run.error

    # ---- one message -----------------------------------------------------------------------------
    def roundtrip(self, message: bytes) -> float:
        """Send ``message`` and wait until all of it came back; returns the RTT in milliseconds.

        Raises:
            OperationTimeout: no (complete) reply in time (UDP: after the retries).
            BrokenError: the server closed or reset the connection.
            RemoteProtocolError: the reply differs from what was sent.
        """
        rtts: list[float] = []
        self._series([message], 0, lambda _m, rtt, _e: rtts.append(rtt or 0.0))
        return rtts[0]

    # ---- modes -----------------------------------------------------------------------------------
    def ping(self, count: int, size: int, interval: float,
             report: Callable[[int, float | None, str | None], None] | None = None) -> PingStats:
        """Send ``count`` messages of ``size`` bytes, ``interval`` seconds apart; never raises on UDP loss."""
        stats = PingStats()

        def messages() -> Iterator[bytes]:
            for _ in range(count):
                yield os.urandom(size) if size else b"\n"

        def each(_message: bytes, rtt: float | None, err: str | None) -> None:
            stats.sent += 1
            if rtt is not None:
                stats.received += 1
                stats.rtts_ms.append(rtt)
            if report:
                report(stats.sent, rtt, err)

        self.raise_loss = not self.udp
        try:
            self._series(messages(), interval, each)
        finally:
            self.raise_loss = True
        stats.retries = self.resends
        return stats

    def interactive(self, lines: Iterable[bytes], report: Callable[[bytes, float], None]) -> None:
        """Echo each input line and report it with its round-trip time."""
        for line in lines:
            report(line, self.roundtrip(line))

    def close(self) -> None:
        """TCP: send FIN (TLS: close_notify, then FIN; a close where it cannot half-close) and wait
        (``timeout``) for the server's end; then stop the engine."""
        try:
            if not self.udp and not self._handle.closed.is_set():
                t = self._transport
                self._client.post(t.write_eof if t.can_write_eof() else t.close)
                self._client.wait(self._handle.closed, self.timeout)
            elif self.udp:
                self._client.post(self._transport.close)
                self._client.wait(self._handle.closed, self.timeout)
        finally:
            self._client.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
