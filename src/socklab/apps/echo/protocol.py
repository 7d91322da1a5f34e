"""The echo server's protocols: send back every byte (TCP) or every datagram (UDP).

Why this exists: echo is the smallest server that exercises the whole contract - reading,
writing, flow control, half-close and shutdown - so it is the app every engine is tested and
benchmarked with. Stream echo is byte-exact and message-agnostic: it returns bytes as they come,
never waiting for a newline. On EOF (the client's ``write_eof``) it keeps the connection open
until everything was sent back, then closes: the half-close round trip.
"""

from __future__ import annotations

from typing import Any

from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.transport import DatagramTransport, Transport

__all__ = ["EchoDatagramProtocol", "EchoProtocol"]


class EchoProtocol(Protocol):
    """Stream echo: every byte received is written back.

    Its framing is unknown (``framing = None``): the client may send lines or random bytes (ping
    mode), so the trace makes no claim about message boundaries on the server side - the client,
    which knows each message's length, notes when one came back in several recv() calls.
    """

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.write = transport.write  # one attribute lookup less per message on the hot path
        self.tracer = transport.get_extra_info("tracer")
        if not self.tracer and type(self).data_received is EchoProtocol.data_received:
            # Untraced, receiving *is* writing back: declared, so an engine may reply from its
            # receive buffer without calling data_received (socklab.core.protocol.zero_copy_echo);
            # an engine that does call it reaches transport.write directly.
            self.zero_copy_echo = True
            self.data_received = transport.write  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        self.write(data)

    def eof_received(self) -> bool:
        # The client half-closed: send FIN after everything queued has gone out.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()
        return True


class EchoDatagramProtocol(DatagramProtocol):
    """UDP echo: each datagram goes back to its sender (many peers on one socket)."""

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        if (not transport.get_extra_info("tracer")
                and type(self).datagram_received is EchoDatagramProtocol.datagram_received):
            # Untraced, receiving *is* sending back: declared, so an engine may echo each datagram
            # from its receive buffer without calling datagram_received (core.protocol).
            self.zero_copy_echo = True

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)
