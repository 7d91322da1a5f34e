"""``splice_to`` on the reactor: one direction of a relay moved by the kernel, socket -> pipe -> socket.

Why this exists: a relay with nothing to show or break (the tap with no fault and no observer)
should cost almost nothing. ``splice(2)`` moves pages between a socket and a pipe without copying
them through user space: a couple of system calls per MiB, Python only reacting to readiness.
It needs both sockets' descriptors and the loop's readiness, so it is a capability of the
reactor's transports (:meth:`socklab.engines._reactor_io.StreamTransport.splice_to`), not
something an app builds from ``get_extra_info("fd")``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socklab.engines._reactor_io import StreamTransport

__all__ = ["SplicePump"]

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = 1031


class SplicePump:
    """Moves what ``src`` receives to ``dst`` until EOF, then passes the FIN on (``dst.write_eof``)."""

    SIZE = 1 << 20
    ROUNDS = 8  # splices per wake-up at most (8 MiB), then the other connections' turn

    def __init__(self, src: StreamTransport, dst: StreamTransport, on_done: Callable[[], None],
                 on_error: Callable[[BaseException], None]) -> None:
        self.src, self.dst, self.on_done, self.on_error = src, dst, on_done, on_error
        self.reactor = src.reactor
        self.src_fd, self.dst_fd = src.fd, dst.fd
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, self.SIZE)  # room for 1 MiB in flight
        self.pending = 0
        self.eof = False
        self.done = False
        self.moved = 0

    def start(self) -> None:
        self.reactor.add_reader(self.src_fd, self._on_readable)

    def _on_readable(self) -> None:
        # Drain per wake-up: while a splice fills most of the pipe the sender is ahead of us, so
        # going round again is cheaper than returning to epoll_wait. Bounded, so one fast
        # connection cannot starve the others. Interest changes only when the destination
        # pushes back (EAGAIN), never per chunk.
        for _ in range(self.ROUNDS):
            if self.pipe_r < 0 or self.done:
                return
            try:
                n = os.splice(self.src_fd, self.pipe_w, self.SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError as exc:
                self.on_error(exc)
                return
            self.src._active = True  # the idle sweep sees the traffic
            if n == 0:
                self.eof = True
                self.reactor.remove_reader(self.src_fd)
            self.pending += n
            self.moved += n
            if not self._flush() or n < self.SIZE // 2:
                return  # blocked, finished, or the socket was (nearly) empty: wait for the poller

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
                self.on_error(exc)
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
        self.dst.write_eof()  # pass the FIN on (the transport's state knows it)
        self.on_done()

    def take_over(self) -> bytes:
        """Leave the zero-copy path: stop, and return the bytes still in the pipe (to be sent on)."""
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
        reactor = self.reactor
        if reactor._readers.get(self.src_fd) == self._on_readable:
            reactor.remove_reader(self.src_fd)
        if reactor._writers.get(self.dst_fd) == self._on_writable:
            reactor.remove_writer(self.dst_fd)
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipe_r = self.pipe_w = -1
