"""What every engine is: the loop-shaped interface, and the policies they all share.

Why this exists: an engine owns sockets and calls protocols. Eight engines implement the same
interface - shaped like an asyncio event loop (``run``, ``stop``, ``call_soon_threadsafe``,
``call_later``, serve a listening socket, open a client connection) - so that apps and the
:class:`~socklab.runtime.Server` never care which one runs. The policies every server needs
are written once here and inherited:

- admission: ``max_connections`` (the excess gets ``overflow_message`` and a close; on a TLS
  listener only the close, since plaintext in a TLS stream reads as a broken handshake);
- the idle timeout: a sweep every second compares each connection's last activity with
  ``idle_timeout`` (one timer for all connections, not one per byte received);
- graceful shutdown: stop accepting, tell every protocol ``shutdown_requested()``, wait for the
  connections to end, then abort what is left;
- statistics: connections now, accepted, refused, bytes in and out.

Thread model: every engine runs its loop on one thread (the Server starts it). Callbacks into
protocols are serialized: reactor and asyncio engines run them on the loop thread; the threaded
engines take ``self.lock`` around each callback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import asyncio

from socklab.core.errors import OperationTimeout
from socklab.core.protocol import BaseProtocol, DatagramProtocol, Protocol
from socklab.core.settings import ServerSettings
from socklab.core.sockets import Endpoint
from socklab.core.trace import BoundaryNotes, Tracer
from socklab.core.transport import TimerHandle

__all__ = ["Connection", "Engine", "EngineInfo", "EngineStats", "ProtocolFactory",
           "Timer", "grow_socket_buffers", "socket_extra_info"]

log = logging.getLogger("socklab")

ProtocolFactory = Callable[[], Protocol]
DatagramFactory = Callable[[], DatagramProtocol]


def _nothing() -> None:
    """What a cancelled timer's callback becomes."""


class Timer:
    """What ``call_later`` returns on socklab's own engines (the reactor and the blocking ones).

    ``cancel()`` releases the callback at once: a cancelled timer stays in its engine's heap
    until its deadline (or until the engine compacts the heap), and a callback kept there would
    keep its protocol - and the whole closed connection - in memory until then. (asyncio's
    ``TimerHandle.cancel`` drops its callback the same way.) ``owner._timer_cancelled()`` lets
    the engine count the dead entries in its heap and compact it.
    """

    __slots__ = ("_owner", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None], owner: Any = None) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._owner = owner

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = _nothing
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._timer_cancelled()

    def popped(self) -> None:
        """The engine took it off its heap (to run it, or dropped it): no more counting."""
        self._owner = None

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"{self.callback!r}"
        return f"<Timer at {self.when:.3f}: {state}>"


@dataclass(frozen=True)
class EngineInfo:
    """What ``socklab engines`` prints about an engine."""

    name: str
    model: str
    concurrent: bool
    supports: frozenset[str]
    choose_when: str
    limits: str = ""


@dataclass
class EngineStats:
    """Counters an engine keeps; ``Server.statistics()`` returns a copy."""

    connections: int = 0
    accepted: int = 0
    refused: int = 0
    idle_closed: int = 0
    datagrams_in: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Connection:
    """Bookkeeping the shared policies need from each engine's connection object.

    Engines' stream transports inherit this. A receive either refreshes ``last_activity`` or,
    cheaper on a hot path, raises ``_active``: the idle sweep turns the flag into a timestamp
    (one clock read per sweep instead of one per message; precision: one sweep interval).
    """

    protocol: BaseProtocol
    last_activity: float = 0.0
    _active: bool = False
    _boundaries: BoundaryNotes | bool | None = False  # False: the protocol's framing not looked up yet

    def boundary_notes(self, data: bytes | bytearray | memoryview) -> list[str] | None:
        """Traced reads only: notes on message boundaries, if the protocol declared its framing."""
        b = self._boundaries
        if b is False:
            protocol = getattr(self, "protocol", None)
            if protocol is None:  # (asyncio: data before the app protocol exists)
                return None
            framing = getattr(protocol, "framing", None)
            b = self._boundaries = BoundaryNotes(framing) if framing is not None else None
        return b.feed(data) if isinstance(b, BoundaryNotes) else None

    def abort_with(self, exc: BaseException | None, reset: bool = True) -> None:
        """Close at once, dropping buffered output, and report ``exc`` to ``connection_lost``.

        ``reset=True`` sends an RST (SO_LINGER 0); ``False`` a normal FIN (used for idle timeouts).
        """
        raise NotImplementedError


