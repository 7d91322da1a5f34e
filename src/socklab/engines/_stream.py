"""The stream-transport rules, written once: connection state, flow control, EOF, close vs abort.

Why this exists: socklab's engines move a stream's bytes in three ways - readiness callbacks on
one thread (the reactor), a thread blocked in ``recv()`` (the blocking engines), or an asyncio or
uvloop event loop that owns the socket and its write buffer (``_aio_stream``) - but the *rules* a
protocol sees are one (``socklab.core.transport``). They live here, in the spirit of Twisted's
``abstract.FileDescriptor`` and asyncio's ``_FlowControlMixin``:

- the connection state is one :class:`ConnState`, and every change goes through
  :meth:`StreamCore._to` and the one table :data:`TRANSITIONS` (as h11 keeps its state table);
- the write buffer's water marks: above ``high`` the protocol gets ``pause_writing`` and the peer
  is no longer read (unless ``keep_reading_when_full``); at or under ``low`` both resume;
- the app's ``pause_reading``, back-pressure, EOF and closing decide together whether the peer
  is read (:meth:`StreamCore._read_wanted`);
- the peer's EOF: ``eof_received`` decides between half-open and close (:meth:`StreamCore._peer_eof`;
  the reactor's and the blocking engines' read paths still spell out the same few lines);
- ``abort`` drops the buffer and closes now (RST unless told otherwise); a fatal error is
  translated once (:func:`~socklab.core.errors.translate_oserror`) and aborts; a protocol
  callback that raises is reported and closes that connection only;
- ``connection_lost`` is called exactly once, after the engine has let go of the socket.

An engine's transport keeps only how bytes move: its read handlers, ``write``, the flush when
the socket is writable, and a few hooks: :meth:`StreamCore._reading_changed` (watch the socket or
not), :meth:`StreamCore._drop_output` (forget queued output), :meth:`StreamCore._let_go` (stop
watching the socket and close it) and, for tracing, :meth:`StreamCore._emit`.

Who holds the output decides who watches the water marks. The reactor and blocking engines queue
it in ``_wbuf`` and call :meth:`StreamCore._check_high_water`/:meth:`StreamCore._check_low_water`
after each change. An asyncio or uvloop transport queues it in the loop (asyncio's own
``_FlowControlMixin``), which calls ``pause_writing``/``resume_writing`` when it crosses the marks:
the bridge passes those calls to :meth:`StreamCore._above_high_water` and
:meth:`StreamCore._below_low_water`, the same rules, and tells the loop of new limits through
:meth:`StreamCore._limits_changed`. That is the one seam between the two kinds of engine.

Fast-path flags: the echo hot paths must not pay for a state lookup per message, so the
transport also keeps one boolean it tests on every write (``_write_closed`` on the reactor,
``_hold`` on the blocking engines), set on the transitions that change it; the asyncio bridge
instead rebinds ``write`` (the loop's own, or a drop once writing has ended).
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
from typing import Any

from socklab.core.errors import LocalProtocolError, translate_oserror
from socklab.core.protocol import Protocol
from socklab.core.trace import Tracer, format_addr, tcp_state
from socklab.engines.base import grow_socket_buffers

__all__ = ["RECV_SIZE", "TRANSITIONS", "ConnState", "ConnStateMachine", "Event", "StreamCore"]

#: The most any socklab read asks the kernel for, on every engine, TCP, UDP and TLS alike:
#: below glibc's 128 KiB mmap threshold, so a fresh ``recv()`` buffer never costs an
#: mmap/munmap pair (docs/benchmarks.md, "the mmap threshold").
RECV_SIZE = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)
_CORK = getattr(socket, "TCP_CORK", 0)  # Linux: hold partial segments until uncorked


class ConnState(enum.Enum):
    """Where one stream connection is. Reading and writing close independently (half-close)."""

    OPEN = "open"  # both directions open
    READ_SHUT = "read-shut"  # the peer's FIN arrived (eof_received); we may still write
    WRITE_SHUT = "write-shut"  # write_eof: our FIN is sent, or queued behind the buffer; still reading
    CLOSING = "closing"  # close(), or both directions finished: flush the buffer, then close
    CLOSED = "closed"  # the socket is closed and connection_lost was called (once)


class Event(enum.Enum):
    PEER_EOF = "peer-eof"
    WRITE_EOF = "write-eof"
    CLOSE = "close"
    LOST = "lost"  # abort, a fatal error, or the end of a close


S, E = ConnState, Event
#: Every legal change of state. An event not listed for a state leaves the state as it is
#: (close() twice, write_eof() while closing, ...): those calls are no-ops, as in asyncio.
TRANSITIONS: dict[tuple[ConnState, Event], ConnState] = {
    (S.OPEN, E.PEER_EOF): S.READ_SHUT,
    (S.OPEN, E.WRITE_EOF): S.WRITE_SHUT,
    (S.OPEN, E.CLOSE): S.CLOSING,
    (S.READ_SHUT, E.WRITE_EOF): S.CLOSING,  # both directions finished
    (S.READ_SHUT, E.CLOSE): S.CLOSING,
    (S.WRITE_SHUT, E.PEER_EOF): S.CLOSING,  # both directions finished
    (S.WRITE_SHUT, E.CLOSE): S.CLOSING,
    (S.OPEN, E.LOST): S.CLOSED,
    (S.READ_SHUT, E.LOST): S.CLOSED,
    (S.WRITE_SHUT, E.LOST): S.CLOSED,
    (S.CLOSING, E.LOST): S.CLOSED,
}
del S, E

_OPEN, _READ_SHUT, _WRITE_SHUT, _CLOSING, _CLOSED = (ConnState.OPEN, ConnState.READ_SHUT, ConnState.WRITE_SHUT,
                                                     ConnState.CLOSING, ConnState.CLOSED)


class ConnStateMachine:
    """A connection's :class:`ConnState`, changed only through :data:`TRANSITIONS`.

    Every stream transport keeps its state this way: :class:`StreamCore` (reactor, blocking) and
    the asyncio/uvloop bridge, whose flow control is the loop's own.
    """

    _state: ConnState = ConnState.OPEN

    def _to(self, event: Event) -> ConnState:
        """Apply ``event`` through :data:`TRANSITIONS`; returns the state now."""
        state = TRANSITIONS.get((self._state, event))
        if state is not None:
            self._state = state
        return self._state


class StreamCore(ConnStateMachine):
    """The rules every socklab stream transport shares; see the module docstring.

    Subclasses set ``sock``, ``peer``, ``tracer``, ``protocol`` and ``engine`` (and ``_wbuf`` when
    the output is queued here) and call :meth:`_init_core` from ``__init__``.
    """

    sock: socket.socket
    peer: Any
    tracer: Tracer | None
    protocol: Protocol
    engine: Any
    _wbuf: bytearray

    def _init_core(self, high: int) -> None:
        self._state = ConnState.OPEN
        self._app_paused = False  # pause_reading()
        self._backpressure = False  # our write buffer is above high water: the peer is not read
        self._protocol_paused = False  # pause_writing() was called, resume_writing() not yet
        self._read_when_full = False  # keep_reading_when_full(): back-pressure does not stop reading
        self._high = high
        self._low = high // 4

    # ---- state -----------------------------------------------------------------------------------
    @property
    def _lost(self) -> bool:
        return self._state is _CLOSED

    @property
    def _closing(self) -> bool:
        return self._state is _CLOSING or self._state is _CLOSED

    @property
    def _eof_received(self) -> bool:
        return self._state is _READ_SHUT

    def _read_wanted(self) -> bool:
        """Should the peer be read now? (The app's pause, back-pressure, EOF and closing all say no.)"""
        return (self._state is _OPEN or self._state is _WRITE_SHUT) and not (self._app_paused or self._backpressure)

    def is_closing(self) -> bool:
        return self._state is _CLOSING or self._state is _CLOSED

    # ---- hooks -----------------------------------------------------------------------------------
    def _reading_changed(self) -> None:
        """Pause, back-pressure or state changed: watch the socket for reading, or stop."""
        raise NotImplementedError

    def _drop_output(self) -> None:
        """Forget queued output (abort, fatal error)."""
        self._wbuf.clear()

    def _let_go(self, how: str) -> None:
        """Stop watching the socket and close it (or have its owning thread close it)."""
        raise NotImplementedError

    def _limits_changed(self) -> None:
        """The water marks changed: a transport whose output is queued elsewhere passes them on."""

    def _emit(self, op: str, **kw: Any) -> None:
        """One trace event about this connection (only called when ``tracer`` is set)."""
        assert self.tracer is not None
        self.tracer.emit(op, self.sock, peer=self.peer, **kw)

    # ---- flow control ----------------------------------------------------------------------------
    def pause_reading(self) -> None:
        self._app_paused = True
        self._reading_changed()

    def resume_reading(self) -> None:
        if self._app_paused:
            self._app_paused = False
            self._reading_changed()

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = high if high is not None else self.engine.settings.max_buffer
        self._low = low if low is not None else self._high // 4
        self._limits_changed()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))  # type: ignore[attr-defined]

    def _check_high_water(self) -> None:
        """After output was queued in ``_wbuf``: above ``high``, :meth:`_above_high_water`."""
        if len(self._wbuf) > self._high and not self._protocol_paused:
            self._above_high_water()

    def _check_low_water(self) -> bool:
        """After ``_wbuf`` was flushed: at or under ``low``, :meth:`_below_low_water`.

        False when the protocol's callback failed (the connection is closed then).
        """
        if self._protocol_paused and len(self._wbuf) <= self._low:
            return self._below_low_water()
        return True

    def _above_high_water(self) -> None:
        """The output passed ``high``: pause the protocol and stop reading the peer."""
        if self._protocol_paused or self._state is _CLOSED:
            return
        self._protocol_paused = True
        if not self._read_when_full:
            self._backpressure = True
            self._reading_changed()
        if self.tracer:
            self._emit("note", detail=f"write buffer {self.get_write_buffer_size()} B > high-water {self._high} B: "
                       "the peer is not reading; pausing the protocol" + ("" if self._read_when_full else
                                                                          " and no longer reading this peer"))
        try:
            self.protocol.pause_writing()
        except Exception as exc:
            self._protocol_failed(exc, "pause_writing")

    def _below_low_water(self) -> bool:
        """The output drained to ``low``: resume the protocol and reading. False if the protocol failed."""
        if not self._protocol_paused or self._state is _CLOSED:
            return True
        self._protocol_paused = False
        self._backpressure = False
        self._reading_changed()
        if self.tracer:
            self._emit("note", detail=f"write buffer {self.get_write_buffer_size()} B <= low-water {self._low} B: "
                       "the peer caught up; resuming the protocol and reading this peer again")
        try:
            self.protocol.resume_writing()
        except Exception as exc:
            self._protocol_failed(exc, "resume_writing")
            return False
        return True

    # ---- the peer's EOF --------------------------------------------------------------------------
    def _peer_eof(self) -> bool:
        """The peer's FIN arrived: tell the protocol. True: stay open (half-open, we may still write).

        False: close now - the protocol did not ask to stay open, or our FIN went first (both
        directions are finished), or its callback raised (the connection is closed already).
        """
        both = self._to(Event.PEER_EOF) is _CLOSING
        self._reading_changed()
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            self._protocol_failed(exc, "eof_received")
            return False
        return bool(keep_open) and not both and self._state is not _CLOSED  # (a write_eof that failed)

    # ---- capabilities (socklab.core.transport): the socket options ------------------------------------
    def set_cork(self, on: bool) -> bool:
        if not _CORK or self.sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1 if on else 0)
        except OSError:
            return False
        return True

    def set_recv_lowat(self, nbytes: int) -> bool:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, nbytes))
        except (OSError, AttributeError):
            return False
        return True

    def set_buffer_sizes(self, rcvbuf: int | None = None, sndbuf: int | None = None) -> tuple[int, int] | None:
        if self._state is _CLOSED:
            return None
        return grow_socket_buffers(self.sock, rcvbuf, sndbuf, self.tracer)

    def keep_reading_when_full(self) -> bool:
        self._read_when_full = True
        if self._backpressure:
            self._backpressure = False
            self._reading_changed()
        return True

    def tcp_state(self) -> str | None:
        return None if self._state is _CLOSED else tcp_state(self.sock)

    def detach(self) -> socket.socket:
        """Hand the connection over as a blocking socket of its own; ``connection_lost(None)`` follows.

        The engine closes only *its* descriptor (a duplicate stays open, so no FIN is sent) after
        sending what was still queued.
        """
        if self._state is _CLOSED:
            raise LocalProtocolError("the connection is closed: there is no socket to hand over")
        sock = self.sock.dup()
        try:
            sock.setblocking(True)
            if self._wbuf:
                sock.sendall(self._wbuf)
        except OSError:
            sock.close()
            raise
        self._drop_output()
        self._finalize(None, how="detached: the socket was handed over")
        return sock

    # ---- ending ----------------------------------------------------------------------------------
    def abort(self) -> None:
        self.abort_with(None)

    def abort_with(self, exc: BaseException | None, reset: bool = True) -> None:
        """Close now, dropping buffered output; ``reset`` sends RST (SO_LINGER 0), else a FIN."""
        if self._state is _CLOSED:
            return
        if reset:
            with contextlib.suppress(OSError, AttributeError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self._drop_output()
        self._finalize(exc, how="abort (SO_LINGER 0: RST)" if reset else str(exc or ""))

    def _protocol_failed(self, exc: BaseException, callback: str) -> None:
        """A protocol callback raised: report it, close this connection, serve the others."""
        self.engine.report_error(exc, f"{type(self.protocol).__name__}.{callback}")
        self._fatal(exc, callback)

    def _fatal(self, exc: BaseException, action: str) -> None:
        if self._state is _CLOSED:
            return
        err = exc if not isinstance(exc, OSError) else translate_oserror(exc, f"{action} ({format_addr(self.peer)})")
        if self.tracer:
            self._emit("error", detail=str(err))
        self._drop_output()
        self._finalize(err)

    def _finalize(self, exc: BaseException | None, how: str = "") -> None:
        """The end, exactly once: let go of the socket, tell the engine, then the protocol."""
        if self._state is _CLOSED:
            return
        self._to(Event.LOST)
        self._let_go(how)
        self.engine.connection_closed(self)
        try:
            self.protocol.connection_lost(exc)
        except Exception as err:
            self.engine.report_error(err, f"{type(self.protocol).__name__}.connection_lost")
