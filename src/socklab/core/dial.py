"""Connecting a client to every address a name resolves to (RFC 8305 Happy Eyeballs), once for every engine.

Why this exists: ``localhost`` resolves to ``::1`` and ``127.0.0.1`` on most machines, and a
server often listens on only one of them. A client that tries only the first address fails with
"connection refused" although the server is up; ``socket.create_connection`` tries each address
in turn, browsers race them. The rules - which address when, how the connect timeout is shared,
what the error says when every address failed - are written here once. An engine only supplies
the waiting (:class:`Waiter`: "call me when this fd is writable", "call me in N seconds"): the
reactor itself, an asyncio/uvloop loop, or :func:`connect_blocking`'s own selector for the
blocking engines and :func:`socklab.core.sockets.connect_tcp`.

The rules:

- **Order** (RFC 8305 section 4): the resolver's order (it sorted by RFC 6724), with the address
  families interleaved, starting with the family of the resolver's first address.
- **Attempts** (section 5): a non-blocking ``connect()`` per address. The next address is tried as
  soon as the previous attempt fails, or after :data:`ATTEMPT_DELAY` (250 ms, the RFC's
  "Connection Attempt Delay") while it is still pending - the pending one keeps running. The
  first attempt to connect wins; the others are closed. So an address that drops SYNs costs
  250 ms, not the whole timeout.
- **Budget**: the connect timeout is for the whole dial, not per address. When it runs out every
  pending attempt is abandoned; addresses not started by then are reported as not tried.
- **Source** (``--source``): each attempt binds the source address resolved in its own family
  (:func:`socklab.core.sockets.client_targets`); a bind that fails is one failed attempt.
- **The error** when all fail: one line, with the class and words of the most telling failure - an
  answer from the host or from this system (refused, address in use) before an unreachable
  network, before a timeout; the last among equals - then each address and what happened to it.
  With a single address the line is the plain ``connection refused while connecting to HOST:PORT``.
- **The trace**: every attempt's ``socket``, ``bind``, ``connect`` (EINPROGRESS) and outcome, a note
  when the next address is tried and why, and a ``close`` for every socket the dial closes - a
  refused or failed attempt's, the race's losers, the pending ones at the timeout or a cancel -
  before the next socket may take its fd number: the trace never shows an fd opened twice.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from socklab.core.errors import ConnectTimeout, HostUnreachable, NetworkError, SocklabError, translate_oserror
from socklab.core.sockets import Endpoint, _new_socket, bind_source, client_targets, close_traced
from socklab.core.trace import Tracer, format_addr

__all__ = ["ATTEMPT_DELAY", "Dial", "Target", "Waiter", "connect_blocking", "interleave", "start_dial"]

#: RFC 8305 section 5's recommended "Connection Attempt Delay": how long an attempt runs alone
ATTEMPT_DELAY = 0.25

#: ``(family, address, local)``: one resolved destination and the source to bind first (or None)
Target = tuple[int, Any, Any]


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class Waiter(Protocol):
    """What a dial needs from an engine: a reactor, an asyncio loop, or :class:`_SelectorLoop`."""

    def add_writer(self, fd: int, callback: Callable[[], None]) -> object: ...

    def remove_writer(self, fd: int) -> object: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


def interleave(targets: Sequence[Target]) -> list[Target]:
    """RFC 8305 section 4: alternate the address families, the resolver's first family first.

    Within a family the resolver's order is kept: ``[v6a, v6b, v4a]`` becomes ``[v6a, v4a, v6b]``.
    """
    if not targets:
        return []
    first = [t for t in targets if t[0] == targets[0][0]]
    other = [t for t in targets if t[0] != targets[0][0]]
    mixed = itertools.chain.from_iterable(itertools.zip_longest(first, other))
    return [t for t in mixed if t is not None]


class _Attempt:
    """One address being tried: its socket while pending, then what happened to it."""

    __slots__ = ("addr", "cause", "error", "reason", "sock", "target")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.addr: Any = target[1]
        self.sock: socket.socket | None = None
        self.reason = ""  # "" while pending or after it won; else a few words: "connection refused"
        self.error: SocklabError | None = None
        self.cause: BaseException | None = None


def _rank(err: SocklabError) -> int:
    """How much a failure tells the user: a timeout least, an unreachable network next."""
    if isinstance(err, ConnectTimeout):
        return 0
    return 1 if isinstance(err, HostUnreachable) else 2


class Dial:
    """One client connect over every target, driven by a :class:`Waiter`; call :meth:`start` once.

    Args:
        waiter: the engine's ``add_writer``/``remove_writer``/``call_later``; every callback of the
            dial (and ``on_connected``/``on_failed``) runs where the waiter runs its callbacks.
        targets: :func:`~socklab.core.sockets.client_targets`'s list (tried in :func:`interleave` order).
        timeout: the budget for the whole dial in seconds (``None``: no limit).
        what: the destination as the user wrote it (``localhost:7007``), for the error and the notes.
        on_connected: ``(sock, address)`` - the winner, connected and non-blocking (TCP_NODELAY set
            when ``nodelay``); the dial has let go of it.
        on_failed: ``(error)`` - every address failed, or the budget ran out; a one-line
            :class:`SocklabError` (``ConnectionRefused``, ``ConnectTimeout``...).

    Exactly one of ``on_connected``/``on_failed`` is called, unless :meth:`cancel` came first.
    """

    def __init__(self, waiter: Waiter, targets: Sequence[Target], *, timeout: float | None, what: str,
                 on_connected: Callable[[socket.socket, Any], None],
                 on_failed: Callable[[SocklabError], None], tracer: Tracer | None = None,
                 nodelay: bool = True, attempt_delay: float = ATTEMPT_DELAY) -> None:
        self.waiter, self.timeout, self.what, self.tracer = waiter, timeout, what, tracer
        self.on_connected, self.on_failed = on_connected, on_failed
        self.nodelay, self.attempt_delay = nodelay, attempt_delay
        self._todo: deque[Target] = deque(interleave(targets))
        self._count = len(self._todo)
        self._tried: list[_Attempt] = []
        self._pending: dict[int, _Attempt] = {}
        self._budget: Cancellable | None = None
        self._stagger: Cancellable | None = None
        self.done = False

    # ---- driving ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the first attempt (and the budget's clock); may finish at once."""
        if self.timeout is not None:
            self._budget = self.waiter.call_later(max(0.0, self.timeout), self._out_of_time)
        self._next()

    def cancel(self) -> None:
        """Abandon the dial (the engine is closing): close every pending socket, call nobody."""
        if not self.done:
            self._finish()
            self._drop_pending("the connect is abandoned: the dial was cancelled")

    def _next(self) -> None:
        """Start attempts until one is pending, one connected, or none is left (then give up)."""
        if self._stagger is not None:
            self._stagger.cancel()
            self._stagger = None
        while self._todo and not self.done:
            attempt, state = self._open(self._todo.popleft())
            if state == "failed":
                continue  # failed at once (no route, bind refused): the next one now
            if state == "connected":
                assert attempt.sock is not None
                if _connected_to_itself(attempt.sock):
                    self._itself(attempt)
                    continue
                self._won(attempt)  # at once (a Unix socket)
                return
            if self._todo:
                self._stagger = self.waiter.call_later(self.attempt_delay, self._stagger_fired)
            return
        if not self._pending and not self.done:
            self._give_up()

    def _stagger_fired(self) -> None:
        self._stagger = None
        if self.done or not self._todo:
            return
        if self.tracer:
            self.tracer.note(f"no answer from {self._describe_pending()} within {self.attempt_delay * 1000:g} ms: "
                             f"trying {format_addr(self._todo[0][1])} as well; the first to connect wins "
                             "(Happy Eyeballs, RFC 8305)")
        self._next()

    def _open(self, target: Target) -> tuple[_Attempt, str]:
        """Start one attempt: ``"pending"`` (EINPROGRESS, watched), ``"connected"`` or ``"failed"``."""
        family, addr, local = target
        attempt = _Attempt(target)
        self._tried.append(attempt)
        sock: socket.socket | None = None
        try:
            sock = _new_socket(family, socket.SOCK_STREAM, self.tracer)
            if local is not None:
                bind_source(sock, local, self.tracer)  # closes the socket when it fails
            sock.setblocking(False)
            err = sock.connect_ex(addr)
        except (OSError, SocklabError) as exc:
            if sock is not None:  # (bind_source has closed it, and traced that, when the bind failed)
                why = errno.errorcode.get(exc.errno or 0) if isinstance(exc, OSError) else None
                self._close(sock, addr, f"the attempt failed: {why or exc} - this attempt's socket is closed")
            self._failed(attempt, exc)
            return attempt, "failed"
        attempt.sock = sock
        if err == 0:
            return attempt, "connected"
        if err != errno.EINPROGRESS:  # (a Unix listener's full backlog is EAGAIN: no waiting for it)
            self._trace_connect(sock, addr, f"failed: {os.strerror(err)}")
            self._close_failed(sock, addr, err)
            self._failed(attempt, OSError(err, os.strerror(err)))
            return attempt, "failed"
        if self.tracer:
            self._trace_connect(sock, addr, "EINPROGRESS: SYN sent, waiting for writable"
                                + (f" (address {len(self._tried)} of {self._count})" if self._count > 1 else ""))
        fd = sock.fileno()
        self._pending[fd] = attempt
        self.waiter.add_writer(fd, lambda: self._on_writable(fd))
        return attempt, "pending"

    def _on_writable(self, fd: int) -> None:
        attempt = self._pending.pop(fd, None)
        if attempt is None or attempt.sock is None:  # dropped meanwhile (the fd may be another socket's now)
            return
        self.waiter.remove_writer(fd)
        err = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            if not _connected_to_itself(attempt.sock):
                self._won(attempt)
                return
            self._itself(attempt)
        else:
            self._trace_connect(attempt.sock, attempt.addr, f"failed: {os.strerror(err)}")
            self._close_failed(attempt.sock, attempt.addr, err)
            self._failed(attempt, OSError(err, os.strerror(err)))
        if self.tracer and self._todo:
            self.tracer.note(f"{format_addr(attempt.addr)} failed ({attempt.reason}): trying "
                             f"{format_addr(self._todo[0][1])}, the next address {self.what} resolves to")
        self._next()  # RFC 8305 section 5: a failure starts the next attempt at once

    def _out_of_time(self) -> None:
        self._budget = None
        if self.done:
            return
        for attempt in self._pending.values():
            attempt.reason, attempt.error = "timed out", ConnectTimeout(f"timed out while connecting to {self.what}")
        self._finish()
        self._drop_pending(f"the connect is abandoned: no answer within the {self.timeout:g} s connect timeout")
        self.on_failed(self._error())

    # ---- the ends --------------------------------------------------------------------------------
    def _won(self, attempt: _Attempt) -> None:
        sock = attempt.sock
        assert sock is not None
        self._finish()
        tcp = attempt.target[0] != socket.AF_UNIX
        if self.tracer:
            self._trace_connect(sock, attempt.addr, "three-way handshake done (SYN, SYN-ACK, ACK)" if tcp else "connected")
        if self._pending:
            self._drop_pending(f"lost the race to fd {sock.fileno()}: {format_addr(attempt.addr)} connected first")
        if tcp and self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tracer:
                self.tracer.emit("setsockopt", sock, detail="TCP_NODELAY=1")
        self.on_connected(sock, attempt.addr)

    def _give_up(self) -> None:
        self._finish()
        self.on_failed(self._error())

    def _finish(self) -> None:
        self.done = True
        for timer in (self._budget, self._stagger):
            if timer is not None:
                timer.cancel()
        self._budget = self._stagger = None

    def _drop_pending(self, why: str) -> None:
        """Close every pending attempt's socket; ``why`` is each ``close`` line's detail."""
        for fd, attempt in list(self._pending.items()):
            self.waiter.remove_writer(fd)
            if attempt.sock is not None:
                self._close(attempt.sock, attempt.addr, why)
        self._pending.clear()

    def _close(self, sock: socket.socket, addr: Any, why: str) -> None:
        """Close a socket of the dial's own (not the winner): its fd is free now."""
        close_traced(sock, self.tracer, why, peer=addr)

    def _close_failed(self, sock: socket.socket, addr: Any, err: int) -> None:
        self._close(sock, addr, f"connect failed: {errno.errorcode.get(err, str(err))} - this attempt's socket is closed")

    def _itself(self, attempt: _Attempt) -> None:
        """The attempt connected to its own socket: a failure, as the refusal it stands for.

        Nothing listened on the port, and the socket's own address and port were that very
        address and port - a source port bound before connect() (``--source``), or one the kernel
        picked from the ephemeral range that the destination port lies in. TCP then joins the two
        SYNs (a simultaneous open, RFC 9293 section 3.5) and the socket talks to itself: every
        byte sent comes back, which looks like an echo server.
        """
        sock = attempt.sock
        assert sock is not None
        self._trace_connect(sock, attempt.addr, "connected to itself: nothing listens there, and this socket's "
                                                "own address and port are the same (a TCP simultaneous open)")
        self._close(sock, attempt.addr, "connected to itself - this attempt's socket is closed")
        self._failed(attempt, OSError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)))
        attempt.reason = "connected to itself"
        err = attempt.error
        assert err is not None
        attempt.error = type(err)(f"{err}: the socket connected to itself (its own address and port were "
                                  f"{format_addr(attempt.addr)}, where nothing listens)")
        if isinstance(err, NetworkError) and isinstance(attempt.error, NetworkError):
            attempt.error.errno = err.errno

    def _failed(self, attempt: _Attempt, exc: BaseException) -> None:
        attempt.cause = exc
        attempt.error = translate_oserror(exc, f"connecting to {self.what}")
        if isinstance(exc, OSError) and not isinstance(exc, socket.gaierror) and exc.strerror:
            attempt.reason = exc.strerror.lower()
        else:
            attempt.reason = str(attempt.error)

    def _error(self) -> SocklabError:
        """One line: the most telling failure, then every address and what happened to it."""
        failed = [a for a in self._tried if a.error is not None]
        if not failed:  # a zero budget: nothing even started
            return ConnectTimeout(f"timed out while connecting to {self.what} (no address tried)")
        best = failed[0]
        for attempt in failed[1:]:
            assert attempt.error is not None and best.error is not None
            if _rank(attempt.error) >= _rank(best.error):
                best = attempt
        assert best.error is not None
        if len(self._tried) == 1 and not self._todo:
            return best.error
        if len({a.reason for a in failed}) == 1:  # the same for each: the line already says what
            names = [format_addr(a.addr) for a in failed]
            tried = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        else:
            tried = ", ".join(f"{format_addr(a.addr)}: {a.reason}" for a in failed)
        left = (f"; {len(self._todo)} more not tried within the {self.timeout:g} s connect timeout"
                if self._todo else "")
        err = type(best.error)(f"{best.error} (tried {tried}{left})")
        if isinstance(err, NetworkError) and isinstance(best.error, NetworkError):
            err.errno = best.error.errno
        err.__cause__ = best.cause
        return err

    def _describe_pending(self) -> str:
        return " or ".join(format_addr(a.addr) for a in self._pending.values()) or "the last address"

    def _trace_connect(self, sock: socket.socket, addr: Any, detail: str) -> None:
        if self.tracer:
            self.tracer.emit("connect", sock, peer=addr, detail=detail)


