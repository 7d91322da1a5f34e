"""The Protocol side of socklab's one contract: what your code implements.

Why this exists: an app (echo, chat, HTTP, ...) is written *once* as a Protocol and then runs on
every engine - a blocking loop, a thread per client, a thread pool, select(), poll(), epoll,
asyncio or uvloop. The engine owns the socket and calls these methods; the protocol answers by
calling methods of its :class:`~socklab.core.transport.Transport`. The shape is asyncio's, so a
socklab protocol maps 1:1 onto asyncio and uvloop.

Call order, guaranteed by every engine (as in ``asyncio.protocols``)::

    stream:    connection_made  data_received*  eof_received?  connection_lost
    datagram:  connection_made  (datagram_received | error_received)*  connection_lost

- ``eof_received`` is the one EOF signal: the peer sent FIN (``recv()`` returned 0 bytes). Return
  ``True`` to keep the connection half-open (you may still write), anything else closes it.
- ``connection_lost(exc)`` comes exactly once: ``exc is None`` for a clean close (either side
  closed normally), else a :class:`~socklab.core.errors.SocklabError` saying why (reset, timeout).
- Callbacks of one engine never run concurrently: on the threaded engines they are serialized by
  the engine's lock, so protocol code needs no locks of its own.
- ``shutdown_requested`` may come at any time after ``connection_made``: see its docstring.
- ``pause_writing``/``resume_writing`` tell you the transport's write buffer crossed its high or
  low water mark: stop producing until resumed (the peer is not reading).

This module imports nothing from the socket world; protocols must not either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from socklab.core.transport import DatagramTransport, Transport

__all__ = ["BaseProtocol", "BufferedProtocol", "DatagramProtocol", "Protocol"]

Address = Any  # (host, port) for IP, (host, port, flow, scope) for IPv6, a path for Unix


class BaseProtocol:
    """Callbacks common to stream and datagram protocols. Override what you need."""

    def connection_made(self, transport: Any) -> None:
        """The connection (or datagram endpoint) is ready; keep ``transport`` to talk back."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone. ``exc`` is ``None`` for a clean close, else the reason."""

    def pause_writing(self) -> None:
        """The transport's buffer went over its high-water mark: stop writing for now."""

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark: writing may resume."""

    def shutdown_requested(self) -> None:
        """The server is shutting down gracefully: finish what is in flight, then close.

        socklab's addition to the asyncio shape. The default does nothing: the connection runs
        until the peer closes it or the shutdown deadline passes. An HTTP protocol closes idle
        keep-alive connections at once here; a chat tells its users.
        """


class Protocol(BaseProtocol):
    """A stream (TCP, TLS, Unix) protocol."""

    transport: Transport

    #: How this protocol delimits its messages, declared for the trace: ``"lines"`` (each ends
    #: with LF) or ``"u32-length"`` (a 4-byte big-endian length before each). Under ``--trace``
    #: the engine then notes exactly when one ``recv()`` held several messages or continued one;
    #: ``None`` (unknown: echo, a file, any byte stream) means no notes about message boundaries.
    #: Set it on the class, or on the instance before ``connection_made`` returns.
    framing: str | None = None

    #: A declaration, not a guess: True when ``data_received(data)`` does nothing but write
    #: ``data`` back unchanged (the echo). An untraced engine may then reply straight from its
    #: receive buffer without calling ``data_received`` at all (the zero-copy echo path). Set it on
    #: the instance in ``connection_made`` (or on the class); a subclass that changes
    #: ``data_received`` must leave it False.
    zero_copy_echo: bool = False

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Some bytes arrived. Message boundaries are *not* preserved: frame them yourself."""

    def eof_received(self) -> bool | None:
        """The peer half-closed (sent FIN). Return ``True`` to keep writing, else the transport closes."""
        return None


class BufferedProtocol(Protocol):
    """A stream protocol that lends the engine its own buffer to receive into (zero copies).

    Engines call ``get_buffer(sizehint)`` and then ``buffer_updated(nbytes)`` instead of
    ``data_received``. Use it when bytes are consumed in bulk (file transfer, benchmarks).
    """

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        """Return a writable buffer of at least one byte for the engine to fill."""
        raise NotImplementedError

    def buffer_updated(self, nbytes: int) -> None:
        """The engine wrote ``nbytes`` bytes at the start of the last buffer returned."""
        raise NotImplementedError


class DatagramProtocol(BaseProtocol):
    """A datagram (UDP) protocol: each call carries one whole datagram and its sender."""

    transport: DatagramTransport

    #: A declaration, as :attr:`Protocol.zero_copy_echo`: True when ``datagram_received(data,
    #: addr)`` does nothing but ``transport.sendto(data, addr)`` (the UDP echo). An untraced engine
    #: may then send each datagram back from its receive buffer without calling
    #: ``datagram_received`` (every datagram still goes back, an empty one too). Set it on the
    #: instance in ``connection_made``; a subclass that changes ``datagram_received`` must leave it
    #: False.
    zero_copy_echo: bool = False

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """One datagram arrived from ``addr``."""

    def error_received(self, exc: BaseException) -> None:
        """A send or receive failed (e.g. ICMP port unreachable reported as ECONNREFUSED)."""
