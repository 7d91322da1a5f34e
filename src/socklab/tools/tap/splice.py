"""The tap's zero-copy path: splice(2) moves a fault-free, unobserved connection's bytes.

Why this exists: a relay with nothing to show or break should cost almost nothing. Bytes go
socket -> pipe -> socket inside the kernel; Python only reacts to readiness.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socklab.core.transport import Transport
    from socklab.tools.tap.tcp import _TcpRelay

__all__ = ["_SplicePump"]

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class _SplicePump:
    """One direction of a fault-free, unobserved connection, moved by the kernel: socket -> pipe -> socket.

    ``splice(2)`` moves pages between a socket and a pipe without copying them through user space,
    so a relay with nothing to show or break costs a couple of system calls per MiB. Used only
    when the connection has no fault and the tap has no observer (otherwise the bytes must pass
    through Python to be shown, recorded or delayed).
    """

    SIZE = 1 << 20
    ROUNDS = 8  # splices per wake-up at most (8 MiB), then the other connections' turn

    def __init__(self, relay: _TcpRelay, direction: str, src: Transport, dst: Transport) -> None:
        self.relay, self.direction, self.src, self.dst = relay, direction, src, dst
        self.reactor = relay.tap.engine
        self.src_fd: int = src.get_extra_info("fd")
        self.dst_fd: int = dst.get_extra_info("fd")
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, 1031, self.SIZE)  # F_SETPIPE_SZ: room for 1 MiB in flight
        self.pending = 0
        self.eof = False
        self.done = False
        self.bytes = 0

    def start(self) -> None:
        self.reactor.add_reader(self.src_fd, self._on_readable)

    def _on_readable(self) -> None:
        # Drain per wake-up: while a splice fills most of the pipe the sender is ahead of us, so
        # going round again is cheaper than returning to epoll_wait. Bounded, so one fast
        # connection cannot starve the others on this reactor. Interest is changed only when
        # the destination pushes back (EAGAIN), never per chunk.
        for _ in range(self.ROUNDS):
            if self.pipe_r < 0 or self.done:
                return
            try:
                n = os.splice(self.src_fd, self.pipe_w, self.SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError as exc:
                self.relay.splice_failed(self, exc)
                return
            if n == 0:
                self.eof = True
                self.reactor.remove_reader(self.src_fd)
            self.pending += n
            self.bytes += n
            if not self._flush() or n < self.SIZE // 2:
                return  # blocked, finished, or the socket was (nearly) empty: wait for epoll

    def _flush(self) -> bool:
        """Move the pipe's bytes on; True if it is empty and the source may be read again."""
        while self.pending:
            try:
                n = os.splice(self.pipe_r, self.dst_fd, self.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # the receiver is slow: stop reading the sender until the pipe drains
                self.reactor.remove_reader(self.src_fd)
                self.reactor.add_writer(self.dst_fd, self._on_writable)
                return False
            except OSError as exc:
                self.relay.splice_failed(self, exc)
                return False
            self.pending -= n
        if self.eof:
            self._finish()
            return False
        return True

    def _on_writable(self) -> None:
        if self.pipe_r < 0:
            return
        drained = self._flush()  # if it blocks again, the writer simply stays registered
        if self.pipe_r >= 0 and not self.pending:
            self.reactor.remove_writer(self.dst_fd)
        if drained and not self.done:
            self.reactor.add_reader(self.src_fd, self._on_readable)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self.dst.get_extra_info("socket").shutdown(socket.SHUT_WR)  # pass the FIN on
        for obs in self.relay.tap.observers:
            obs.closed(self.relay.info, self.direction, "fin")
        self.relay.splice_done()

    def take_over(self) -> bytes:
        """Leave the zero-copy path: stop, and return the bytes still in the pipe (to be sent on).

        The caller relays from now on through the transports (a fault was added at run time).
        """
        left = []
        while self.pending > 0 and self.pipe_r >= 0:
            try:
                chunk = os.read(self.pipe_r, self.pending)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.pending -= len(chunk)
            left.append(chunk)
        finished = self.done
        self.close()
        self.done = finished
        return b"".join(left)

    def close(self) -> None:
        """Stop watching the sockets, then free the pipe (its fd numbers are reused at once)."""
        if self.pipe_r < 0:
            return
        self.done = True
        if self.reactor._readers.get(self.src_fd) == self._on_readable:
            self.reactor.remove_reader(self.src_fd)
        if self.reactor._writers.get(self.dst_fd) == self._on_writable:
            self.reactor.remove_writer(self.dst_fd)
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipe_r = self.pipe_w = -1
