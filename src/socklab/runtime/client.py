"""Clients on the same contract as servers: ``connect(endpoint, factory, settings)`` and a blocking wrapper.

Why this exists: a server is a Protocol driven by an engine; a client should be the same thing
(Twisted's ``connectTCP`` and h11's client are the model): the protocol's callbacks come in the
order :mod:`socklab.core.protocol` documents, on any engine, and OS errors are translated once,
on the engines' connect path - never by the app. This module lives in the *runtime* layer
(``core <- engines <- runtime <- apps <- cli``): it uses only the engines' public API
(``make_engine``, ``connect_stream``, ``serve_datagram``, ``call_soon_threadsafe``, ``run``/``stop``).

- :func:`connect` opens a stream (TCP, TLS, Unix) client on an engine that is running (call it on
  the engine's thread, or before ``run``); :func:`open_datagram` the UDP equivalent (a connected
  UDP socket: ``transport.sendto(data)`` goes to the server). Both return a :class:`ClientHandle`.
- :class:`BlockingClient` is for command-line clients: the calling thread connects, calls into
  the engine and waits for the protocol's end, with socklab's own errors (``ConnectionRefused``,
  ``ConnectTimeout``...) raised on the caller. The engine runs on a helper thread of its own, or
  (``background=False``, reactor engines) on the caller's thread while it waits - no second
  thread and no hand-off per message.
- :func:`run_client` is the one-shot form: connect, wait for ``connection_lost``, return the
  protocol (its result is whatever the protocol kept), or raise why the connection failed.
- :func:`loop_engine` is for clients written with ``async``/``await``: an asyncio (or uvloop)
  engine on the caller's running loop, so :func:`connect` on it calls the protocol on that loop,
  with no thread in between.

Example::

    with BlockingClient(ClientSettings(connect_timeout=2)) as client:
        handle = client.connect(parse_endpoint("127.0.0.1:7"), MyProtocol)
        client.call(lambda: handle.transport.write(b"hi\\n"))
        handle.wait_closed(5)
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from socklab.core.errors import (
    ClosedError,
    ConnectionRefused,
    ConnectTimeout,
    OperationTimeout,
    SocklabError,
    UsageError,
)
from socklab.core.protocol import BaseProtocol, DatagramProtocol, Protocol
from socklab.core.settings import ClientSettings, ServerSettings
from socklab.core.sockets import Endpoint, client_ssl_context, udp_client_socket
from socklab.core.trace import Tracer, format_addr
from socklab.engines import Engine, make_engine
from socklab.runtime.caller_loop import CallerLoop

__all__ = ["BlockingClient", "ClientHandle", "connect", "loop_engine", "open_datagram", "run_client",
           "ssl_context_for"]

P = TypeVar("P", bound=BaseProtocol)
T = TypeVar("T")


def _event_wait(event: threading.Event, timeout: float | None) -> bool:
    return event.wait(timeout)


class ClientHandle(Generic[P]):
    """One client connection (or UDP endpoint): its protocol, transport and how it ended.

    ``connected`` is set once ``connection_made`` ran (or the connect failed: then ``error`` says
    why); ``closed`` once ``connection_lost`` ran (``error`` then holds its ``exc``, if any).
    The events may be waited on from any thread (a client with ``background=False``: through
    ``wait_connected``/``wait_closed`` or ``BlockingClient.wait``, which turn its engine meanwhile);
    the attributes are the engine's, read them after the matching event.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.protocol: P | None = None
        self.transport: Any = None
        self.error: BaseException | None = None
        self.remote: Any = None  # UDP: the server's resolved address
        self.connected = threading.Event()
        self.closed = threading.Event()
        self._refused = False  # the check (--pin) turned the connection down: the app never saw it
        self._wait: Callable[[threading.Event, float | None], bool] = _event_wait  # a caller-driven client's

    # ---- the engine's side ------------------------------------------------------------------------
    def _adopt(self, protocol: P, check: Callable[[Any], None] | None = None,
               on_refused: Callable[[BaseException], None] | None = None) -> P:
        """Watch ``protocol``'s first and last callbacks without wrapping it (its type stays its own).

        ``check(transport)`` runs before the protocol's ``connection_made``; when it raises a
        :class:`SocklabError` the connection is aborted, the protocol never hears of it (neither
        ``connection_made`` nor ``connection_lost``) and ``on_refused(exc)`` is told why.
        """
        self.protocol = protocol
        made, lost = protocol.connection_made, protocol.connection_lost

        def connection_made(transport: Any) -> None:
            self.transport = transport
            if check is not None:
                try:
                    check(transport)
                except SocklabError as exc:
                    self._refused, self.error = True, exc
                    self.connected.set()
                    transport.abort()
                    self.closed.set()
                    if on_refused is not None:
                        on_refused(exc)
                    return
            try:
                made(transport)
            finally:
                self.connected.set()

        def connection_lost(exc: BaseException | None) -> None:
            if self._refused:
                self.closed.set()
                return
            if exc is not None and self.error is None:
                self.error = exc
            try:
                lost(exc)
            finally:
                self.connected.set()
                self.closed.set()

        try:
            protocol.connection_made = connection_made  # type: ignore[method-assign]
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        except AttributeError as exc:  # __slots__ without __dict__: the handle could not follow it
            raise UsageError(f"{type(protocol).__name__} must allow instance attributes to be a client") from exc
        return protocol

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self.connected.set()
        self.closed.set()

    # ---- the caller's side ------------------------------------------------------------------------
    def wait_connected(self, timeout: float | None = None) -> P:
        """Block until ``connection_made`` ran; returns the protocol.

        Raises:
            the connect's own error (``ConnectionRefused``, ``ConnectTimeout``, ``ResolveError``...),
            ``ConnectTimeout`` when nothing happened within ``timeout``.
        """
        if not self._wait(self.connected, timeout):
            raise ConnectTimeout(f"no connection to {self.endpoint} within {timeout:g} s")
        if self.protocol is None or self.transport is None or self._refused:
            raise self.error if self.error is not None else SocklabError(f"connecting to {self.endpoint} failed")
        return self.protocol

    def wait_closed(self, timeout: float | None = None) -> P:
        """Block until ``connection_lost`` ran; returns the protocol, or raises why it ended.

        Raises:
            the error ``connection_lost`` was given (or the connect's), ``OperationTimeout`` when
            the connection is still open after ``timeout`` seconds.
        """
        if not self._wait(self.closed, timeout):
            raise OperationTimeout(f"the connection to {self.endpoint} is still open after {timeout:g} s")
        if self.error is not None:
            raise self.error
        assert self.protocol is not None
        return self.protocol


