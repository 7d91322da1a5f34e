"""What every engine's UDP endpoint shares: delivery, the send queue, errors and shutdown.

Why this exists: a UDP endpoint is one socket and one protocol on every engine. What differs is
only *who waits*: the reactor's loop watches the socket (non-blocking), a blocking engine gives it
a reading thread and lets its flusher finish queued sends. Everything else - a datagram the
kernel would not take right away goes to a bounded queue, an error goes to ``error_received``, a
protocol that raises is reported and never stops the endpoint - is written once, here, so the
engines cannot drift apart on it.

The hot paths are here too, shared by the reactor (non-blocking socket) and the reading thread
(blocking socket, ``MSG_DONTWAIT`` after its first read): :meth:`_read_burst` hands a run of
datagrams to the protocol with its callback bound once and the count added once per run, and
:meth:`_echo_burst` is the declared UDP echo (``DatagramProtocol.zero_copy_echo``), untraced:
``recvfrom_into`` one reused buffer and ``sendto`` straight from it, no ``bytes`` and no Python
call per datagram (issue 19: a plain blocking ``recvfrom``/``sendto`` loop is the bar). On Linux
the echo goes further (:meth:`_echo_batches`): one ``recvmmsg`` and one ``sendmmsg`` per batch of
up to 32 datagrams (:mod:`socklab.engines._mmsg`).
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable
from typing import Any

from socklab.core.errors import translate_oserror
from socklab.core.protocol import DatagramProtocol
from socklab.core.transport import DatagramTransport
from socklab.engines._stream import RECV_SIZE
from socklab.engines.base import Engine, grow_socket_buffers, socket_extra_info

__all__ = ["DatagramEndpointBase"]

_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)  # every datagram received comes with an address


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
        self._echo_buf: bytearray | None = None  # the declared echo's receive buffer (_echo_declared)
        self._mmsg: Any = None  # and its batches (engines._mmsg.MmsgEcho), where Linux has them

    # ---- what a subclass provides -------------------------------------------------------------------
    def _watch_writable(self) -> None:
        raise NotImplementedError

    def _unwatch_writable(self) -> None:
        raise NotImplementedError

    # ---- receiving ---------------------------------------------------------------------------------
    def _echo_declared(self) -> bool:
        """After ``connection_made``: take the echo path? The protocol declared ``zero_copy_echo``,
        nothing is traced and the socket is IP (a sender address to answer with every datagram)."""
        if self.tracer or not getattr(self.protocol, "zero_copy_echo", False):
            return False
        if self.sock.family not in _IP_FAMILIES:
            return False
        self._echo_buf = bytearray(RECV_SIZE)  # 64 KiB: any UDP payload, below the mmap threshold
        from socklab.engines import _mmsg  # ctypes, only for an echo

        if _mmsg.AVAILABLE:
            self._mmsg = _mmsg.MmsgEcho(self.fd)
        return True

    def _echo_batches(self, limit: int, recv_flags: int) -> int:
        """The declared echo in batches: ``recvmmsg`` then ``sendmmsg`` (engines._mmsg), up to
        ``limit`` datagrams; without them, or while replies are queued, :meth:`_echo_burst`.

        ``recv_flags``: 0 on a non-blocking socket, ``MSG_WAITFORONE`` on a blocking one (wait
        for the first datagram, take what else is there). Returns how many datagrams came.
        """
        batch = self._mmsg
        if batch is None or self._pending:
            return self._echo_burst(limit, recv_flags)
        count = 0
        while count < limit:
            try:
                got = batch.receive(recv_flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._error(exc, "receiving a datagram")
                break
            if self._closed:  # a blocking receive woken by close()
                break
            count += got
            unsent, error = batch.send_back(got, self.send_flags)
            if unsent:  # the kernel took only some: the rest one by one (queued behind, in order)
                if error is not None:  # the first reply failed: reported and dropped, as any send
                    self._error(error, "sending a datagram")
                    unsent = unsent[1:]
                for data, addr in unsent:
                    self.sendto(data, addr)
                break
            if got < batch.slots:  # the socket is empty
                break
        return count

    def _read_burst(self, limit: int, flags: int) -> int:
        """Up to ``limit`` datagrams already queued to the protocol, untraced; returns how many
        (the caller counts them in the stats). ``flags``: ``MSG_DONTWAIT`` on a blocking socket."""
        recvfrom = self.sock.recvfrom
        received = self.protocol.datagram_received
        count = 0
        while count < limit:
            try:
                data, addr = recvfrom(RECV_SIZE, flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors (port unreachable) surface here
                self._error(exc, "receiving a datagram")
                break
            count += 1
            try:
                received(data, addr)
            except Exception as exc:  # one bad datagram must not stop the endpoint
                self.engine.report_error(exc, f"{type(self.protocol).__name__}.datagram_received")
            if self._closed:
                break
        return count

    def _echo_burst(self, limit: int, flags: int, first: tuple[int, Any] | None = None) -> int:
        """The declared echo: up to ``limit`` datagrams read into one buffer and sent straight back.

        What the protocol would do (``transport.sendto(data, addr)``), without its call or a
        ``bytes`` per datagram: the reply is a view of the buffer, sent before the next read (one
        view per distinct size). ``first``: a datagram already read into the buffer (the reading
        thread's blocking ``recvfrom_into``). Returns how many datagrams were answered or queued.
        """
        if self._pending:  # earlier replies wait for the socket: this burst goes behind them
            return self._echo_queued(limit, flags, first)
        buf = self._echo_buf
        assert buf is not None
        view = memoryview(buf)
        recv_into, send, sflags = self.sock.recvfrom_into, self.sock.sendto, self.send_flags
        if first is None:
            try:
                n, addr = recv_into(buf, 0, flags)
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                self._error(exc, "receiving a datagram")
                return 0
        else:
            n, addr = first
        count, last, out = 0, -1, view
        while True:
            count += 1
            if n != last:
                last, out = n, view[:n]
            try:
                send(out, sflags, addr)
            except (BlockingIOError, InterruptedError):  # the rest of the burst queues behind it
                self._queue(out.tobytes(), addr)
                return count + self._echo_queued(limit - count, flags, None)
            except OSError as exc:
                self._error(exc, "sending a datagram")
                if self._closed:
                    return count
            if count == limit:
                return count
            try:
                n, addr = recv_into(buf, 0, flags)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError as exc:
                self._error(exc, "receiving a datagram")
                return count

    def _echo_queued(self, limit: int, flags: int, first: tuple[int, Any] | None) -> int:
        """The echo while replies are queued: each new one is queued behind them, in order."""
        buf = self._echo_buf
        assert buf is not None
        view = memoryview(buf)
        count = 0
        if first is not None:
            count = 1
            self._queue(view[:first[0]].tobytes(), first[1])
        while count < limit and not self._closed:
            try:
                n, addr = self.sock.recvfrom_into(buf, 0, flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._error(exc, "receiving a datagram")
                break
            count += 1
            self._queue(view[:n].tobytes(), addr)
        return count

    def _read_handler(self) -> Callable[[], None]:
        """The readable callback, chosen once after connection_made (where an echo declares itself)."""
        if self._echo_declared():
            return self._on_readable_echo
        return self._on_readable_traced if self.tracer else self._on_readable

    def _on_readable(self) -> None:
        self.engine.stats.datagrams_in += self._read_burst(64, 0)

    def _on_readable_echo(self) -> None:
        self.engine.stats.datagrams_in += self._echo_batches(64, 0)

    def _on_readable_traced(self) -> None:
        for _ in range(64):
            try:
                data, addr = self.sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors (port unreachable) surface here
                self._error(exc, "receiving a datagram")
                return
            self._deliver(data, addr)
            if self._closed:
                return

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
        self._queue(bytes(data), addr)

    def _queue(self, data: bytes, addr: Any) -> None:
        """A datagram the kernel would not take now: after the queued ones, or dropped above the limit."""
        if self._pending_bytes > self.engine.settings.max_buffer:
            if self.tracer:
                self.tracer.note("UDP send buffer full: datagram dropped (UDP gives no delivery guarantee)")
            return
        self._pending.append((data, addr))
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
