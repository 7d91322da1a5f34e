"""The reactor's connections: accepting, one stream connection, connecting, one UDP endpoint.

Why this exists: :mod:`socklab.engines.reactor` is the loop - pollers, timers, the ready queue -
and this module is what the loop drives, one object per socket, each with the handlers the loop
calls when its socket is ready:

- :class:`_Listener`: ``accept()`` in bursts; on EMFILE it stops watching the listener for a
  moment (no busy loop).
- :class:`StreamTransport`: one non-blocking connection. ``recv`` straight into a bytes object
  (or, for the untraced echo, into the loop's one buffer and straight back out); writes are tried
  at once and only the leftover is buffered; above ``max_buffer`` the peer is no longer read.
- :class:`_Connector`: a client connect - :mod:`socklab.core.dial`'s rules, the reactor's waiting.
- :class:`_DatagramEndpoint`: a UDP socket read up to 64 datagrams per readiness (the declared
  echo answers each from one reused buffer: :mod:`socklab.engines._datagram`).
"""

from __future__ import annotations

import errno
import io
import os
import socket
import ssl
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from socklab.core.dial import start_dial
from socklab.core.protocol import BufferedProtocol, DatagramProtocol, Protocol
from socklab.core.sockets import Endpoint
from socklab.core.trace import format_addr
from socklab.core.transport import Transport
from socklab.engines._datagram import DatagramEndpointBase
from socklab.engines._splice import SplicePump
from socklab.engines._stream import RECV_SIZE, ConnState, Event, StreamCore
from socklab.engines.base import Connection, ProtocolFactory, Timer, socket_extra_info

if TYPE_CHECKING:
    from socklab.engines.reactor import Reactor

__all__ = ["RECV_SIZE", "StreamTransport"]

