"""What every engine's UDP endpoint shares: delivery, the send queue, errors and shutdown.

Why this exists: a UDP endpoint is one socket and one protocol on every engine. What differs is
only *who waits*: the reactor's loop watches the socket (non-blocking), a blocking engine gives it
a reading thread and lets its flusher finish queued sends. Everything else - a datagram the
kernel would not take right away goes to a bounded queue, an error goes to ``error_received``, a
protocol that raises is reported and never stops the endpoint - is written once, here, so the
engines cannot drift apart on it.
"""

from __future__ import annotations

import collections
from typing import Any

from socklab.core.errors import translate_oserror
from socklab.core.protocol import DatagramProtocol
from socklab.core.transport import DatagramTransport
from socklab.engines.base import Engine, grow_socket_buffers, socket_extra_info

__all__ = ["DatagramEndpointBase"]


class DatagramEndpointBase(DatagramTransport):
    """A bound UDP socket whose datagrams all go to one protocol, with each sender's address.

    Subclasses set how the socket is waited on: :meth:`_watch_writable` / :meth:`_unwatch_writable`
    (queued datagrams to flush) and ``send_flags`` (``MSG_DONTWAIT`` on a blocking socket, so a
    full send buffer queues instead of blocking the caller).
    """

    send_flags = 0

    def __init__(self, engine: Engine, sock: Any, protocol: DatagramProtocol) -> None:
        self.engine, self.sock, self.protocol = engine, sock, protocol
        self.tracer = engine.tracer
        self.fd: int = sock.fileno()
        self._closed = False
        self._pending: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._pending_bytes = 0

    # ---- what a subclass provides -------------------------------------------------------------------
    def _watch_writable(self) -> None:
        raise NotImplementedError

    def _unwatch_writable(self) -> None:
        raise NotImplementedError

    # ---- receiving ---------------------------------------------------------------------------------
    def _deliver(self, data: bytes, addr: Any) -> None:
        """One datagram to the protocol; a protocol that raises is reported, the endpoint goes on."""
        self.engine.stats.datagrams_in += 1
        if self.tracer:
            self.tracer.emit("recvfrom", self.sock, peer=addr, nbytes=len(data))
        try:
            self.protocol.datagram_received(data, addr)
        except Exception as exc:  # one bad datagram must not stop the endpoint
            self.engine.report_error(exc, f"{type(self.protocol).__name__}.datagram_received")

    def _error(self, exc: OSError, action: str) -> None:
        """An OS error (an ICMP error surfacing on a recv, a failed send) to ``error_received``."""
        try:
            self.protocol.error_received(translate_oserror(exc, action))
        except Exception as bug:
            self.engine.report_error(bug, f"{type(self.protocol).__name__}.error_received")

    # ---- sending -----------------------------------------------------------------------------------
    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closed:
            return
        if not self._pending:  # nothing queued: try at once
            try:
                if addr is not None:
                    n = self.sock.sendto(data, self.send_flags, addr)
                else:
                    n = self.sock.send(data, self.send_flags)
                if self.tracer:
                    self.tracer.emit("sendto", self.sock, peer=addr, nbytes=n, requested=len(data))
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._error(exc, "sending a datagram")
                return
        if self._pending_bytes > self.engine.settings.max_buffer:
            if self.tracer:
                self.tracer.note("UDP send buffer full: datagram dropped (UDP gives no delivery guarantee)")
            return
        self._pending.append((bytes(data), addr))
        self._pending_bytes += len(data)
        self._watch_writable()

    def _on_writable(self) -> None:
        """Flush the queue in order until the kernel says wait again (or the endpoint closes)."""
        while self._pending and not self._closed:
            data, addr = self._pending[0]
            try:
                if addr is not None:
                    self.sock.sendto(data, self.send_flags, addr)
                else:
                    self.sock.send(data, self.send_flags)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._error(exc, "sending a datagram")
            self._pending.popleft()
            self._pending_bytes -= len(data)
        self._unwatch_writable()

    # ---- closing -----------------------------------------------------------------------------------
    def _closed_now(self) -> None:
        """After a subclass closed (or began closing) the socket: drop the queue, tell the protocol."""
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self.protocol.connection_lost(None)
        except Exception as bug:
            self.engine.report_error(bug, f"{type(self.protocol).__name__}.connection_lost")

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closed

    # ---- information -------------------------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return socket_extra_info(name, default, sock=self.sock, fd=self.fd, engine=self.engine.name,
                                 tracer=self.tracer, peer=None)

    def call_later(self, delay: float, callback: Any) -> Any:
        return self.engine.call_later(delay, callback)

    def set_buffer_sizes(self, rcvbuf: int | None = None, sndbuf: int | None = None) -> tuple[int, int] | None:
        return None if self._closed else grow_socket_buffers(self.sock, rcvbuf, sndbuf, self.tracer)