def ssl_context_for(settings: ClientSettings) -> ssl.SSLContext | None:
    """The TLS context ``settings`` ask for, or ``None`` for plain TCP.

    ``pin``: no CA and no name check - every handshake made with the context checks the
    certificate's fingerprint (a client on raw sockets or asyncio gets the check with it);
    ``tls``: the system's CAs (or ``cafile``), unless ``insecure``.
    """
    if settings.pin is not None:
        from socklab.core.selfsigned import pinned_client_context

        return pinned_client_context(settings.pin)
    return client_ssl_context(settings.cafile, settings.insecure) if settings.tls else None


def _pin_check(pin: str) -> Callable[[Any], None]:
    from socklab.core.selfsigned import PinMismatch, check_pin, normalize_pin

    normalize_pin(pin)  # a malformed pin is a UsageError here, before any connection

    def check(transport: Any) -> None:
        tls = transport.get_extra_info("ssl_object")
        if tls is None:
            raise PinMismatch("--pin needs TLS, and this connection has none")
        check_pin(tls, pin)
    return check


def connect(endpoint: Endpoint, protocol_factory: Callable[[], P], settings: ClientSettings | None = None,
            *, engine: Engine, ssl_context: ssl.SSLContext | None = None,
            on_error: Callable[[BaseException], None] | None = None) -> ClientHandle[P]:
    """Open a stream client connection on ``engine``; returns at once with its handle.

    Call on the engine's thread (from a callback) or before ``engine.run``. ``connection_made``
    follows on the engine, or the handle's ``error`` is set (the engine translated the OS error)
    and ``on_error(exc)`` is called on the engine. TLS, its CA, ``insecure`` and the name to verify
    come from ``settings``; ``ssl_context`` replaces the context they make (mutual TLS, a CA-only check).
    ``settings.pin``: the server's certificate must have that SHA-256 fingerprint, or the connection
    is aborted before the protocol hears of it and the error is a ``PinMismatch``.
    ``settings.source``: the local address bound before connecting (the engines' ``source_address``).
    """
    settings = settings if settings is not None else ClientSettings()
    source = settings.source_address()
    check = _pin_check(settings.pin) if settings.pin is not None else None
    handle: ClientHandle[P] = ClientHandle(endpoint)

    def failed(exc: BaseException) -> None:
        handle._failed(exc)
        if on_error is not None:
            on_error(exc)

    def factory() -> Protocol:
        proto = handle._adopt(protocol_factory(), check, on_error)
        assert isinstance(proto, Protocol), f"{type(proto).__name__} is not a stream Protocol"
        return proto

    if ssl_context is None and settings.pin is not None:
        # the check runs in the handle (a PinMismatch, and the protocol never hears), not the handshake
        from socklab.core.selfsigned import pinned_client_context

        ssl_context = pinned_client_context()
    engine.connect_stream(endpoint, factory, ssl_context=ssl_context or ssl_context_for(settings),
                          server_hostname=settings.server_name, timeout=settings.connect_timeout,
                          on_error=failed, source_address=source)
    return handle


