"""The echo client: interactive (each line back with its round-trip time) or ping mode.

Why this exists: a client is the other half of every lesson. This one uses plain *blocking*
sockets on purpose - ``connect``, ``sendall``, ``recv`` in a loop until the whole message is
back - the way a first socket program is written, with every call traced under ``--trace``.
Over TCP a reply may arrive in pieces (the loop shows it); over UDP a datagram may never arrive,
so ping mode waits ``timeout`` seconds, retries, and counts losses like ``ping`` does.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from socklab.core.errors import BrokenError, OperationTimeout, RemoteProtocolError, translate_oserror
from socklab.core.sockets import Endpoint, client_ssl_context, connect_tcp, open_udp_socket
from socklab.core.trace import Tracer

__all__ = ["EchoClient", "PingStats"]


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


class EchoClient:
    """A blocking echo client over TCP (optionally TLS), Unix or UDP.

    Args:
        endpoint: where the server is.
        udp: speak UDP (one datagram per message).
        timeout: seconds to wait for each reply.
        retries: UDP only - how many times to resend an unanswered datagram.
        tracer: the lifecycle trace, or ``None``.
    """

    def __init__(self, endpoint: Endpoint, *, udp: bool = False, timeout: float = 2.0, retries: int = 2,
                 connect_timeout: float = 10.0, tls: bool = False, cafile: str | None = None,
                 insecure: bool = False, server_name: str | None = None, tracer: Tracer | None = None) -> None:
        self.endpoint, self.udp, self.timeout, self.retries, self.tracer = endpoint, udp, timeout, retries, tracer
        self._seq = 0
        self.resends = 0
        if udp:
            if endpoint.unix is not None:
                raise RemoteProtocolError("UDP needs HOST:PORT, not a Unix path")
            self.sock = open_udp_socket("", 0, connect_to=(endpoint.host, endpoint.port), tracer=tracer)
        else:
            self.sock = connect_tcp(endpoint, timeout=connect_timeout, tracer=tracer)
            if tls:
                ctx = client_ssl_context(cafile, insecure)
                try:
                    self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name or endpoint.host)
                except OSError as exc:
                    self.sock.close()
                    raise translate_oserror(exc, "during the TLS handshake") from exc
                if tracer:
                    tracer.note(f"TLS handshake done: {self.sock.version()}", self.sock)
        self.sock.settimeout(timeout)

    # ---- one message -----------------------------------------------------------------------------
    def roundtrip(self, message: bytes) -> float:
        """Send ``message`` and wait until all of it came back; returns the RTT in milliseconds.

        Raises:
            OperationTimeout: no (complete) reply in time (UDP: after the retries).
            BrokenError: the server closed or reset the connection.
            RemoteProtocolError: the reply differs from what was sent.
        """
        return self._udp_roundtrip(message) if self.udp else self._tcp_roundtrip(message)

    def _tcp_roundtrip(self, message: bytes) -> float:
        tr = self.tracer
        t0 = time.perf_counter()
        try:
            self.sock.sendall(message)
        except OSError as exc:
            raise translate_oserror(exc, "sending") from exc
        if tr:
            tr.emit("send", self.sock, nbytes=len(message), requested=len(message), detail="sendall")
        got = bytearray()
        recvs = 0
        while len(got) < len(message):
            try:
                chunk = self.sock.recv(max(65536, len(message) - len(got)))
            except OSError as exc:
                raise translate_oserror(exc, "waiting for the echo") from exc
            recvs += 1
            if tr:
                tr.emit("recv", self.sock, nbytes=len(chunk), requested=len(message) - len(got))
            if not chunk:
                raise BrokenError(f"the server closed the connection after {len(got)} of {len(message)} bytes")
            got += chunk
        rtt = (time.perf_counter() - t0) * 1000
        if tr and recvs > 1:
            tr.note(f"one message of {len(message)} bytes arrived in {recvs} recv() calls: TCP is a byte "
                    "stream, it keeps no message boundaries - loop until you have it all", self.sock)
        if bytes(got) != message:
            raise RemoteProtocolError("the echo differs from what was sent")
        return rtt

    def _udp_roundtrip(self, message: bytes) -> float:
        tr = self.tracer
        self._seq += 1
        tag = self._seq.to_bytes(4, "big")
        payload = tag + message
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            try:
                self.sock.send(payload)
            except OSError as exc:
                raise translate_oserror(exc, "sending a datagram") from exc
            if tr:
                tr.emit("send", self.sock, nbytes=len(payload), detail=f"datagram seq={self._seq}")
            deadline = t0 + self.timeout
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    break
                except ConnectionRefusedError as exc:  # ICMP port unreachable from an earlier datagram
                    raise translate_oserror(exc, "waiting for the echo (nothing listens on that UDP port)") \
                        from exc
                except OSError as exc:
                    raise translate_oserror(exc, "waiting for the echo") from exc
                if tr:
                    tr.emit("recv", self.sock, nbytes=len(data))
                if data[:4] == tag:
                    if data != payload:
                        raise RemoteProtocolError("the echoed datagram differs from what was sent")
                    return (time.perf_counter() - t0) * 1000
                if tr:
                    tr.note("a late reply to an earlier datagram arrived: UDP does not order or deduplicate")
            if attempt < self.retries:
                self.resends += 1
                if tr:
                    tr.note(f"no reply within {self.timeout:g} s: the datagram or its echo was lost; resending")
        raise OperationTimeout(f"no echo within {self.timeout:g} s after {self.retries + 1} tries")

    # ---- modes -----------------------------------------------------------------------------------
    def ping(self, count: int, size: int, interval: float,
             report: Callable[[int, float | None, str | None], None] | None = None) -> PingStats:
        """Send ``count`` messages of ``size`` bytes, ``interval`` seconds apart; never raises on loss."""
        stats = PingStats()
        for i in range(count):
            message = os.urandom(size) if size else b""
            stats.sent += 1
            try:
                rtt: float | None = self.roundtrip(message) if size else self.roundtrip(b"\n")
                stats.received += 1
                assert rtt is not None
                stats.rtts_ms.append(rtt)
                err = None
            except OperationTimeout as exc:
                rtt, err = None, str(exc)
                if not self.udp:
                    raise
            if report:
                report(i + 1, rtt, err)
            if i + 1 < count and interval > 0:
                time.sleep(interval)
        stats.retries = self.resends
        return stats

    def interactive(self, lines: Iterable[bytes], report: Callable[[bytes, float], None]) -> None:
        """Echo each input line and report it with its round-trip time."""
        for line in lines:
            rtt = self.roundtrip(line)
            report(line, rtt)

    def close(self) -> None:
        tr = self.tracer
        if not self.udp:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                if tr:
                    tr.emit("shutdown", self.sock, detail="SHUT_WR: FIN sent; waiting for the server's FIN")
                self.sock.settimeout(self.timeout)
                while self.sock.recv(65536):
                    pass
                if tr:
                    tr.emit("recv", self.sock, nbytes=0)
            except OSError:
                pass
        if tr:
            tr.emit("close", self.sock)
        self.sock.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
