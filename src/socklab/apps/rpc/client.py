"""The JSON-RPC client: calls, a proxy, notifications, batches, many calls in flight, reconnect.

Why this exists: calling a remote function should read like calling a local one, and fail like
one - with an exception that says what went wrong::

    from socklab import rpc

    with rpc.connect("tcp://127.0.0.1:7010") as client:
        client.call("subtract", 42, 23)          # 19
        client.subtract(minuend=42, subtrahend=23)  # the proxy; named params
        client.notify("update", 1, 2)            # no answer expected
        with client.batch() as b:                # one message, several calls
            a, s = b.call("add", 1, 2), b.call("sum", 1, 2, 3)
        a.result(), s.result()                   # 3, 6

Many calls can be in flight on one connection: each request carries an id and the answers,
which may come back in any order, are matched by it (``submit`` returns a future). A call that
gets no answer within ``timeout`` raises :class:`~socklab.apps.rpc.errors.CallTimeout` (and the
client tells the server with ``$/cancelRequest``). An error answer raises the
:class:`~socklab.apps.rpc.errors.RpcError` subclass for its code.

Reconnect: when the connection drops, calls in flight fail with ``BrokenError`` (they may or may
not have run: they are never resent behind your back). The next call reconnects, retrying with
exponential backoff (``backoff`` seconds doubling up to ``max_backoff``, ``retries`` times).

Settings: one :class:`~socklab.apps.rpc.settings.RpcClientSettings` (timeouts, framing, the
reconnect policy, TLS); keyword arguments are changes to it (``rpc.connect(url, timeout=5)``).
The connections run on a socklab engine of the client's own, on the same contract as the
servers. On select, poll and epoll (epoll is the default) it turns on the thread that waits - a
call, a future's ``result()``/``exception()``, :meth:`Client.close` - so no thread is started
and no message is handed between threads; answers are read while some thread waits (a future
waited on with ``concurrent.futures.wait`` or a done callback needs ``background=True``: the
engine then runs on a thread of its own, as on the other engines).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from socklab.apps.rpc.channels import MAX_MESSAGE, Channel, Endpoint, open_channel, parse_url
from socklab.apps.rpc.errors import CallTimeout, error_from_object
from socklab.apps.rpc.settings import RpcClientSettings
from socklab.core.errors import (
    BrokenError,
    ClosedError,
    ConnectError,
    NetworkError,
    OperationTimeout,
    UsageError,
)
from socklab.protocols import jsonrpc as j
from socklab.runtime.client import BlockingClient

__all__ = ["Batch", "Client", "connect"]

_UNSET: Any = object()


class _Answer(Future[Any]):
    """A call's future on a client whose engine turns on the caller's thread: waiting for it turns the engine."""

    def __init__(self, runner: BlockingClient) -> None:
        super().__init__()
        self._runner = runner

    def _turn(self, timeout: float | None) -> float | None:
        """Turn the engine until answered; what is left of ``timeout`` (a closed client ends the turning early,
        and its close() fails the future)."""
        if self.done():
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        self._runner.run_until(self.done, timeout)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._turn(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._turn(timeout))

# What the client accepts from the server it chose to talk to: generous, but still bounded.
REPLY_LIMITS = j.Limits(max_message_size=MAX_MESSAGE, max_batch=1_000_000, max_depth=500, max_number_length=4300)


def _params(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any] | dict[str, Any] | None:
    # Spec section 4.2: by-position (an array) or by-name (an object), not both.
    if args and kwargs:
        raise UsageError("JSON-RPC passes parameters by position or by name, not both")
    if kwargs:
        return kwargs
    return list(args) if args else None


class _Proxy:
    """``client.add(1, 2)`` and ``client.math.add(1, 2)`` (dotted method names)."""

    def __init__(self, invoke: Callable[..., Any], name: str) -> None:
        self._invoke = invoke
        self._name = name

    def __getattr__(self, name: str) -> _Proxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Proxy(self._invoke, f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke(self._name, *args, **kwargs)


class Client:
    """A blocking JSON-RPC client, safe to share between threads.

    Args:
        url: ``tcp://HOST:PORT``, ``http://HOST:PORT/PATH`` or ``ws://HOST:PORT/PATH`` (``tls://``,
            ``https://``, ``wss://``: the same over TLS, checked with ``cafile``, ``insecure`` or ``pin``).
        settings: timeouts, framing, the reconnect policy, TLS (:class:`RpcClientSettings`;
            ``timeout=None`` waits forever). ``tls`` follows the URL.
        **changes: fields of ``settings`` to change (``timeout=5, retries=0``).

    Raises:
        UsageError: a bad URL or setting. ConnectError: the first connection failed (after the
        retries); NetworkError: TLS failed.
    """

    def __init__(self, url: str, settings: RpcClientSettings | None = None, **changes: Any) -> None:
        self.endpoint: Endpoint = parse_url(url)
        self.settings = RpcClientSettings.for_url(self.endpoint.tls, settings, changes)
        self.url = url
        self._ids = itertools.count(1)
        self._pending: dict[tuple[str, Any], Future[Any]] = {}
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._channel: Channel | None = None
        self._closed = False
        self.connections = 0  # how many times a connection was opened (reconnects show here)
        self._runner = BlockingClient(self.settings, engine=self.settings.engine, background=self.settings.background)
        try:
            self._ensure()
        except BaseException:
            self._runner.close()
            raise

    @property
    def timeout(self) -> float | None:
        """Default seconds to wait for each answer (``None``: forever)."""
        return self.settings.timeout

    # ---- connection ------------------------------------------------------------------------------
    def _ensure(self) -> Channel:
        ch = self._channel
        if ch is not None and not ch._lost:
            return ch
        with self._connect_lock:
            if self._closed:
                raise ClosedError("this client was closed")
            ch = self._channel
            if ch is not None and not ch._lost:
                return ch
            s = self.settings
            if ch is not None:
                ch.close()
                if not s.reconnect:
                    raise BrokenError("the connection was lost (reconnect=False)")
            delay = s.backoff
            for attempt in range(s.retries + 1):
                try:
                    ch = open_channel(self.endpoint, self._on_message, self._on_lost, settings=s, runner=self._runner)
                    break
                except ConnectError:
                    if attempt == s.retries:
                        raise
                    time.sleep(delay)  # backoff between attempts, not a readiness poll
                    delay = min(delay * 2, s.max_backoff)
            assert ch is not None
            self._channel = ch
            self.connections += 1
            return ch

    def _on_lost(self, exc: BaseException) -> None:
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        err = exc if isinstance(exc, NetworkError) else BrokenError(f"connection lost: {exc}")
        for fut in pending:
            if not fut.done():
                fut.set_exception(BrokenError(f"no answer: {err}"))

    def _on_message(self, payload: bytes) -> None:
        # An answer that cannot be read cannot be matched to its call: the RemoteProtocolError
        # ends the connection, so every waiting call fails at once instead of timing out.
        replies = j.parse_replies(payload, REPLY_LIMITS)
        for reply in replies:
            if reply.id is None:
                self._unmatched(reply)
                continue
            with self._lock:
                fut = self._pending.pop(j.id_key(reply.id), None)
            if fut is None or fut.done():
                continue
            if isinstance(reply, j.Response):
                fut.set_result(reply.result)
            else:
                fut.set_exception(error_from_object(reply.error))

    def _unmatched(self, reply: j.Response | j.ErrorResponse) -> None:
        # An error with id null (parse error, invalid request): only attributable if one call waits.
        with self._lock:
            only = next(iter(self._pending.items())) if len(self._pending) == 1 else None
            if only is not None and isinstance(reply, j.ErrorResponse):
                del self._pending[only[0]]
        if only is not None and isinstance(reply, j.ErrorResponse) and not only[1].done():
            only[1].set_exception(error_from_object(reply.error))

    # ---- calls -----------------------------------------------------------------------------------
    def _new(self, method: str, params: Any) -> tuple[j.Request, Future[Any]]:
        req = j.make_request(method, params, next(self._ids))
        # http:// answers inside send(): its futures are done before anyone waits, a plain one will do
        driven = self._runner.runs_on_caller and self.endpoint.scheme != "http"
        fut: Future[Any] = _Answer(self._runner) if driven else Future()
        with self._lock:
            self._pending[j.id_key(req.id)] = fut
        return req, fut

    def _send(self, payload: bytes, futures: list[tuple[j.Request, Future[Any]]], timeout: float | None) -> None:
        try:
            self._ensure().send(payload, timeout)
        except BaseException as exc:
            with self._lock:
                for req, _ in futures:
                    self._pending.pop(j.id_key(req.id), None)
            if isinstance(exc, (TimeoutError, OperationTimeout)):
                raise CallTimeout(f"no answer within {timeout:g} s") from exc
            if isinstance(exc, NetworkError) and "timed out" in str(exc):
                raise CallTimeout(f"no answer within {timeout:g} s") from exc
            raise

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        """Send a call now and return a future for its result (many may be in flight)."""
        req, fut = self._new(method, _params(args, kwargs))
        self._send(j.encode(req), [(req, fut)], self.timeout)
        return fut

    def call(self, method: str, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Call ``method`` and wait for its result.

        Args:
            method: the remote method's name.
            args/kwargs: its parameters, by position or by name (not both).
            timeout: seconds to wait (default: the client's).

        Returns:
            The result (any JSON value).

        Raises:
            RpcError: the server answered with an error (a subclass per code).
            CallTimeout: no answer in time. BrokenError: the connection dropped first.
        """
        wait = self.timeout if timeout is _UNSET else timeout
        req, fut = self._new(method, _params(args, kwargs))
        self._send(j.encode(req), [(req, fut)], wait)
        return self._wait(req, fut, wait)

    def _wait(self, req: j.Request, fut: Future[Any], wait: float | None) -> Any:
        try:
            return fut.result(wait)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(j.id_key(req.id), None)
            if self.settings.cancel_on_timeout:
                try:
                    self.notify("$/cancelRequest", id=req.id)
                except Exception:
                    pass  # best effort: the call already failed
            raise CallTimeout(f"no answer to {req.method!r} within {wait:g} s") from None

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the server runs it and never answers."""
        req = j.make_request(method, _params(args, kwargs), notification=True)
        self._send(j.encode(req), [], self.timeout)

    def batch(self) -> Batch:
        """Collect calls and notifications; they are sent as one message when the block ends."""
        return Batch(self)

    def __getattr__(self, name: str) -> _Proxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Proxy(self.call, name)

    def close(self) -> None:
        """Close the connection; calls still waiting fail with ``ClosedError``."""
        with self._connect_lock:
            if self._closed:
                return
            self._closed = True
            ch, self._channel = self._channel, None
        from_engine = ch is not None and ch.in_callback()
        if ch is not None:
            ch.close()
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(ClosedError("the client was closed"))
        if from_engine and not self._runner.runs_on_caller:  # from an answer's callback: no thread joins itself
            threading.Thread(target=self._runner.close, name="socklab-rpc-close", daemon=True).start()
        else:
            self._runner.close()  # from a callback on the caller's thread: closes as the loop lets go

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Batch:
    """Calls gathered into one JSON array (spec section 6); use as a context manager."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.items: list[tuple[j.Request, Future[Any] | None]] = []

    def call(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        """Add a call; its future completes after the batch was sent and answered."""
        req, fut = self.client._new(method, _params(args, kwargs))
        self.items.append((req, fut))
        return fut

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Add a notification."""
        self.items.append((j.make_request(method, _params(args, kwargs), notification=True), None))

    def send(self, timeout: float | None = _UNSET) -> list[Any]:
        """Send the batch and wait for every call; returns results (or the exceptions) in order."""
        if not self.items:
            return []
        wait = self.client.timeout if timeout is _UNSET else timeout
        calls = [(r, f) for r, f in self.items if f is not None]
        payload = j.encode([r for r, _ in self.items])
        self.client._send(payload, calls, wait)
        out: list[Any] = []
        for req, fut in calls:
            try:
                out.append(self.client._wait(req, fut, wait))
            except Exception as exc:
                out.append(exc)
        self.items.clear()
        return out

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.send()


def connect(url: str, settings: RpcClientSettings | None = None, **changes: Any) -> Client:
    """A connected :class:`Client` (see its arguments)."""
    return Client(url, settings, **changes)