_SENDFILE_MAX = 1 << 30  # per call (Linux sends at most 0x7ffff000 anyway)
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Listener:
    """Accepts connections on one listening socket."""

    def __init__(self, reactor: Reactor, sock: socket.socket, factory: ProtocolFactory,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.reactor = reactor
        self.sock = sock
        self.factory = factory
        self.ssl_context = ssl_context
        self.fd = sock.fileno()
        self.backoff = 0.05
        self.closed = False
        self.is_tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        sock.setblocking(False)
        reactor.add_reader(self.fd, self._on_accept)

    def _on_accept(self) -> None:
        reactor, tracer = self.reactor, self.reactor.tracer
        for _ in range(64):  # accept a burst per wake-up, then let other sockets run
            if self.closed:  # a protocol closed the listeners from connection_made
                return
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    self._back_off(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client gave up between SYN and accept(): try the next one
                raise
            self.backoff = 0.05
            if tracer:
                tracer.emit("accept", conn, peer=peer, detail=f"new fd from listening fd {self.fd}")
            if not reactor.admit():
                self._refuse(conn, peer)
                continue
            conn.setblocking(False)
            if self.is_tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                protocol = self.factory()
            except Exception:
                conn.close()
                raise
            reactor.start_stream(conn, protocol, peer=peer, ssl_context=self.ssl_context)

    def _refuse(self, conn: socket.socket, peer: Any) -> None:
        reactor = self.reactor
        if reactor.tracer:
            reactor.tracer.note(f"refusing {format_addr(peer)}: max_connections={reactor.settings.max_connections} reached "
                                "(or shutting down)", conn)
        try:
            conn.setblocking(False)
            if not reactor.shutting_down and self.ssl_context is None:  # no plaintext into a TLS stream
                conn.send(reactor.settings.overflow_message)
        except OSError:
            pass
        conn.close()

    def _back_off(self, exc: OSError) -> None:
        """Out of file descriptors: stop accepting for a moment instead of spinning."""
        reactor = self.reactor
        if reactor.tracer:
            reactor.tracer.note(f"accept failed with {errno.errorcode.get(exc.errno or 0, exc.errno)}: out of "
                                f"file descriptors; pausing accept for {self.backoff:.2f} s")
        reactor.stats.extra["accept_backoffs"] = reactor.stats.extra.get("accept_backoffs", 0) + 1
        reactor.remove_reader(self.fd)
        reactor.call_later(self.backoff, self._resume)
        self.backoff = min(self.backoff * 2, 0.4)

    def _resume(self) -> None:
        if not self.closed:
            self.reactor.add_reader(self.fd, self._on_accept)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reactor.remove_reader(self.fd)
        if self.reactor.tracer:
            self.reactor.tracer.emit("close", self.sock, detail="listening socket: no more accepts")
        self.sock.close()
        if self in self.reactor._listeners:
            self.reactor._listeners.remove(self)

    @property
    def sockname(self) -> Any:
        return self.sock.getsockname()


class StreamTransport(StreamCore, Transport, Connection):
    """One non-blocking stream socket driven by the reactor; the rules are :class:`StreamCore`'s."""

    def __init__(self, reactor: Reactor, sock: socket.socket, protocol: Protocol, peer: Any) -> None:
        self.reactor = self.engine = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol: Protocol = protocol
        self.peer = peer
        self.tracer = reactor.tracer
        self.last_activity = reactor.now
        self._view = reactor.recv_view  # the loop's one receive buffer (the echo path)
        self._wbuf = bytearray()
        self._init_core(reactor.settings.max_buffer)
        self._write_closed = False  # the fast-path flag: not OPEN/READ_SHUT any more, writes are dropped
        self._eof_pending = False  # write_eof() with output queued: the FIN follows the flush
        self._reading = False
        # The read handler is chosen once: no per-read test for buffered protocols or tracing.
        if isinstance(protocol, BufferedProtocol):
            self._read_handler: Callable[[], None] = self._on_readable_buffered
        elif self.tracer:
            self._read_handler = self._on_readable_traced
        else:
            self._read_handler = self._on_readable

    # ---- reading ---------------------------------------------------------------------------------
    def start_reading(self) -> None:
        if self._read_handler == self._on_readable and getattr(self.protocol, "zero_copy_echo", False):
            # The protocol declared itself an echo (core.protocol.zero_copy_echo): the read
            # handler replies inline from the loop's buffer - one Python frame per message
            # instead of two. Decided once, after connection_made.
            self._read_handler = self._on_readable_echo
        self._reading_changed()

    def _reading_changed(self) -> None:
        want = self._read_wanted()
        if want and not self._reading:
            self.reactor.add_reader(self.fd, self._read_handler)
        elif not want and self._reading:
            self.reactor.remove_reader(self.fd)
        self._reading = want

    def _on_readable(self) -> None:
        """The hot path: recv() straight into a new bytes object, hand it to the protocol."""
        try:
            # Cheaper than recv_into() plus a copy; 64 KiB stays below glibc's mmap threshold
            # (no mmap/munmap per read, the lesson of docs/benchmarks.md).
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc, "receiving")
            return
        if data:
            self._active = True
            try:
                self.protocol.data_received(data)
            except Exception as exc:
                self._protocol_failed(exc, "data_received")
            return
        self._on_eof()

    def _on_readable_echo(self) -> None:
        """The declared zero-copy echo, untraced: read and send back in one frame.

        Like the plain selectors loop it is measured against, it reads with ``recv_into`` into
        the loop's one buffer and sends from that buffer: no bytes object per message (a fresh
        64 KiB ``recv()`` costs a malloc and a shrinking realloc each time). Only bytes the
        kernel did not take are copied, into the write buffer.
        """
        sock, view = self.sock, self._view
        try:
            n = sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc, "receiving")
            return
        if not n:
            self._on_eof()
            return
        self._active = True
        if self._wbuf or self._write_closed:
            self.write(bytes(view[:n]))  # queued output or a closing transport: write() keeps order and drops
            return
        try:
            sent = sock.send(view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc, "sending")
            return
        if sent != n:
            self._wbuf += view[sent:n]
            self.reactor.add_writer(self.fd, self._on_writable)
            self._check_high_water()

    def _on_readable_traced(self) -> None:
        """The same as :meth:`_on_readable`, with a trace event per recv()."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc, "receiving")
            return
        assert self.tracer is not None
        self.tracer.emit("recv", self.sock, peer=self.peer, nbytes=len(data), requested=RECV_SIZE,
                         notes=self.boundary_notes(data) if data else None)
        if data:
            self._active = True
            try:
                self.protocol.data_received(data)
            except Exception as exc:
                self._protocol_failed(exc, "data_received")
            return
        self._on_eof()

    def _on_readable_buffered(self) -> None:
        """The zero-copy path: the protocol lends its own buffer (BufferedProtocol)."""
        try:
            buf = self.protocol.get_buffer(RECV_SIZE)  # type: ignore[attr-defined]
            n = self.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc, "receiving")
            return
        if self.tracer:
            self.tracer.emit("recv", self.sock, peer=self.peer, nbytes=n, requested=len(buf),
                             notes=self.boundary_notes(memoryview(buf)[:n]) if n else None)
        if n:
            self._active = True
            try:
                self.protocol.buffer_updated(n)  # type: ignore[attr-defined]
            except Exception as exc:
                self._protocol_failed(exc, "buffer_updated")
            return
        self._on_eof()

    def _on_eof(self) -> None:
        both = self._to(Event.PEER_EOF) is ConnState.CLOSING  # our FIN was sent (or queued) already
        self._reading_changed()
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            self._protocol_failed(exc, "eof_received")
            return
        if both or not keep_open:
            self._close_now()

    # ---- writing ---------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_closed or not data:
            return  # writes after close, abort or write_eof are dropped, as in asyncio
        if not self._wbuf:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc, "sending")
                return
            if self.tracer:
                self.tracer.emit("send", self.sock, peer=self.peer, nbytes=n, requested=len(data))
            if n == len(data):
                return
            self._wbuf += memoryview(data)[n:]
            self.reactor.add_writer(self.fd, self._on_writable)
        else:
            self._wbuf += data
        self._check_high_water()

    def _on_writable(self) -> None:
        try:
            n = self.sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc, "sending")
            return
        if self.tracer:
            self.tracer.emit("send", self.sock, peer=self.peer, nbytes=n, requested=len(self._wbuf))
        del self._wbuf[:n]
        if not self._check_low_water() or self._wbuf:
            return
        self.reactor.remove_writer(self.fd)
        if self._eof_pending:
            self._shutdown_write()
        if self._state is ConnState.CLOSING:
            self._finalize(None)

    def write_eof(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if self._wbuf:
            self._eof_pending = True
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        """The FIN, once the buffer drained; when the peer's FIN came already, the connection closes."""
        self._eof_pending = False
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc, "shutting down")
            return
        if self.tracer:
            self.tracer.emit("shutdown", self.sock, peer=self.peer, detail="SHUT_WR: FIN sent, still reading")
        if self._to(Event.WRITE_EOF) is ConnState.CLOSING:
            self._close_now()

    def can_write_eof(self) -> bool:
        return True

    # ---- flow control ----------------------------------------------------------------------------
    def is_reading(self) -> bool:
        return self._reading

    # ---- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        if self._state is ConnState.CLOSING or self._state is ConnState.CLOSED:
            return
        self._close_now()

    def _close_now(self) -> None:
        """In CLOSING: stop reading, drop later writes, finish once the buffer drained."""
        self._to(Event.CLOSE)
        self._write_closed = True
        self._reading_changed()
        if not self._wbuf:
            self.reactor.call_soon(lambda: self._finalize(None))

    def _drop_output(self) -> None:
        self._write_closed = True
        self._wbuf.clear()

    def _let_go(self, how: str) -> None:
        self._write_closed = True
        reactor = self.reactor
        reactor.remove_reader(self.fd)
        reactor.remove_writer(self.fd)
        if self.tracer:
            self.tracer.emit("close", self.sock, peer=self.peer, detail=how or None)
        self.sock.close()

    # ---- capabilities: sendfile and splice (see socklab.core.transport) -----------------------------
    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        """``os.sendfile`` on the non-blocking socket when nothing is queued (else the fallback keeps order)."""
        if self._write_closed:
            return max(count, 0)  # dropped, as write() drops after close
        if self._wbuf or count <= 0:
            return Transport.sendfile(self, file, offset, count)
        try:
            n = os.sendfile(self.fd, file.fileno(), offset, min(count, _SENDFILE_MAX))
        except BlockingIOError:
            n = -1
        except (AttributeError, ValueError, io.UnsupportedOperation):  # not a real file
            return Transport.sendfile(self, file, offset, count)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.ESPIPE, errno.EOPNOTSUPP):
                return Transport.sendfile(self, file, offset, count)
            self._fatal(exc, "sending a file")
            return 0
        if self.tracer:
            self.tracer.emit("sendfile", self.sock, peer=self.peer, nbytes=max(n, 0),
                             requested=min(count, _SENDFILE_MAX),
                             detail=f"from file offset {offset}" + (" - EAGAIN: socket full" if n < 0 else ""))
        if n == 0:
            raise EOFError(f"the file ended at offset {offset}, {count} bytes short")
        return max(n, 0)

    def splice_to(self, other: Transport, on_done: Callable[[], None],
                  on_error: Callable[[BaseException], None]) -> SplicePump | None:
        """Zero copy to another transport of this reactor with ``splice(2)`` (see engines/_splice.py)."""
        if not hasattr(os, "splice") or not isinstance(other, StreamTransport) or other.reactor is not self.reactor \
                or self._state is not ConnState.OPEN or other._write_closed:
            return None
        self.pause_reading()  # the pump reads this socket from now on
        pump = SplicePump(self, other, on_done, on_error)
        pump.start()
        return pump

    # ---- information -----------------------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return socket_extra_info(name, default, sock=self.sock, fd=self.fd, engine=self.reactor.name,
                                 tracer=self.tracer, peer=self.peer)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.reactor.call_later(delay, callback)


