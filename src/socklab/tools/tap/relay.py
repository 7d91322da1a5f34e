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
from typing import Any

from socklab.core.errors import SocklabError, UsageError
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint, parse_endpoint
from socklab.core.trace import Tracer
from socklab.protocols.faults import Fault, FaultSchedule
from socklab.runtime import Server
from socklab.runtime.client import ssl_context_for
from socklab.tools.tap.events import DOWNSTREAM, UPSTREAM, ConnInfo, FaultEvent, Observer
from socklab.tools.tap.settings import TapSettings, endpoint_of
from socklab.tools.tap.tcp import _ClientSide, _TcpRelay
from socklab.tools.tap.udp import _UdpFront

__all__ = ["DOWNSTREAM", "UPSTREAM", "ConnInfo", "FaultEvent", "Observer", "Tap", "TapSettings"]


class Tap:
    """A fault-injecting, observing relay from where its settings listen to their ``target``.

    Args:
        settings: what to relay, where, with which faults and TLS (:class:`TapSettings`: the same
            object ``socklab tap run`` builds from its options).
        observers: receivers of traffic and fault events (hexdump, pcap writer, recorder...).
        tracer: the lifecycle trace, or ``None``.
        upstream_tls: speak TLS to the target with this client context instead of the one
            ``to_tls``/``cafile``/``insecure``/``pin`` make (mutual TLS, a pinned CA...).
        **fields: settings fields to change on ``settings`` (or on the defaults), for short library
            use: ``Tap(target=("127.0.0.1", port), faults=[...], seed=1)``. ``listen`` and
            ``target`` take ``(host, port)``, ``"HOST:PORT"`` or an Endpoint. Nothing else
            overrides the settings: the tap reads only ``self.settings``.

    Raises:
        UsageError: bad address, fault or combination; NetworkError subclasses when binding fails.
        TypeError: a keyword that is not a setting.

    Use it as a context manager (``with Tap(...) as tap``), or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, settings: TapSettings | None = None, *, observers: Iterable[Observer] = (),
                 tracer: Tracer | None = None, upstream_tls: ssl.SSLContext | None = None, **fields: Any) -> None:
        if settings is not None and not isinstance(settings, TapSettings):
            raise UsageError(f"Tap() takes a TapSettings, not {type(settings).__name__} (for addresses write "
                             "Tap(listen=..., target=...))")
        s = (settings or TapSettings()).with_fields(**fields) if fields else (settings or TapSettings())
        s.validate()
        if s.target is None:
            raise UsageError("a tap needs a target (--to HOST:PORT)")
        if s.udp and upstream_tls is not None:
            raise UsageError("TLS is for TCP relays (there is no TLS over plain UDP)")
        self.settings: TapSettings = s
        # what the relay modules read, derived once from the settings
        self.listen_at = Endpoint(s.host, s.port)
        self.target = endpoint_of(s.target, "target")
        self.target_address: Any = (self.target.host, self.target.port)
        self.udp = s.udp
        self.connect_timeout = s.connect_timeout
        self.schedule = FaultSchedule(s.faults, s.seed)
        self.observers: list[Observer] = list(observers)
        self.tracer = tracer
        if upstream_tls is None and s.upstream_uses_tls:  # a --pin is checked inside every handshake
            upstream_tls = ssl_context_for(ClientSettings(tls=True, cafile=s.cafile, insecure=s.insecure, pin=s.pin))
        self.upstream_tls = upstream_tls
        self.upstream_hostname = s.to_server_name or (self.target.host if upstream_tls else None)
        # splice(2) moves the kernel's bytes: with TLS on either side those are ciphertext of two
        # different sessions, so every byte must pass through the TLS layers instead.
        self.splice = s.splice and not s.serves_tls and upstream_tls is None
        self.control_address: Any = None
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
        """Bind the listener (and the control port if ``settings.ctl``) now; :meth:`start` calls it."""
        if self.address is None:
            if self.udp:
                self.address = self.server.listen_udp(self._make_front)
            else:
                self.address = self.server.listen(lambda: _ClientSide(self))
            if self.settings.ctl is not None:
                at = parse_endpoint(self.settings.ctl, default_host="127.0.0.1")
                self.control_address = self.serve_control(at.host, at.port)
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
