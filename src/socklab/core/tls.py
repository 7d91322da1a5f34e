"""TLS as a protocol layered on a protocol: one implementation for every engine socklab owns.

Why this exists: TLS is a sans-I/O state machine too. ``ssl.SSLObject`` with two
``ssl.MemoryBIO`` buffers takes ciphertext in and hands ciphertext out; it never touches a socket.
:class:`TLSProtocol` sits between an engine's plain transport and the app's protocol: to the
engine it is a Protocol (ciphertext in), to the app it is a Transport (plaintext out). So every
engine gets TLS from this one module - the asyncio and uvloop engines too, on their loop's plain
transport (faster than the loops' own TLS, docs/engines-aio.md) - and the app cannot tell.

Order of events: the handshake runs first; the app's ``connection_made`` comes only once it
succeeded. A failed handshake closes the connection without ever calling the app (and the engine
reports a :class:`~socklab.core.errors.RemoteProtocolError` to the trace); on the client side
``on_failed`` hears why (a :class:`~socklab.core.errors.NetworkError`), so a connect can fail with
the reason instead of waiting for a ``connection_made`` that never comes. On the server side it
is also said in the log - the client knows why it failed, the server's operator should too - at
most one line per 10 s, with a count of the ones in between (a scanner must not flood the log).

Half-close: ``write_eof()`` sends close_notify, then the TCP FIN (the engine transport's own
``write_eof``: after its buffer drained, with its states and EOF rule), and reading goes on until
the peer's close_notify or FIN - TLS 1.3 allows that (RFC 8446 section 6.1) and OpenSSL reads
application data after its close_notify was sent, TLS 1.2 too. ``can_write_eof()`` is the
engine transport's (True on every engine: the asyncio and uvloop engines use this layer too, not
the loops' own TLS, whose ``can_write_eof()`` is False). ``close()`` sends close_notify before the
TCP FIN.

An app that lends its own buffer (a :class:`~socklab.core.protocol.BufferedProtocol`) gets the
plaintext copied into it (``get_buffer``/``buffer_updated``, as many rounds as its buffer needs).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from socklab.core.errors import BrokenError, LocalProtocolError, NetworkError, RemoteProtocolError
from socklab.core.protocol import BufferedProtocol, Protocol
from socklab.core.trace import format_addr
from socklab.core.transport import TimerHandle, Transport

__all__ = ["TLSProtocol"]

_READ_SIZE = 64 * 1024


class _HandshakeFailures:
    """Server-side handshake failures for the log: the first is said, then one line per ``interval``."""

    interval = 10.0

    def __init__(self) -> None:
        self.next_at = 0.0
        self.unsaid = 0

    def failed(self, peer: Any, reason: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.unsaid += 1
            return
        more = f" (and {self.unsaid} more since the last line)" if self.unsaid else ""
        who = format_addr(peer) if peer else "a client"
        logging.getLogger("socklab").warning("socklab: TLS handshake with %s failed: %s%s", who, reason, more)
        self.unsaid = 0
        self.next_at = now + self.interval


_HANDSHAKE_FAILURES = _HandshakeFailures()  # one per process: the log it protects is one too


class TLSProtocol(Protocol, Transport):
    """Wrap ``app`` in TLS over whatever transport the engine provides.

    Args:
        app: the application's protocol; it sees plaintext.
        context: a server or client ``ssl.SSLContext``.
        server_side: True on the accepting side.
        server_hostname: the name to verify (client side).
        on_failed: called once, instead of any app callback, when the connection ends before the
            handshake completed: with a ``NetworkError`` saying why (a connect's ``on_error``).
    """

    def __init__(self, app: Protocol, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None,
                 on_failed: Callable[[BaseException], None] | None = None) -> None:
        self.app = app
        self._on_failed = on_failed
        self._handshake_error: str | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=None if server_side else server_hostname)
        # The per-record calls go to the C object under ssl.SSLObject (CPython's _ssl._SSLSocket):
        # SSLObject.read/write only forward to it, one Python frame more per record each way. A
        # context's own sslobject_class that changes read or write is called as it is.
        cls: Any = type(self._ssl)
        plain = cls.read is ssl.SSLObject.read and cls.write is ssl.SSLObject.write
        core = (getattr(self._ssl, "_sslobj", None) if plain else None) or self._ssl
        self._ssl_read: Callable[[int], bytes] = core.read
        self._ssl_write: Callable[[Any], int] = core.write
        self._ssl_pending: Callable[[], int] = core.pending
        self._app_data: Callable[[bytes], None] | None = None  # app.data_received, bound once started
        self._server_side = server_side
        self._handshaking = True
        self._app_started = False
        self._closing = False
        self._write_shut = False  # close, abort or write_eof: writes are dropped (close_notify went out)
        self._eof_deferred = False  # write_eof while input is left to decrypt: close_notify follows it
        self._in_eof = False  # the peer's TCP FIN was written to the incoming BIO
        self._lost = False
        self._eof_delivered = False
        self._app_paused = False  # the app called pause_reading(): decrypted data waits in the TLS object
        self._resume_scheduled = False

    # ---- Protocol side (ciphertext from the engine) ----------------------------------------------
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if self._handshaking:
            self._handshake()
        else:
            self._read_plaintext()

    def eof_received(self) -> bool | None:
        self._in.write_eof()
        self._in_eof = True
        if self._handshaking:  # a probe or a client that gave up: close as it did, no RST
            self._fail(RemoteProtocolError("the peer closed the connection during the TLS handshake"), reset=False)
            return None
        self._read_plaintext()
        if self._app_paused:  # plaintext is held for the app: its EOF comes after it, on resume
            return True
        return self._deliver_eof()

    def _deliver_eof(self) -> bool | None:
        """The app hears about the end of the peer's stream once: close_notify or the TCP FIN."""
        if self._eof_delivered or not self._app_started or self._lost:
            return True if self._eof_delivered else None
        self._eof_delivered = True
        return self.app.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        if self._app_started:
            self._app_started = False
            self.app.connection_lost(exc)
        elif self._handshaking and self._on_failed is not None:
            failed, self._on_failed = self._on_failed, None
            peer = self.transport.get_extra_info("peername")
            who = f" with {format_addr(peer)}" if peer else ""
            if self._handshake_error is not None:
                failed(NetworkError(f"TLS handshake{who} failed: {self._handshake_error}"))
            else:
                failed(BrokenError(f"the connection{who} ended during the TLS handshake"
                                   + (f": {exc}" if exc is not None else "")))

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    def shutdown_requested(self) -> None:
        if self._app_started:
            self.app.shutdown_requested()
        else:
            self.transport.close()

    # ---- the TLS machine -------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._out.pending:
            self.transport.write(self._out.read())

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._flush()
            reason = str(getattr(exc, "reason", None) or exc)
            self._handshake_error = str(exc)
            if self._server_side:
                _HANDSHAKE_FAILURES.failed(self.transport.get_extra_info("peername"), reason)
            self._fail(RemoteProtocolError(f"TLS handshake failed: {reason}"))
            return
        self._flush()
        if self._lost:  # the handshake's last flight (a session ticket) met a reset: the app never hears
            return
        self._handshaking = False
        self._app_started = True
        self.app.connection_made(self)
        # Bound once, after connection_made (where an echo makes it transport.write), as the
        # engines do: through an access-log wrapper it is otherwise a __getattr__ per record.
        self._app_data = self._into_app_buffer if isinstance(self.app, BufferedProtocol) else self.app.data_received
        self._read_plaintext()

    def _into_app_buffer(self, data: bytes) -> None:
        app = cast(BufferedProtocol, self.app)
        view = memoryview(data)
        while view and not self._lost:
            buf = memoryview(app.get_buffer(len(view)))
            n = min(len(buf), len(view))
            if n == 0:
                raise LocalProtocolError(f"{type(self.app).__name__}.get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            app.buffer_updated(n)
            view = view[n:]

    def _read_plaintext(self) -> None:
        # Stops while the app is paused: the rest stays decrypted-or-not in the TLS object (the
        # engine stopped reading too, so that is at most one ciphertext chunk) until resume_reading.
        read, incoming, pending = self._ssl_read, self._in, self._ssl_pending
        deliver = self._app_data or self.app.data_received
        while not self._lost and not self._app_paused:
            try:
                chunk = read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or a TCP FIN without one
                chunk = b""
            except ssl.SSLError as exc:
                self._bad_record(exc)
                return
            if not chunk:  # the peer sent close_notify (read() returns b""): its stream ended
                if self._eof_deferred:
                    self._send_eof()
                self._flush()
                if not self._eof_delivered and not self._deliver_eof():
                    self.close()
                return
            deliver(chunk)
            # Read again only if something is left: ciphertext, decrypted bytes, or the peer's
            # EOF to report. Otherwise the read would just raise SSLWantReadError - an exception
            # with a formatted message built in C, on every record.
            if not incoming.pending and not pending() and not incoming.eof:
                break
        if self._eof_deferred and not incoming.pending and not pending():
            self._send_eof()
        self._flush()

    def _bad_record(self, exc: ssl.SSLError) -> None:
        """A record that did not decrypt or authenticate: the connection is reset."""
        self._fail(RemoteProtocolError(f"TLS error: {getattr(exc, 'reason', None) or exc}"))

    def _fail(self, exc: BaseException, reset: bool = True) -> None:
        tracer = self.transport.get_extra_info("tracer")
        if tracer:
            tracer.note(str(exc))
        abort_with = getattr(self.transport, "abort_with", None)
        if abort_with is not None:
            abort_with(exc, reset)
        elif reset:
            self.transport.abort()
        else:
            self.transport.close()

    # ---- Transport side (plaintext from the app) -------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_shut or self._lost or not data:
            return
        n = self._ssl_write(data)  # all of it: SSLObject has no partial writes (ENABLE_PARTIAL_WRITE off)
        if n < len(data):
            view = memoryview(data).cast("B")[n:]
            while view:
                view = view[self._ssl_write(view):]
        out = self._out
        if out.pending:
            self.transport.write(out.read())

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        """Half-close: close_notify, then the FIN; the peer is still read (its close_notify or FIN ends it).

        Later writes are dropped, as after the engine transport's own ``write_eof``.
        """
        if self._write_shut or self._lost:
            return
        if not self.transport.can_write_eof():
            raise LocalProtocolError("this connection cannot half-close (its transport's can_write_eof() is False)")
        self._write_shut = True
        if self._ssl_pending() or (self._in_eof and self._in.pending):
            # Records are left to decrypt (the app half-closes from data_received, or paused): the
            # close_notify goes out once they are read (_read_plaintext), or SSL_shutdown would
            # read them itself and fail (application data after close_notify).
            self._eof_deferred = True
            return
        self._send_eof()

    def _send_eof(self) -> None:
        self._eof_deferred = False
        # SSLObject.unwrap() calls SSL_shutdown twice: the first writes close_notify to the outgoing
        # BIO, the second waits for the peer's (SSLWantReadError: expected, only ours is wanted
        # here). That second call would consume ciphertext still unread and fail on application
        # data, so the unread input is held aside meanwhile and given back.
        held = self._in.read() if self._in.pending and not self._in_eof else b""
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass
        if held:
            self._in.write(held)
        self._flush()
        self.transport.write_eof()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = self._write_shut = True
        if not self._handshaking and not self._lost:
            try:
                self._ssl.unwrap()  # queues close_notify
            except ssl.SSLError:
                pass
            self._flush()
        self.transport.close()

    def abort(self) -> None:
        self._closing = self._write_shut = True
        self.transport.abort()

    def abort_with(self, exc: BaseException | None, reset: bool = True) -> None:
        self._closing = self._write_shut = True
        abort_with = getattr(self.transport, "abort_with", None)
        if abort_with is not None:
            abort_with(exc, reset)
        else:
            self.transport.abort()

    def is_closing(self) -> bool:
        return self._closing or self.transport.is_closing()

    def pause_reading(self) -> None:
        self._app_paused = True
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._app_paused:
            return
        self._app_paused = False
        self.transport.resume_reading()
        if not self._resume_scheduled and not self._handshaking:
            # Held plaintext (and a held EOF) goes to the app from the engine, not from inside the
            # app's own resume_reading() call.
            self._resume_scheduled = True
            self.transport.call_later(0, self._resumed)

    def _resumed(self) -> None:
        self._resume_scheduled = False
        if not self._app_paused and not self._lost and not self._closing:
            self._read_plaintext()

    def is_reading(self) -> bool:
        return not self._app_paused and self.transport.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self._out.pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)

    def set_buffer_sizes(self, rcvbuf: int | None = None, sndbuf: int | None = None) -> tuple[int, int] | None:
        # the kernel's buffers hold ciphertext, a little more than the plaintext: sized all the same
        return self.transport.set_buffer_sizes(rcvbuf, sndbuf)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "tls_version":
            return self._ssl.version()
        return self.transport.get_extra_info(name, default)

    def keep_reading_when_full(self) -> bool:
        return self.transport.keep_reading_when_full()  # the ciphertext's transport is the one that reads

    def tcp_state(self) -> str | None:
        return self.transport.tcp_state()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.transport.call_later(delay, callback)
