"""A server's lifecycle in three phases: start, serve, shut down - the same on every engine.

Why this exists: binding, publishing the real port, running the loop, reacting to Ctrl-C and
SIGTERM, and draining connections gracefully are the same for every app. Apps compose a server
instead of inheriting one (no ``socketserver`` mixins)::

    server = Server(ServerSettings(engine="epoll", port=0))
    server.listen(EchoProtocol)              # bind + listen now; the real port is known
    server.start()                           # the engine runs on its own thread
    print(server.port)
    server.shutdown()                        # graceful: stop accepting, drain, close

- **start**: listeners are bound in the caller's thread, so a bind error raises right there with
  a one-line reason, and port 0 is resolved (``server.addresses``) before anything else runs.
- **serve**: ``serve_forever()`` runs until SIGINT/SIGTERM. A one-thread engine (select, poll,
  epoll, asyncio, uvloop) then runs on the calling thread itself, so the process has one thread:
  a multi-threaded process pays on every system call (glibc's cancellation bookkeeping, and the
  kernel takes a reference on the socket's file for each call when the fd table is shared).
- **shutdown**: stop accepting at once; ask every protocol to finish (``shutdown_requested``);
  wait until the connections end or ``shutdown_timeout`` passes; close the rest. A second signal
  forces an immediate close. A Unix socket file the server bound is removed (only if it is still
  the file it made). (The phases follow uvicorn's server.)

This module is the runtime layer (``socklab.runtime``): it stands on the engines, which never
import it, and ``socklab.core`` knows nothing of it. A server command serves through
:func:`socklab.runtime.serve_until_signalled`, which also registers it for ``socklab ss``.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from socklab.core.errors import SocklabError, UsageError
from socklab.core.settings import ServerSettings
from socklab.core.sockets import (
    Endpoint,
    open_tcp_listener,
    open_udp_socket,
    remove_unix_socket,
    server_ssl_context,
    unix_socket_identity,
)
from socklab.core.trace import Tracer
from socklab.engines import make_engine
from socklab.engines.base import DatagramFactory, Engine, EngineStats, ProtocolFactory

__all__ = ["Server", "bind_datagram"]


class Server:
    """One engine, one or more listeners, one lifecycle.

    Args:
        settings: limits, engine, address and TLS (see :class:`ServerSettings`).
        tracer: lifecycle trace sink, or ``None``.
        label: what ``socklab ss`` shows for this server's sockets (``"echo"``, ``"chat"``...) when
            it is registered without naming the app (:func:`socklab.runtime.register_server`).
    """

    def __init__(self, settings: ServerSettings | None = None, *, tracer: Tracer | None = None,
                 label: str = "server") -> None:
        self.settings = settings if settings is not None else ServerSettings()
        self.settings.validate()
        self.tracer = tracer
        self.label = label
        self.engine: Engine = make_engine(self.settings.engine, self.settings, tracer)
        self.addresses: list[Any] = []
        self._thread: threading.Thread | None = None
        self._foreground = False  # serve_forever runs the engine on the calling (main) thread
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._shutdown_started = False
        self._error: BaseException | None = None
        self._on_stop: list[Callable[[], None]] = []
        self._finish_lock = threading.Lock()
        self._unix_files: list[tuple[str, tuple[int, int] | None]] = []
        self.registration: Any = None  # its entry for `socklab ss` (runtime.registry), once registered
        self.tls_fingerprint: str | None = None  # SHA-256 of the --tls-self-signed certificate, once made
        self._tls_context: ssl.SSLContext | None = None

    # ---- phase 1: start --------------------------------------------------------------------------
    def listen(self, protocol_factory: ProtocolFactory, *, host: str | None = None, port: int | None = None,
               unix: str | None = None, tls: bool = True, ssl_context: ssl.SSLContext | None = None) -> Any:
        """Bind a stream listener now and serve it with ``protocol_factory``; returns the bound address.

        Without arguments it uses the settings' host/port (or unix path) and TLS files.
        ``tls=False`` serves plain TCP even when the settings name a certificate (a local control
        socket); ``ssl_context`` replaces the one built from the settings (e.g. one that also
        requires client certificates).
        """
        s = self.settings
        use_unix = unix if unix is not None else (s.unix if host is None and port is None else None)
        if use_unix is not None and "unix" not in self.engine.info.supports:
            raise UsageError(f"engine {s.engine!r} does not serve Unix sockets")
        sock = open_tcp_listener(host if host is not None else s.host, port if port is not None else s.port,
                                 unix=use_unix, backlog=s.backlog, reuse_port=s.reuse_port, tracer=self.tracer)
        if use_unix is not None:  # removed at shutdown, if it is still this socket's file
            self._unix_files.append((use_unix, unix_socket_identity(use_unix)))
        ctx = ssl_context or (self.tls_context() if tls else None)
        if ctx is not None and "tls" not in self.engine.info.supports:
            sock.close()
            if use_unix is not None:
                remove_unix_socket(*self._unix_files.pop())
            raise UsageError(f"engine {s.engine!r} does not support TLS")
        address = sock.getsockname()
        self.engine.serve_stream(sock, protocol_factory, ctx)
        self.addresses.append(address)
        return address

    def tls_context(self) -> ssl.SSLContext | None:
        """The settings' TLS context, made once for every listener: ``tls_cert`` (and ``tls_key``), or a
        self-signed certificate made now, in memory, for ``tls_self_signed`` (its SHA-256 is then
        :attr:`tls_fingerprint`, which :func:`~socklab.runtime.serve_until_signalled` prints for
        clients to ``--pin``); ``None`` when the settings ask for no TLS.
        """
        s = self.settings
        if self._tls_context is None and s.tls_cert:
            self._tls_context = server_ssl_context(s.tls_cert, s.tls_key)
        elif self._tls_context is None and s.tls_self_signed:
            from socklab.core.selfsigned import self_signed_context

            self._tls_context, cert = self_signed_context()
            self.tls_fingerprint = cert.fingerprint
        return self._tls_context

    def listen_udp(self, protocol_factory: DatagramFactory, *, host: str | None = None,
                   port: int | None = None) -> Any:
        """Bind a UDP socket now and serve it with one protocol instance; returns the bound address."""
        if "udp" not in self.engine.info.supports:
            raise UsageError(f"engine {self.settings.engine!r} does not serve UDP")
        sock = open_udp_socket(host if host is not None else self.settings.host,
                               port if port is not None else self.settings.port,
                               tracer=self.tracer, reuse_port=self.settings.reuse_port)
        address = sock.getsockname()
        self.engine.serve_datagram(sock, protocol_factory)
        self.addresses.append(address)
        return address

    @property
    def port(self) -> int:
        """The first listener's port (the real one when bound to port 0)."""
        for addr in self.addresses:
            if isinstance(addr, tuple):
                return int(addr[1])
        raise UsageError("this server has no IP listener")

    def start(self, timeout: float = 10.0) -> Server:
        """Run the engine on a background thread; returns once it waits for events."""
        if self._thread is not None or self._foreground:
            return self
        self._thread = threading.Thread(target=self._run, name=f"socklab-{self.engine.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SocklabError(f"engine {self.engine.name} did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self, ready: Callable[[], None] | None = None) -> None:
        try:
            self.engine.run(ready=ready or self._ready.set)
        except BaseException as exc:  # reported to whoever waits, never swallowed
            self._error = exc
            self._ready.set()
            raise
        finally:
            self._stopped.set()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the engine (e.g. to broadcast from another thread)."""
        self.engine.call_soon_threadsafe(callback)

    def statistics(self) -> EngineStats:
        s = self.engine.stats
        return EngineStats(connections=s.connections, accepted=s.accepted, refused=s.refused,
                           idle_closed=s.idle_closed, datagrams_in=s.datagrams_in, extra=dict(s.extra))

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` after the engine stopped (close databases, remove files)."""
        self._on_stop.append(callback)

    # ---- phase 2: serve --------------------------------------------------------------------------
    def serve_forever(self, *, handle_signals: bool = True,
                      on_signal: Callable[[str], None] | None = None,
                      on_ready: Callable[[], None] | None = None) -> None:
        """Start (if needed) and serve until SIGINT/SIGTERM; a second signal forces the close.

        Args:
            handle_signals: install SIGINT/SIGTERM handlers (main thread only).
            on_signal: told ``"graceful"`` or ``"force"`` so a CLI can print what happens.
            on_ready: called once the server runs *and* the signal handlers are in place - the
                moment to announce readiness, so a SIGTERM right after it is always graceful.
        """
        main = threading.current_thread() is threading.main_thread()
        # A one-thread engine runs right here, on the main thread: the process stays single-threaded
        # (cheaper system calls, see the module docstring), and the signal handlers below run
        # between two of its callbacks - they only start the shutdown thread or wake the loop.
        self._foreground = (self._thread is None and handle_signals and main
                            and self.engine.one_thread)
        if not self._foreground:
            self.start()
        if handle_signals and main:
            signalled: list[int] = []  # set here, at once: the shutdown thread may not have run yet

            def handler(signum: int, frame: FrameType | None) -> None:
                first = not signalled and not self._shutdown_started
                signalled.append(signum)
                if first:
                    if on_signal:
                        on_signal("graceful")
                    threading.Thread(target=self.shutdown, name="socklab-shutdown", daemon=True).start()
                else:
                    if on_signal:
                        on_signal("force")
                    self._force()
            old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                if self._foreground:
                    def ready() -> None:
                        self._ready.set()
                        if on_ready:
                            on_ready()
                    self._run(ready)
                else:
                    if on_ready:
                        on_ready()
                    while not self._stopped.wait(3600):
                        pass
            finally:
                for sig, h in old.items():
                    signal.signal(sig, h)
        else:
            if on_ready:
                on_ready()
            self._stopped.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._finish()

    # ---- phase 3: shut down ----------------------------------------------------------------------
    def shutdown(self, timeout: float | None = None) -> None:
        """Graceful: stop accepting, let connections finish up to ``timeout`` (default from settings)."""
        if self._thread is None and not self._foreground:
            self._close_unstarted()
            return
        if self._shutdown_started:
            self._stopped.wait(timeout)
            return
        self._shutdown_started = True
        grace = self.settings.shutdown_timeout if timeout is None else timeout
        engine = self.engine
        engine.call_soon_threadsafe(engine.begin_shutdown)
        if not engine.wait_drained(grace):
            engine.call_soon_threadsafe(engine.abort_all)
            engine.wait_drained(1.0)
        engine.stop()
        self._join(5)
        self._finish()

    def _join(self, timeout: float) -> None:
        """Wait for the engine's run() to return (its thread, or serve_forever's own)."""
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._stopped.wait(timeout)

    def _force(self) -> None:
        self._shutdown_started = True
        self.engine.call_soon_threadsafe(self.engine.begin_shutdown)
        self.engine.call_soon_threadsafe(self.engine.abort_all)
        self.engine.stop()

    def close(self) -> None:
        """Shut down at once (no grace period)."""
        self.shutdown(timeout=0)

    def _close_unstarted(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.close_listeners()
        self._finish()

    _finished = False

    def _finish(self) -> None:
        # The signal-driven shutdown thread and serve_forever both get here: the second waits for
        # the first, so on_stop callbacks always complete before serve_forever returns.
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
            self._run_cleanups()

    def _run_cleanups(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.close()
        for path, identity in self._unix_files:
            with contextlib.suppress(OSError):
                remove_unix_socket(path, identity)
        for cb in self._on_stop:
            try:
                cb()
            except Exception as exc:  # a cleanup failure must not hide the others
                print(f"socklab: cleanup failed: {exc}", file=sys.stderr)
        if self.tracer:
            self.tracer.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def bind_datagram(local: Endpoint, protocol_factory: DatagramFactory, *, engine: Engine,
                  tracer: Tracer | None = None) -> Any:
    """Bind a UDP socket at ``local`` and serve it on ``engine`` with one protocol; returns the bound address.

    A server's extra socket for one peer, on the engine that serves its listener: TFTP answers each
    request from a new port of its own address (the transfer ID, RFC 1350 section 4), so its
    listener's protocol calls ``bind_datagram(Endpoint(host, 0), factory, engine=engine)``. The
    socket is bound as a server's (``"::"`` is dual-stack; port 0: the kernel picks) and not
    connected: the protocol answers with ``transport.sendto(data, addr)`` and checks who sent what
    it receives; ``transport.close()`` ends it. Call on the engine's thread (from a protocol's
    callback) or before the engine runs.

    Raises:
        UsageError: ``local`` is a Unix path, or the engine serves no UDP; AddressInUse,
        ResourceExhausted...: the socket could not be made or bound (nothing is left open).
    """
    if local.unix is not None:
        raise UsageError("UDP needs HOST:PORT, not a Unix path")
    if "udp" not in engine.info.supports:
        raise UsageError(f"engine {engine.name!r} does not serve UDP")
    sock = open_udp_socket(local.host, local.port, tracer=tracer)
    try:
        address = sock.getsockname()
        engine.serve_datagram(sock, protocol_factory)
    except BaseException:
        sock.close()
        raise
    return address