def open_datagram(endpoint: Endpoint, protocol_factory: Callable[[], P], *, engine: Engine,
                  tracer: Tracer | None = None, connected: bool = True,
                  source: tuple[str, int] | None = None) -> ClientHandle[P]:
    """A UDP client endpoint on ``engine``, driven like a server's; ``handle.remote`` is the server's address.

    ``connected`` (the default): the socket is connected to ``endpoint``, so ``transport.sendto(data)``
    goes there, only its datagrams are received, and ICMP errors (nothing listens there) reach
    ``error_received`` as socklab errors. ``connected=False``: the socket is bound to an ephemeral
    port of the server's address family and talks to anyone (``sendto(data, handle.remote)``):
    for protocols whose server answers from another port (TFTP's transfer IDs). ``source``: bind
    this ``(host, port)`` instead (:meth:`ClientSettings.source_address`), in the server's family.
    Call on the engine's thread or before ``run``.

    A name with several addresses (``localhost``: ``::1`` then ``127.0.0.1`` on many systems): UDP
    has no handshake to find the one a server listens on, so the first address ``connect()``
    accepts is used (one with no route is skipped; :func:`socklab.core.sockets.udp_client_socket`).
    If nothing listens there, the ICMP port unreachable a connected socket gets reaches
    ``error_received`` as a ``ConnectionRefused`` that names that address and the name's others:
    give the address, or serve on every address.

    Raises:
        UsageError: ``endpoint`` is a Unix path; ResolveError and friends from making the socket.
    """
    if endpoint.unix is not None:
        raise UsageError("UDP needs HOST:PORT, not a Unix path")
    handle: ClientHandle[P] = ClientHandle(endpoint)
    sock, handle.remote, others = udp_client_socket(endpoint, tracer=tracer, source=source, connect=connected)
    if connected:
        handle.remote = sock.getpeername()

    def factory() -> DatagramProtocol:
        proto = handle._adopt(protocol_factory())
        assert isinstance(proto, DatagramProtocol), f"{type(proto).__name__} is not a DatagramProtocol"
        if others:
            _name_the_addresses(proto, endpoint, handle.remote, others)
        return proto

    try:
        engine.serve_datagram(sock, factory)
    except BaseException:
        sock.close()
        raise
    return handle


def _name_the_addresses(proto: DatagramProtocol, endpoint: Endpoint, used: Any, others: list[Any]) -> None:
    """A refusal from the address used says which one it was and what else the name resolves to."""
    received = proto.error_received
    also = ", ".join(format_addr(a) for a in others)

    def error_received(exc: BaseException) -> None:
        if isinstance(exc, ConnectionRefused):
            named = ConnectionRefused(f"{exc}: nothing listens on {format_addr(used)} ({endpoint.host} also "
                                      f"resolves to {also}; UDP has no handshake to find where a server "
                                      "listens: give the address)")
            named.errno = exc.errno
            exc = named
        received(exc)

    proto.error_received = error_received  # type: ignore[method-assign]