def _connected_to_itself(sock: socket.socket) -> bool:
    """A TCP socket whose peer is its own address and port (see :meth:`Dial._itself`)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return bool(sock.getsockname()[:2] == sock.getpeername()[:2])
    except OSError:  # the peer is gone already: not this case
        return False


class _SelectorLoop:
    """A :class:`Waiter` over a selector, run on the calling thread until the dial is done."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_WRITE, callback)

    def remove_writer(self, fd: int) -> None:
        if fd in self._selector.get_map():
            self._selector.unregister(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(callback)
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), timer))
        return timer

    def run(self, done: Callable[[], bool]) -> None:
        while not done():
            while self._timers and self._timers[0][2].callback is None:
                heapq.heappop(self._timers)
            if not self._timers and not self._selector.get_map():
                raise AssertionError("a dial waits for nothing")  # a bug in Dial: never hang on it
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
            for key, _ in self._selector.select(timeout):
                key.data()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now and not done():
                callback = heapq.heappop(self._timers)[2].callback
                if callback is not None:
                    callback()

    def close(self) -> None:
        self._selector.close()


class _Timer:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


def start_dial(waiter: Waiter, endpoint: Endpoint, *, timeout: float | None,
               on_connected: Callable[[socket.socket, Any], None], on_failed: Callable[[SocklabError], None],
               source: tuple[str, int] | None = None, tracer: Tracer | None = None,
               nodelay: bool = True) -> Dial | None:
    """Resolve ``endpoint`` here (blocking) and start a :class:`Dial` on ``waiter``; the resolution counts
    against ``timeout``. Returns the dial (for :meth:`Dial.cancel`), or ``None`` after ``on_failed(error)``
    when the name (or the source address) did not resolve.
    """
    started = time.monotonic()
    try:
        targets = client_targets(endpoint, socket.SOCK_STREAM, source)
    except SocklabError as exc:
        on_failed(exc)
        return None
    if timeout is not None:
        timeout = max(0.0, timeout - (time.monotonic() - started))
    dial = Dial(waiter, targets, timeout=timeout, what=str(endpoint), tracer=tracer, nodelay=nodelay,
                on_connected=on_connected, on_failed=on_failed)
    dial.start()
    return dial


def connect_blocking(endpoint: Endpoint, *, timeout: float | None, tracer: Tracer | None = None,
                     nodelay: bool = True, source: tuple[str, int] | None = None) -> socket.socket:
    """Dial ``endpoint`` on the calling thread (the blocking engines); returns a connected *blocking* socket.

    Raises:
        ConnectionRefused, ConnectTimeout, HostUnreachable, ResolveError, AddressInUse: one line.
    """
    outcome: list[Any] = []
    loop = _SelectorLoop()
    dial: Dial | None = None
    try:
        dial = start_dial(loop, endpoint, timeout=timeout, source=source, tracer=tracer, nodelay=nodelay,
                          on_connected=lambda sock, addr: outcome.append(sock), on_failed=outcome.append)
        if dial is not None:
            loop.run(lambda: dial.done)
    finally:
        if dial is not None:
            dial.cancel()  # (only does something when interrupted: KeyboardInterrupt)
        loop.close()
    result = outcome[0]
    if isinstance(result, SocklabError):
        raise result
    result.setblocking(True)
    return result  # type: ignore[no-any-return]