class _Connector:
    """A client connect on the reactor: resolve, then :class:`~socklab.core.dial.Dial` over every address.

    The dial's rules (RFC 8305 order and timing, the timeout as one budget, the error naming every
    address) are core's; the reactor lends it ``add_writer``/``call_later``. The winner is adopted
    as a stream (TLS verifies ``server_hostname``, the name - not the address that answered).
    """

    def __init__(self, reactor: Reactor, endpoint: Endpoint, factory: ProtocolFactory,
                 ssl_context: ssl.SSLContext | None, server_hostname: str | None, timeout: float,
                 on_error: Callable[[BaseException], None] | None,
                 source: tuple[str, int] | None = None) -> None:
        self.reactor, self.factory, self.on_error = reactor, factory, on_error
        self.ssl_context, self.server_hostname = ssl_context, server_hostname or endpoint.host
        start_dial(reactor, endpoint, timeout=timeout, source=source, tracer=reactor.tracer,
                   on_connected=self._connected, on_failed=self._fail)

    def _connected(self, sock: socket.socket, addr: Any) -> None:
        self.reactor.start_stream(sock, self.factory(), peer=addr, ssl_context=self.ssl_context,
                                  server_side=False, server_hostname=self.server_hostname, on_error=self._fail)

    def _fail(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        elif self.reactor.tracer:
            self.reactor.tracer.note(f"connect failed: {exc}")


class _DatagramEndpoint(DatagramEndpointBase):
    """A bound UDP socket, non-blocking, read by the loop (up to 64 datagrams per readiness)."""

    engine: Reactor

    def __init__(self, reactor: Reactor, sock: socket.socket, protocol: DatagramProtocol) -> None:
        super().__init__(reactor, sock, protocol)
        self.reactor = reactor  # the name the rest of this module uses
        sock.setblocking(False)
        protocol.connection_made(self)
        # The read handler is chosen once, after connection_made (where an echo declares itself).
        handler = self._read_handler()
        reactor.add_reader(self.fd, handler)

    def _watch_writable(self) -> None:
        self.reactor.add_writer(self.fd, self._on_writable)

    def _unwatch_writable(self) -> None:
        self.reactor.remove_writer(self.fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.reactor.remove_reader(self.fd)
        self.reactor.remove_writer(self.fd)
        if self.tracer:
            self.tracer.emit("close", self.sock)
        self.sock.close()
        if self in self.reactor._endpoints:
            self.reactor._endpoints.remove(self)
        self._closed_now()
