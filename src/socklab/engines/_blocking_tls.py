"""TLS on the blocking engines: the declared echo answered on the reading thread, outside the engine lock.

Why this exists: the plain stream transport answers an app that declared itself an echo
(:attr:`~socklab.core.protocol.Protocol.zero_copy_echo`, untraced) without taking the engine lock
or calling the app: the reply *is* the message. Under TLS the reply is the message decrypted and
encrypted again, so the same shortcut needs the TLS object - which every other thread reaches
only under the engine lock. :class:`ThreadTLSProtocol` keeps the two apart for that case:

- :meth:`ThreadTLSProtocol.echo` (the reading thread, no engine lock, the socket claimed as the
  plain echo path claims it): the ciphertext goes into the incoming BIO, every whole record is
  decrypted and written back, and the ciphertext to send is returned - one call into ``ssl``
  each way, no Python frame of the app or of :class:`~socklab.core.tls.TLSProtocol`;
- once such a connection exists (``echoing`` was set after the handshake), every other use of the
  TLS object - a write from another thread, ``write_eof``, ``close``, a resumed read on the timer
  thread - holds the engine lock as before and is *exclusive* with :meth:`echo` for the whole
  call, its write to the transport included.

Exclusive without a lock per message (an uncontended ``with lock`` costs about 0.45 us on the VM
the benchmarks run on, 2 % of a TLS round trip): the claim-then-look handshake the stream transport
already uses for its echo. :meth:`echo` sets ``_echo_in``, then looks at ``_others_in`` and declines
if it is set; the other use counts itself into ``_others_in`` first, then looks at ``_echo_in`` and,
if it is set, waits on an event that :meth:`echo` sets on its way out (its section only runs
``ssl`` calls: it never waits for the engine lock the waiting thread holds). Under the GIL each
flag is read and written whole, so one of the two always sees the other.

Order on the wire: a write from another thread encrypts and hands its ciphertext to the transport
inside its exclusive call. If that came first and was queued (the transport sets ``_hold``),
:meth:`echo` sees it and declines: the reading thread takes the ordinary path, behind it. If
:meth:`echo` came first, the other write meets the reading thread's claim on the socket and is
queued behind its send, as with the plain echo.

Anything but application data - the peer's close_notify, a record that fails, a paused or closing
connection - ends the shortcut: :meth:`echo` declines before touching the data, or stops at the
close_notify or the failed record, and :meth:`end_echo` says which under the engine lock (a failed
record is kept for it: after one, the TLS object only reports EOF); the ordinary path
(``data_received`` under the engine lock) goes on from there. The handshake always runs on the
ordinary path.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from socklab.core.protocol import BufferedProtocol, Protocol
from socklab.core.tls import TLSProtocol

if TYPE_CHECKING:
    from socklab.engines._blocking_io import StreamTransport

__all__ = ["ThreadTLSProtocol"]

_READ_SIZE = 64 * 1024


class ThreadTLSProtocol(TLSProtocol):
    """:class:`TLSProtocol` with the declared echo outside the engine lock; see the module docstring."""

    def __init__(self, app: Protocol, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None,
                 on_failed: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(app, context, server_side=server_side, server_hostname=server_hostname,
                         on_failed=on_failed)
        self.echoing = False  # the reading thread may call echo(); cleared by echo() for good
        self._shared = False  # echo() was allowed once: every other use is exclusive with it
        self._echo_in = False  # the reading thread is inside echo()
        self._others_in = 0  # calls from under the engine lock inside the TLS object (nested: a count)
        self._waiting = False  # one of them waits for echo() to leave ...
        self._echo_left = threading.Event()  # ... on this
        self._broken: ssl.SSLError | None = None  # the record that failed in echo(), for end_echo()

    def _handshake(self) -> None:
        super()._handshake()
        if (not self._handshaking and not self._lost and not self._shared
                and getattr(self.app, "zero_copy_echo", False) and not isinstance(self.app, BufferedProtocol)
                and not self.transport.get_extra_info("tracer")):
            self._shared = self.echoing = True
            # From now on every other use of the TLS object is exclusive with echo(): the
            # methods that say so are a subclass's, so an app that is not an echo (never
            # switched) pays no extra frame per write.
            self.__class__ = _SharedTLSProtocol

    # ---- the reading thread, without the engine lock ---------------------------------------------
    def echo(self, data: bytes, transport: StreamTransport) -> bytes | None:
        """``data`` decrypted and encrypted back: the ciphertext to send (may be empty).

        None: nothing was done, give ``data`` to ``data_received`` under the engine lock (output
        is queued, or the app paused or closed). After a close_notify or a failed record
        ``echoing`` is False: what came before it is returned, and :meth:`end_echo` says the rest.
        """
        self._echo_in = True  # claim, then look (see the module docstring)
        try:
            if self._others_in or transport._hold or self._app_paused or self._write_shut or self._lost:
                return None
            incoming = self._in
            incoming.write(data)
            read, write, pending = self._ssl_read, self._ssl_write, self._ssl_pending
            while True:
                try:
                    chunk = read(_READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:  # the peer's close_notify
                    self.echoing = False
                    break
                except ssl.SSLError as exc:  # a record that failed: the TLS object says EOF from now on
                    self._broken = exc
                    self.echoing = False
                    break
                if not chunk:  # close_notify (read() returns b"")
                    self.echoing = False
                    break
                n = write(chunk)  # all of it: SSLObject has no partial writes
                if n != len(chunk):
                    view = memoryview(chunk)[n:]
                    while view:
                        view = view[write(view):]
                if not incoming.pending and not pending():
                    break
            out = self._out
            return out.read() if out.pending else b""
        finally:
            self._echo_in = False
            if self._waiting:
                self._echo_left.set()

    def end_echo(self, data: bytes) -> None:
        """Under the engine lock, after echo() stopped: the failed record resets the connection, a
        close_notify reaches the app (``data_received`` reads it again); later, ``data_received``."""
        broken, self._broken = self._broken, None
        if broken is not None:
            self._bad_record(broken)
        else:
            self.data_received(data)

    # ---- every other use of the TLS object, once echo() may run: exclusive with it ---------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Engine lock held: count in, wait for echo() to leave if it is inside, run, count out."""
        self._others_in += 1
        try:
            if self._echo_in:
                self._waiting = True
                try:
                    while self._echo_in:
                        self._echo_left.wait()
                        self._echo_left.clear()
                finally:
                    self._waiting = False
            yield
        finally:
            self._others_in -= 1


class _SharedTLSProtocol(ThreadTLSProtocol):
    """A :class:`ThreadTLSProtocol` whose echo() may run (its class from the handshake on): every
    other use of the TLS object is exclusive with it (:meth:`ThreadTLSProtocol._exclusive`)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._exclusive():
            TLSProtocol.write(self, data)

    def write_eof(self) -> None:
        with self._exclusive():
            TLSProtocol.write_eof(self)

    def close(self) -> None:
        with self._exclusive():
            TLSProtocol.close(self)

    def _resumed(self) -> None:
        with self._exclusive():
            TLSProtocol._resumed(self)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name not in ("peercert", "cipher", "tls_version"):
            return TLSProtocol.get_extra_info(self, name, default)
        with self._exclusive():
            return TLSProtocol.get_extra_info(self, name, default)
