"""The Transport side of the contract: what an engine gives a protocol.

Why this exists: protocols never see a socket. They talk through a transport, whose methods are
the same on every engine (and match asyncio's transports, so the asyncio and uvloop engines can
hand over thin wrappers). Engines subclass these; protocols and tests only use the methods below.

Semantics every engine honours:

- ``write`` never blocks. Engines try to send at once and buffer only the leftover; when the
  buffer passes ``high`` bytes the protocol's ``pause_writing`` is called and, once it drains
  under ``low``, ``resume_writing``. A peer that stops reading therefore stops the *protocol*
  from producing; the engine also stops reading that peer while its buffer is above ``high``
  (``Settings.max_buffer``), so memory per connection stays bounded.
- ``write_eof`` half-closes (``shutdown(SHUT_WR)``) once the buffer has drained.
- ``close`` flushes the buffer then closes; ``abort`` closes now, dropping the buffer (and
  sends RST on TCP). Both are idempotent; ``connection_lost`` follows exactly once.
- ``call_later`` schedules a callback on the engine (the protocol's only clock); it runs under
  the same serialization as the protocol's callbacks.
- ``get_extra_info(name)`` answers at least: ``peername``, ``sockname``, ``socket`` (where the
  engine owns one), ``engine`` (its name), ``ssl_object`` (TLS only), ``fd``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from typing import Protocol as _TypingProtocol

__all__ = ["DatagramTransport", "TimerHandle", "Transport"]


class TimerHandle(_TypingProtocol):
    """What ``call_later`` returns: something you can cancel."""

    def cancel(self) -> None: ...


class BaseTransport:
    """Methods common to stream and datagram transports."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Information about the connection: ``peername``, ``sockname``, ``engine``, ``fd``..."""
        raise NotImplementedError

    def is_closing(self) -> bool:
        """True once ``close`` or ``abort`` was called or the connection was lost."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush what is buffered, then close. ``connection_lost(None)`` follows."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close at once, dropping buffered data (TCP sends RST)."""
        raise NotImplementedError

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` after ``delay`` seconds on the engine, serialized with protocol callbacks."""
        raise NotImplementedError


class Transport(BaseTransport):
    """A stream connection as a protocol sees it."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for sending; never blocks."""
        raise NotImplementedError

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Queue several chunks (one system call where the engine can)."""
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        """Half-close: send FIN after the buffered data. Reading continues."""
        raise NotImplementedError

    def can_write_eof(self) -> bool:
        """False for TLS before 1.3 semantics and other transports that cannot half-close."""
        return True

    def pause_reading(self) -> None:
        """Stop calling ``data_received`` until ``resume_reading``."""
        raise NotImplementedError

    def resume_reading(self) -> None:
        """Undo ``pause_reading``."""
        raise NotImplementedError

    def is_reading(self) -> bool:
        raise NotImplementedError

    def get_write_buffer_size(self) -> int:
        """Bytes accepted by ``write`` but not yet handed to the kernel."""
        raise NotImplementedError

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks that drive ``pause_writing``/``resume_writing``."""
        raise NotImplementedError


class DatagramTransport(BaseTransport):
    """A datagram endpoint as a protocol sees it."""

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (or to the connected peer when ``addr`` is None)."""
        raise NotImplementedError
