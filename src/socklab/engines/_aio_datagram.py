"""The asyncio and uvloop engines' UDP endpoint: socklab's own, driven by the loop's ``add_reader``.

Why this exists: the loops' datagram transports read one datagram per readiness event - a whole
turn of the loop (a ``select``/``epoll_wait``, the ready queue, a handle) for each - and asyncio's
reads ``recvfrom(256 KiB)`` each time; both drop a zero-length datagram on ``sendto``. A plain
``DatagramProtocol`` on the loop ran at 0.6x a blocking ``recvfrom`` loop (issue 19). Here the
loop only says when the socket is readable; socklab reads up to 64 datagrams per readiness with
the same code as the reactor (:class:`~socklab.engines._datagram.DatagramEndpointBase`): one
behaviour on every engine, empty datagrams included, and the declared echo answered from one
reused buffer. The socket belongs to no loop transport, so these are real system calls and the
trace shows them as such (streams on these engines still trace at the transport level).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from socklab.core.protocol import DatagramProtocol
from socklab.engines._datagram import DatagramEndpointBase

if TYPE_CHECKING:
    from socklab.engines.aio import _AioEngine

__all__ = ["LoopDatagramEndpoint"]


class LoopDatagramEndpoint(DatagramEndpointBase):
    """A bound non-blocking UDP socket read by socklab when the loop says it is readable."""

    engine: _AioEngine

    def __init__(self, engine: _AioEngine, sock: socket.socket, protocol: DatagramProtocol) -> None:
        super().__init__(engine, sock, protocol)
        self.loop = engine.loop
        sock.setblocking(False)

    def start(self) -> None:
        """On the loop's thread: ``connection_made``, then watch the socket (handler chosen once)."""
        self.protocol.connection_made(self)
        if self._closed:
            return
        handler = self._read_handler()
        self.loop.add_reader(self.fd, handler)

    def _watch_writable(self) -> None:
        self.loop.add_writer(self.fd, self._on_writable)

    def _unwatch_writable(self) -> None:
        self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
        if self.tracer:
            self.tracer.emit("close", self.sock)
        self.sock.close()
        if self in self.engine._endpoints:
            self.engine._endpoints.remove(self)
        self._closed_now()