class Engine(ABC):
    """An event source that owns sockets and drives protocols.

    Args:
        settings: the server's settings (limits are read from it).
        tracer: where lifecycle events go, or ``None`` for no tracing (zero cost).
    """

    info: ClassVar[EngineInfo]
    #: the whole loop runs on one thread (``Server.serve_forever`` then runs it on the main thread)
    one_thread: ClassVar[bool] = False
    #: ``run_until`` turns the loop on the caller's thread (a blocking client's wait, no engine thread)
    runs_on_caller: ClassVar[bool] = False

    def __init__(self, settings: ServerSettings | None = None, tracer: Tracer | None = None) -> None:
        self.settings = settings if settings is not None else ServerSettings()
        self.tracer = tracer
        self.stats = EngineStats()
        self.connections: set[Connection] = set()
        self.lock = threading.RLock()
        self.shutting_down = False
        self._drained = threading.Event()
        self._sweeper: TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.info.name

    # ---- the loop -----------------------------------------------------------------------------
    @abstractmethod
    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`stop`; calls ``ready()`` once the loop is about to wait for events."""

    @abstractmethod
    def stop(self) -> None:
        """Make :meth:`run` return soon. Thread-safe."""

    def run_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop on the calling thread until ``predicate()``; ``False`` after ``timeout`` s.

        Only where ``runs_on_caller`` (the reactor engines); the others run on a thread of their own.
        """
        raise NotImplementedError(f"the {self.name} engine runs on a thread of its own")

    @abstractmethod
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` on the engine, serialized with protocol callbacks. Thread-safe."""

    @abstractmethod
    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` after ``delay`` seconds. Call from engine callbacks or before run()."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the engine holds (selectors, executors) after run() returned."""

    # ---- sockets ------------------------------------------------------------------------------
    @abstractmethod
    def serve_stream(self, sock: Any, protocol_factory: ProtocolFactory,
                     ssl_context: ssl.SSLContext | None = None) -> Any:
        """Accept connections on the listening ``sock``; returns a handle with ``close()``."""

    @abstractmethod
    def serve_datagram(self, sock: Any, protocol_factory: DatagramFactory) -> Any:
        """Drive one datagram protocol with a bound UDP ``sock``; returns a handle with ``close()``."""

    @abstractmethod
    def connect_stream(self, endpoint: Endpoint, protocol_factory: ProtocolFactory, *,
                       ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                       timeout: float = 10.0,
                       on_error: Callable[[BaseException], None] | None = None,
                       source_address: tuple[str, int] | None = None) -> None:
        """Open a client connection; the protocol's ``connection_made`` follows, or ``on_error(exc)``.

        Every address the name resolves to is tried, RFC 8305 style, and ``timeout`` is the budget
        of the whole connect: the rules are :mod:`socklab.core.dial`'s, the same on every engine.
        ``source_address``: bind this ``(host, port)`` before connecting (netcat's ``-s``/``-p``; host
        ``""`` any address, port 0 the kernel's pick), resolved in the destination's family
        (:func:`socklab.core.sockets.client_targets`).
        """

    # ---- capabilities -------------------------------------------------------------------------
    def start_coroutine(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | None:
        """Run ``coro`` as a task of the engine's own event loop; call on the engine's thread.

        Returns the task (``cancel()``, ``add_done_callback``; its callbacks run on the engine), or
        ``None`` when this engine has no event loop (every engine but asyncio and uvloop): ``coro``
        is not started then, and the caller runs it where it can (a loop of its own). So an app
        with ``async def`` handlers (rpc) runs them on the engine's loop with no thread hop,
        without reaching for the loop itself.
        """
        return None

    # ---- shared policies ----------------------------------------------------------------------
    def report_error(self, exc: BaseException, context: str) -> None:
        """A protocol or callback raised: one line to the ``socklab`` logger, the server goes on.

        An exception escaping a protocol callback is a bug in that protocol; the engine aborts that
        connection (passing the exception to ``connection_lost``) and keeps serving the others.
        Set ``SOCKLAB_DEBUG=1`` (or ``socklab --debug``) for the traceback.
        """
        self.stats.extra["callback_errors"] = self.stats.extra.get("callback_errors", 0) + 1
        log.error("socklab: %s raised %s: %s (the connection is closed; the server goes on)", context,
                  type(exc).__name__, exc, exc_info=exc if os.environ.get("SOCKLAB_DEBUG") == "1" else None)
        if self.tracer:
            self.tracer.note(f"{context} raised {type(exc).__name__}: {exc}")

    def admit(self) -> bool:
        """May one more connection be served? Counts the refusal when not."""
        if self.shutting_down or len(self.connections) >= self.settings.max_connections:
            self.stats.refused += 1
            return False
        self.stats.accepted += 1
        return True

    def connection_opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.stats.connections = len(self.connections)
        if self._sweeper is None and self.settings.idle_timeout > 0:
            self._sweeper = self._start_sweeper()

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.stats.connections = len(self.connections)
        if self.shutting_down and not self.connections:
            self._drained.set()

    def _sweep_interval(self) -> float:
        return min(1.0, max(0.05, self.settings.idle_timeout / 4))

    def _start_sweeper(self) -> TimerHandle:
        """Run ``_sweep_idle`` on the engine every ``_sweep_interval()`` from now on: a timer of
        this engine's loop that re-arms itself (an engine whose timers cost every turn of its
        loop something ticks from elsewhere)."""
        return self.call_later(self._sweep_interval(), self._sweep_tick)

    def _sweep_tick(self) -> None:
        self._sweep_idle()
        self._sweeper = self.call_later(self._sweep_interval(), self._sweep_tick)

    def _sweep_idle(self) -> None:
        limit = self.settings.idle_timeout
        now = time.monotonic()
        for conn in self.connections:
            if conn._active:
                conn._active = False
                conn.last_activity = now
        deadline = now - limit
        for conn in [c for c in self.connections if c.last_activity < deadline]:
            self.stats.idle_closed += 1
            if self.tracer:
                self.tracer.note(f"closing a connection idle for more than {limit:g} s (idle_timeout)")
            conn.abort_with(OperationTimeout(f"idle for more than {limit:g} s (idle_timeout)"), reset=False)

    def begin_shutdown(self) -> None:
        """Stop accepting and ask every protocol to finish. Runs on the engine."""
        self.shutting_down = True
        self.close_listeners()
        for conn in list(self.connections):
            hook = getattr(conn.protocol, "shutdown_requested", None)
            if hook is not None:
                with contextlib.suppress(Exception):
                    hook()
        if not self.connections:
            self._drained.set()

    def abort_all(self) -> None:
        """Close every connection now. Runs on the engine."""
        for conn in list(self.connections):
            conn.abort_with(None)

    def wait_drained(self, timeout: float) -> bool:
        """Block (not on the engine thread) until every connection ended, or ``timeout``."""
        return self._drained.wait(timeout)

    @abstractmethod
    def close_listeners(self) -> None:
        """Stop accepting: close every listening socket this engine serves."""


def socket_extra_info(name: str, default: Any, *, sock: Any, fd: int, engine: str, tracer: Tracer | None,
                      peer: Any = None) -> Any:
    """``get_extra_info`` for transports that own their socket (every engine but asyncio/uvloop).

    Keys: ``peername`` (stream transports), ``sockname``, ``socket``, ``fd``, ``engine``, ``tracer``.
    """
    if name == "peername":
        return default if peer is None else peer
    if name == "sockname":
        try:
            return sock.getsockname()
        except OSError:
            return default
    if name == "socket":
        return sock
    if name == "fd":
        return fd
    if name == "engine":
        return engine
    if name == "tracer":
        return tracer
    return default


def grow_socket_buffers(sock: Any, rcvbuf: int | None, sndbuf: int | None,
                        tracer: Tracer | None = None) -> tuple[int, int] | None:
    """``set_buffer_sizes`` (:mod:`socklab.core.transport`) for every transport that reaches its socket.

    Asks for half of each size (plus one) since Linux doubles it, then for the whole size if the
    kernel reports less (a kernel that does not double); a cap (``rmem_max``) is no error: the
    answer says what was granted. ``None`` when ``sock`` is missing or has no such options.
    """
    if sock is None:
        return None
    try:
        for option, name, want in ((socket.SO_RCVBUF, "SO_RCVBUF", rcvbuf), (socket.SO_SNDBUF, "SO_SNDBUF", sndbuf)):
            if want is None or sock.getsockopt(socket.SOL_SOCKET, option) >= want:
                continue
            for ask in (want // 2 + 1, want):
                with contextlib.suppress(OSError):  # EPERM/ENOBUFS: what we hold is the answer
                    sock.setsockopt(socket.SOL_SOCKET, option, ask)
                got = int(sock.getsockopt(socket.SOL_SOCKET, option))
                if got >= want:
                    break
            if tracer:
                tracer.emit("setsockopt", sock, detail=f"{name}: asked for {want} B, the kernel holds {got} B"
                            + ("" if got >= want else " (capped: net.core.rmem_max / wmem_max)"))
        return (int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)),
                int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)))
    except (OSError, AttributeError, ValueError):  # closed, or a wrapper without the options
        return None