def loop_engine(loop: Any = None, *, tracer: Tracer | None = None) -> Engine:
    """An engine on ``loop`` (an ``asyncio`` event loop; default: the running one), for async clients.

    The engine drives the caller's loop without owning it: nothing to run or stop, and ``close()``
    ends only the connections it opened. :func:`connect` and :func:`open_datagram` on it call the
    protocol on that loop (from a coroutine on it: ``connect(..., engine=loop_engine())``). A uvloop
    loop gets the uvloop engine. No idle timeout, as for :class:`BlockingClient`.

    Raises:
        RuntimeError: no loop given and none is running.
    """
    import asyncio

    loop = loop if loop is not None else asyncio.get_running_loop()
    name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    return make_engine(name, ServerSettings(idle_timeout=0), tracer=tracer, loop=loop)


class BlockingClient:
    """An engine driven from the calling (command-line) thread.

    Args:
        settings: the client's settings (timeouts, TLS).
        engine: an engine's name (``epoll`` by default) or an engine to run.
        tracer: the lifecycle trace, or ``None``.
        background: ``True`` (the default): the engine runs on a helper thread of its own, so the
            connection is served while the caller does something else (reads stdin, sleeps), and
            waiting on any ``threading.Event`` a protocol sets works. ``False``: on a reactor
            engine (select, poll, epoll) the engine runs on the caller's thread *while it waits* -
            in :meth:`connect`, :meth:`wait`, :meth:`run_until`, :meth:`call` and a handle's
            ``wait_connected``/``wait_closed`` - as asyncio's ``run_until_complete`` does: no
            second thread, no hand-off per message, the protocol's callbacks on the caller's
            thread. Between waits nothing runs (bytes wait in the kernel, timers fire late), and an
            event of the protocol's must be waited on with :meth:`wait`. Other engines keep their
            thread (``runs_on_caller`` says which mode runs).

    Several threads may wait on one caller-driven client at once: one of them turns the loop
    and the others sleep until their own condition holds or the loop is free (leader/followers,
    :mod:`socklab.runtime.caller_loop`); ``call_soon_threadsafe`` from any thread wakes
    whichever thread turns it.

    Use as a context manager; :meth:`close` stops the engine (and joins its thread). A named
    engine is made with no idle timeout: a client decides itself how long it waits.
    """

    def __init__(self, settings: ClientSettings | None = None, *, engine: str | Engine = "epoll",
                 tracer: Tracer | None = None, background: bool = True) -> None:
        self.settings = settings if settings is not None else ClientSettings()
        self.tracer = tracer
        self.engine = (make_engine(engine, ServerSettings(idle_timeout=0), tracer=tracer)
                       if isinstance(engine, str) else engine)
        #: the engine runs on the caller's thread while it waits (``background=False`` on a reactor)
        self.runs_on_caller = not background and self.engine.runs_on_caller
        self._closed = False
        self._thread: threading.Thread | None = None
        #: caller mode's loop (``try_hold``/``let_go`` for a sender's fast path), else ``None``
        self.caller_loop = CallerLoop(self.engine) if self.runs_on_caller else None
        if self.caller_loop is not None:
            return
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"socklab-client-{self.engine.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(max(10.0, self.settings.connect_timeout)):
            raise SocklabError(f"engine {self.engine.name} did not start")
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        try:
            self.engine.run(ready=self._ready.set)
        except BaseException as exc:  # reported to the caller, never swallowed
            self._failure = exc
            raise
        finally:
            self._ready.set()

    # ---- waiting -----------------------------------------------------------------------------------
    def wait(self, event: threading.Event, timeout: float | None = None, *,
             start: Callable[[], None] | None = None) -> bool:
        """Block until ``event`` is set (``False`` after ``timeout`` s); in caller mode the engine runs meanwhile.

        ``start``: run on the engine first, as :meth:`post` would (a request, then wait for its answer).
        """
        if self.caller_loop is not None:
            return self.caller_loop.run_until(event.is_set, timeout, start)
        if start is not None:
            self.engine.call_soon_threadsafe(start)
        return event.wait(timeout)

    def run_until(self, predicate: Callable[[], bool], timeout: float | None = None, *,
                  start: Callable[[], None] | None = None) -> bool:
        """Turn the engine on this thread until ``predicate()`` holds; ``False`` after ``timeout`` s.

        Caller mode only (:meth:`wait` works in both). ``predicate`` is checked after each turn of
        the loop on the thread that turns it, or - on a thread that waits for another to let go of
        the loop - whenever that one finished a turn. A closed client ends every wait at once.
        ``start``: run on the engine first, as :meth:`post` would, in the same hold of the loop.

        Raises:
            UsageError: the engine runs on its own thread, or a callback of this client's engine waits.
        """
        if self.caller_loop is None:
            if predicate():
                return True
            raise UsageError("run_until turns the engine on the caller's thread: BlockingClient(background=False) "
                             "on select, poll or epoll; wait(event) works in both modes")
        return self.caller_loop.run_until(predicate, timeout, start)

    # ---- calling into the engine -------------------------------------------------------------------
    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn()`` on the engine and return its result (or raise what it raised).

        Caller mode: ``fn`` runs at once on this thread when no other thread turns the loop;
        otherwise the thread that turns it runs ``fn`` and this one waits.
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            return fn()
        if self.caller_loop is not None:
            if self.caller_loop.closed:
                raise ClosedError(f"this client's {self.engine.name} engine is closed")
            ran, result = self.caller_loop.try_call(fn)
            if ran:
                return result  # type: ignore[no-any-return]
        box: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            finally:
                done.set()

        if not self.wait(done, timeout if timeout is not None else max(30.0, self.settings.connect_timeout * 2),
                         start=run):
            raise OperationTimeout(f"the {self.engine.name} engine did not answer")
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the engine without waiting for it; what it raises is the engine's to report.

        Caller mode: at once on this thread when no other thread turns the loop (a sender writes
        the socket itself); otherwise queued for the thread that turns it, which it wakes.
        """
        if self.caller_loop is not None:
            self.caller_loop.post(fn)
        else:
            self.engine.call_soon_threadsafe(fn)

    # ---- connections -------------------------------------------------------------------------------
    def _follow(self, handle: ClientHandle[P]) -> ClientHandle[P]:
        if self.caller_loop is not None:
            handle._wait = self.wait
        return handle

    def connect(self, endpoint: Endpoint, protocol_factory: Callable[[], P], *,
                ssl_context: ssl.SSLContext | None = None, settings: ClientSettings | None = None) -> ClientHandle[P]:
        """Connect and wait for ``connection_made``; returns the handle (``ssl_context``: see :func:`connect`).

        ``settings``: this connection's, instead of the client's.

        Raises:
            ConnectionRefused, ConnectTimeout, ResolveError, TlsError...: why it failed, translated by the engine.
        """
        cs = settings if settings is not None else self.settings
        handle = self._follow(self.call(lambda: connect(endpoint, protocol_factory, cs, engine=self.engine,
                                                        ssl_context=ssl_context)))
        # The engine enforces connect_timeout; the margin here only matters when the engine is stuck.
        handle.wait_connected(cs.connect_timeout + 5.0)
        return handle

    def open_datagram(self, endpoint: Endpoint, protocol_factory: Callable[[], P], *,
                      connected: bool = True) -> ClientHandle[P]:
        """A UDP endpoint for ``endpoint`` (see :func:`open_datagram`); returns once ``connection_made`` ran."""
        source = self.settings.source_address()
        handle = self._follow(self.call(lambda: open_datagram(endpoint, protocol_factory, engine=self.engine,
                                                              tracer=self.tracer, connected=connected,
                                                              source=source)))
        handle.wait_connected(self.settings.connect_timeout + 5.0)
        return handle

    def close(self) -> None:
        """Close what is still open (``connection_lost`` runs), stop the engine and join its thread.

        Caller mode: a wait in progress ends (with its condition as it stands) and the engine
        closes as the thread turning it lets go of it - after the current callback, when called
        from one.
        """
        if self._closed:
            return
        self._closed = True
        if self.caller_loop is not None:
            self.caller_loop.close()
            return
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(SocklabError):
                self.call(self.engine.abort_all, timeout=5.0)
            self.engine.stop()
            self._thread.join(10.0)
        self.engine.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_client(endpoint: Endpoint, protocol_factory: Callable[[], P], settings: ClientSettings | None = None,
               *, engine: str | Engine = "epoll", timeout: float | None = None,
               tracer: Tracer | None = None) -> P:
    """Connect, run until ``connection_lost``, and return the protocol (its result is what it kept).

    A reactor engine runs on the calling thread meanwhile (``background=False``): the protocol's
    callbacks run there, and no thread is started.

    Raises:
        the connect's error, the error ``connection_lost`` was given, or ``OperationTimeout``
        after ``timeout`` seconds.
    """
    with BlockingClient(settings, engine=engine, tracer=tracer, background=False) as client:
        return client.connect(endpoint, protocol_factory).wait_closed(timeout)
