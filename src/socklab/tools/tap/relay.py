"""The tap's relay: a TCP or UDP proxy on socklab's reactor that injects faults and reports traffic.

Why this exists: to see what an application really sends, and how it copes when the network
misbehaves, put a relay between client and server. This module is the public object,
:class:`Tap`; the relaying itself is in :mod:`.tcp` (with :mod:`.splice`, its zero-copy path) and
:mod:`.udp`; what observers receive is in :mod:`.events`.

Library use (the fault tests of other areas)::

    with Tap(listen=("127.0.0.1", 0), target=("127.0.0.1", port),
             faults=[Fault("limit_data", direction="downstream", bytes=1000)], seed=1) as tap:
        sock = socket.create_connection(("127.0.0.1", tap.port))
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from socklab.core.errors import SocklabError, UsageError
from socklab.core.settings import ServerSettings, setting
from socklab.core.sockets import Endpoint
from socklab.core.trace import Tracer
from socklab.protocols.faults import Fault, FaultSchedule
from socklab.runtime import Server
from socklab.tools.tap.events import DOWNSTREAM, UPSTREAM, ConnInfo, FaultEvent, Observer
from socklab.tools.tap.tcp import _ClientSide, _TcpRelay
from socklab.tools.tap.udp import _UdpFront

__all__ = ["DOWNSTREAM", "UPSTREAM", "ConnInfo", "FaultEvent", "Observer", "Tap", "TapSettings"]


@dataclass
class TapSettings(ServerSettings):
    """The tap's settings: a server's, with no idle timeout (a hung connection is often the point)."""

    idle_timeout: float = setting(0.0, "Close a connection silent for this many seconds (0 = never).")
    max_connections: int = setting(10000, "Connections relayed at once.")
    udp_flow_timeout: float = setting(60.0, "Forget a UDP peer (and its upstream socket) after this many "
                                            "seconds without a datagram.")


# ---- the public object --------------------------------------------------------------------------
def _endpoint(value: Any, what: str) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if isinstance(value, tuple):
        return Endpoint(str(value[0]), int(value[1]))
    if isinstance(value, str):
        from socklab.core.sockets import parse_endpoint

        return parse_endpoint(value)
    raise UsageError(f"bad {what} address {value!r}")


class Tap:
    """A fault-injecting, observing relay from ``listen`` to ``target``.

    Args:
        listen: where to accept clients, ``(host, port)`` (port 0: the kernel picks; see :attr:`port`).
        target: where to relay to, ``(host, port)`` or ``"HOST:PORT"``.
        udp: relay datagrams instead of a stream.
        faults: the faults in force (change them later with :meth:`set_faults`).
        seed: seed of the fault schedule (``None``: random; :attr:`seed` tells which, to replay).
        observers: receivers of traffic and fault events (hexdump, pcap writer, recorder...).
        engine: ``epoll`` (default), ``poll`` or ``select``.
        tracer: the lifecycle trace, or ``None``.
        connect_timeout: seconds to reach the target for each client.
        splice: move the bytes of fault-free, unobserved connections with ``splice(2)`` (zero copy).
        tls_cert, tls_key: terminate TLS from clients with this certificate (PEM): the tap then
            sees, shows, records and breaks the plaintext.
        upstream_tls: speak TLS to the target with this client context (verify it as you would
            the target itself); ``upstream_hostname`` is the name to verify (default: the
            target's host).

    Raises:
        UsageError: bad address or fault; NetworkError subclasses when binding fails.

    Use it as a context manager (``with Tap(...) as tap``), or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, listen: Any = ("127.0.0.1", 0), target: Any = None, *, udp: bool = False,
                 faults: Iterable[Fault] = (), seed: int | None = None,
                 observers: Iterable[Observer] = (), engine: str = "epoll", tracer: Tracer | None = None,
                 connect_timeout: float = 10.0, settings: TapSettings | None = None,
                 splice: bool = True, tls_cert: str | None = None, tls_key: str | None = None,
                 upstream_tls: ssl.SSLContext | None = None, upstream_hostname: str | None = None) -> None:
        if target is None:
            raise UsageError("a tap needs a target (--to HOST:PORT)")
        if engine not in ("epoll", "poll", "select"):
            raise UsageError(f"the tap runs on a reactor engine (epoll, poll, select), not {engine!r}")
        self.listen_at = _endpoint(listen, "listen")
        self.target = _endpoint(target, "target")
        self.target_address: Any = (self.target.host, self.target.port)
        self.udp = udp
        self.schedule = FaultSchedule(faults, seed)
        self.observers: list[Observer] = list(observers)
        self.tracer = tracer
        self.connect_timeout = connect_timeout
        if udp and (tls_cert or upstream_tls):
            raise UsageError("TLS is for TCP relays (there is no TLS over plain UDP)")
        self.upstream_tls = upstream_tls
        self.upstream_hostname = upstream_hostname or (self.target.host if upstream_tls else None)
        # splice(2) moves the kernel's bytes: with TLS on either side those are ciphertext of two
        # different sessions, so every byte must pass through the TLS layers instead.
        self.splice = splice and not tls_cert and upstream_tls is None
        base = settings or TapSettings()
        self.settings: TapSettings = base.replace(host=self.listen_at.host, port=self.listen_at.port,
                                                  engine=engine, tls_cert=tls_cert or base.tls_cert,
                                                  tls_key=tls_key or base.tls_key)
        self.server = Server(self.settings, tracer=tracer, label="tap")
        self.engine: Any = self.server.engine
        self.fault_log: list[FaultEvent] = []
        self.fault_listeners: list[Callable[[FaultEvent], None]] = []
        self.stats: dict[str, int] = collections.defaultdict(int)
        self.relays: dict[int, _TcpRelay] = {}  # open TCP connections, by index (engine thread only)
        self._engine_ident: int | None = None
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.address: Any = None
        self._front: _UdpFront | None = None
        self._started = False
        self._closed = False

    @property
    def seed(self) -> int:
        return self.schedule.seed

    @property
    def faults(self) -> list[Fault]:
        return list(self.schedule.faults)

    def set_faults(self, faults: Iterable[Fault]) -> None:
        """Replace the faults, for new connections and for those open (as toxiproxy does).

        Thread-safe. An open connection meets the new set from its next bytes on (see
        :meth:`_TcpRelay.replan`); data already delayed keeps its time. A connection moved by
        splice(2) leaves the zero-copy path for it (what its pipes hold is sent on first).
        """
        new = list(faults)
        self._on_engine(lambda: self._set_faults(new))

    def _set_faults(self, faults: list[Fault]) -> None:
        self.schedule.set_faults(faults)
        for relay in list(self.relays.values()):
            relay.replan(self.schedule.plan(relay.index))
        if self._front is not None:
            for flow in self._front.flows.values():
                flow.replan()

    def add_fault(self, fault: Fault) -> None:
        """Add ``fault`` (replacing one of the same name); thread-safe."""
        def add() -> None:
            self._set_faults([*(f for f in self.schedule.faults if f.name != fault.name), fault])
        self._on_engine(add)

    def remove_fault(self, name: str) -> bool:
        """Remove the fault named ``name``; True if there was one. Thread-safe."""
        def remove() -> bool:
            before = self.schedule.faults
            self._set_faults([f for f in before if f.name != name])
            return len(before) != len(self.schedule.faults)
        return bool(self._on_engine(remove))

    def _on_engine(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on the relay's thread (at once if this is it, or if the relay is not running)."""
        if not self._started or self._closed or threading.get_ident() == self._engine_ident:
            return func()
        return self.call(func)

    def _note_engine_thread(self) -> None:
        self._engine_ident = threading.get_ident()

    def log_fault(self, conn: ConnInfo, direction: str, kind: str, text: str) -> None:
        event = FaultEvent(time.time(), conn.index, direction, kind, text)
        self.fault_log.append(event)
        self.stats["faults"] += 1
        for obs in self.observers:
            obs.fault(conn, direction, kind, text)
        for listener in self.fault_listeners:
            listener(event)

    def bind(self) -> Tap:
        """Bind the listener now (the port is known after this); :meth:`start` calls it."""
        if self.address is None:
            if self.udp:
                self.address = self.server.listen_udp(self._make_front)
            else:
                self.address = self.server.listen(lambda: _ClientSide(self))
        return self

    def serve_control(self, host: str = "127.0.0.1", port: int = 0) -> Any:
        """Serve the control API (:mod:`socklab.tools.tap.control`) on ``host:port``; returns the address.

        Thread-safe: on a running tap the listener is added on the relay's thread.
        """
        from socklab.tools.tap.control import ControlProtocol

        def bind() -> Any:
            return self.server.listen(lambda: ControlProtocol(self), host=host, port=port, tls=False)
        return self.call(bind) if self._started else bind()

    def _make_front(self) -> _UdpFront:
        self._front = _UdpFront(self)
        return self._front

    def start(self) -> Tap:
        """Bind (if not yet) and run the relay on its own thread; returns once it accepts."""
        self.bind()
        if not self._started:
            self.engine.call_soon_threadsafe(self._note_engine_thread)  # the first thing it runs
            self._started = True
            self.server.start()
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, func: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run ``func`` on the relay's thread and return its result (thread-safe).

        Raises what ``func`` raised; :class:`SocklabError` if the relay's thread did not get to it
        within ``timeout`` seconds (a generous bound: a busy machine delays it, only a stuck relay
        reaches it).
        """
        done = threading.Event()
        box: list[Any] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                box.append(func())
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)
            finally:
                done.set()
        self.engine.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise SocklabError(f"the tap's relay thread did not run the call within {timeout:g} s")
        if failed:
            raise failed[0]
        return box[0]

    def serve_forever(self, on_signal: Callable[[str], None] | None = None,
                      on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (the CLI's main loop); ``on_ready`` once signals are handled."""
        self.bind()
        self.engine.call_soon_threadsafe(self._note_engine_thread)
        self._started = True
        try:
            self.server.serve_forever(on_signal=on_signal, on_ready=on_ready)
        finally:
            self._close_observers()

    def close(self, keep_observers: bool = False) -> None:
        """Stop at once: close the listener and every relayed connection.

        ``keep_observers``: leave the observers open (a proxy disabled through the HTTP API
        starts again later with the same capture file).
        """
        if self._closed:
            return
        self._closed = True
        self.server.shutdown(timeout=0.5)
        if not keep_observers:
            self._close_observers()

    def _close_observers(self) -> None:
        for obs in self.observers:
            with contextlib.suppress(Exception):
                obs.close()

    def __enter__(self) -> Tap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
