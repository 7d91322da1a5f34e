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
  engine owns one), ``engine`` (its name), ``ssl_object`` (TLS only), ``fd``. Apps and tools do
  not take the socket from it to call the kernel themselves: what they need is a capability below.

Capabilities (what apps used to reach under the contract for), each with a fallback where an
engine or TLS cannot do it the fast way:

- ``sendfile(file, offset, count)``: the kernel copies file pages to the socket; fallback: read and
  ``write`` (TLS always falls back: the bytes must be encrypted).
- ``set_cork(on)``: hold partial segments (Linux ``TCP_CORK``); fallback: nothing (returns False).
- ``set_recv_lowat(n)``: wake the reader only once ``n`` bytes are there (``SO_RCVLOWAT``);
  fallback: nothing (returns False; the protocol just gets smaller pieces).
- ``splice_to(other, ...)``: move this connection's bytes to ``other`` inside the kernel
  (``splice(2)``); fallback: ``None`` - relay through ``data_received``/``write`` as usual.
- ``detach()``: hand the socket over (e.g. to a child process) and stop the engine watching it.
- ``tcp_state()``: the kernel's TCP state of the connection (``ESTABLISHED``, ``FIN_WAIT2``...: Linux
  ``TCP_INFO``), for tools that explain it; fallback: ``None``.
- ``set_buffer_sizes(rcvbuf, sndbuf)`` (stream and datagram): grow the kernel's socket buffers
  (``SO_RCVBUF``/``SO_SNDBUF``) and say what it granted; fallback: ``None`` (nothing known).
- ``keep_reading_when_full()``: go on reading the peer while the write buffer is above ``high``
  (a client's, whose server stops reading requests while its answers are not read); fallback:
  False (reading stops above ``high`` as usual).
- the zero-copy echo: a protocol declares ``zero_copy_echo`` (see :mod:`socklab.core.protocol`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import IO, Any
from typing import Protocol as _TypingProtocol

from socklab.core.errors import LocalProtocolError

__all__ = ["DatagramTransport", "SpliceHandle", "TimerHandle", "Transport"]

_CHUNK = 64 * 1024  # the fallback sendfile's read: below glibc's mmap threshold


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

    def set_buffer_sizes(self, rcvbuf: int | None = None, sndbuf: int | None = None) -> tuple[int, int] | None:
        """Grow the socket's receive / send buffers to hold at least ``rcvbuf`` / ``sndbuf`` bytes.

        Sizes are as ``getsockopt`` reports them (Linux doubles what ``setsockopt`` asks for, for
        its bookkeeping, and reports the double); a buffer is never shrunk, ``None`` leaves it as it
        is, and the kernel caps a request at ``net.core.rmem_max`` / ``wmem_max`` without an error.
        A UDP receiver that wants a burst of datagrams queued (a TFTP window) checks what it got.

        Returns:
            ``(rcvbuf, sndbuf)`` the kernel holds now, or ``None`` where the engine has no socket
            to size (this fallback): then nothing is known and nothing changed.
        """
        return None


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
        """False for a transport that cannot half-close (socklab's TLS layer can: close_notify, then FIN)."""
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

    # ---- capabilities (see the module docstring): the fallbacks ------------------------------------
    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        """Send up to ``count`` bytes of ``file`` from ``offset``; returns how many were taken now.

        Where the engine can, the kernel sends them from the page cache (``os.sendfile``) and 0
        means "the socket is full: try again once the write buffer drained". This fallback reads
        at most 64 KiB and ``write``s it (always progress). Raises :class:`EOFError` when the file
        ends before ``offset + count``.
        """
        if count <= 0:
            return 0
        data = _read_at(file, offset, min(count, _CHUNK))
        if not data:
            raise EOFError(f"the file ended at offset {offset}, {count} bytes short")
        self.write(data)
        return len(data)

    def set_cork(self, on: bool) -> bool:
        """Hold (``True``) or release (``False``) partial TCP segments; False when not applied."""
        return False

    def set_recv_lowat(self, nbytes: int) -> bool:
        """Deliver data only once ``nbytes`` are there (``SO_RCVLOWAT``); False when not applied."""
        return False

    def splice_to(self, other: Transport, on_done: Callable[[], None],
                  on_error: Callable[[BaseException], None]) -> SpliceHandle | None:
        """Move everything this connection receives to ``other`` in the kernel, until EOF.

        While it runs neither transport reads or calls its protocol for those bytes; at EOF the
        FIN is passed on and ``on_done()`` called; an error calls ``on_error(exc)``. Returns a
        handle (``take_over()`` stops and returns the bytes in flight; ``close()``), or ``None``
        when this engine or either side (TLS) cannot: relay through the protocols instead.
        """
        return None

    def keep_reading_when_full(self) -> bool:
        """From now on, go on reading the peer while the write buffer is above ``high``.

        ``pause_writing``/``resume_writing`` still come; only the server's rule "stop reading a peer
        that does not read" is lifted. A client needs it: its server stops reading requests while
        its answers are not read, so a client that stopped reading too whenever its requests back
        up would deadlock with it (both sides waiting for the other to read). Returns False where
        the transport cannot (reading then stops above ``high`` as usual).
        """
        return False

    def tcp_state(self) -> str | None:
        """The kernel's TCP state of this connection (``ESTABLISHED``, ``CLOSE_WAIT``...), or ``None``.

        ``None`` where it is unknown: not TCP (a Unix socket), closed, or a platform without
        ``TCP_INFO``. Under TLS it is the state of the TCP connection that carries it.
        """
        return None

    def detach(self) -> Any:  # a socket.socket (not imported: this module stays sans-I/O)
        """Hand over the socket: the engine stops watching it, and ``connection_lost(None)`` follows.

        The caller owns the returned socket (blocking mode) and closes it. Raises
        :class:`~socklab.core.errors.LocalProtocolError` where there is no socket to hand over (TLS).
        """
        raise LocalProtocolError(f"{type(self).__name__} cannot hand over its socket")


class SpliceHandle(_TypingProtocol):
    """What ``splice_to`` returns."""

    moved: int  # bytes moved so far

    def take_over(self) -> bytes:
        """Stop splicing; the bytes still in flight are returned (the caller sends them on)."""
        ...

    def close(self) -> None: ...


def _read_at(file: IO[bytes], offset: int, n: int) -> bytes:
    try:
        return os.pread(file.fileno(), n, offset)
    except (AttributeError, OSError, ValueError):  # not a real file (BytesIO...): seek and read
        file.seek(offset)
        return file.read(n)


class DatagramTransport(BaseTransport):
    """A datagram endpoint as a protocol sees it."""

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (or to the connected peer when ``addr`` is None)."""
        raise NotImplementedError
