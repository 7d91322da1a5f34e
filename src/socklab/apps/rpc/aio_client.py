"""The asyncio JSON-RPC client: ``await client.add(1, 2)``, thousands of calls in flight.

Why this exists: an async program should not spend a thread per call. Over ``tcp://`` (and
``tls://``) the connection is a protocol on the caller's own event loop - a socklab engine driving
that loop (:func:`socklab.runtime.client.loop_engine`), so the same contract and the same error
translation as everywhere, with no thread in between; answers are matched to futures by id, like
the blocking client's. Over ``http://`` and ``ws://`` it drives the blocking
:class:`~socklab.apps.rpc.client.Client` from a worker thread, so the same API works everywhere::

    async with await AsyncClient.connect("tcp://127.0.0.1:7010") as client:
        results = await asyncio.gather(*(client.add(i, i) for i in range(1000)))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from socklab.apps.rpc.channels import MAX_MESSAGE, parse_url
from socklab.apps.rpc.client import REPLY_LIMITS, Client, _params
from socklab.apps.rpc.errors import CallTimeout, error_from_object
from socklab.apps.rpc.settings import RpcClientSettings
from socklab.core.errors import BrokenError, ClosedError, ConnectError, ConnectTimeout
from socklab.core.protocol import Protocol
from socklab.core.transport import Transport
from socklab.engines import Engine
from socklab.protocols import jsonrpc as j
from socklab.protocols.framing import Frame, FrameDecoder, encode_frame
from socklab.runtime.client import connect, loop_engine

__all__ = ["AsyncClient"]

_UNSET: Any = object()


class _AsyncProxy:
    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self._name = name

    def __getattr__(self, name: str) -> _AsyncProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncProxy(self._client, f"{self._name}.{name}")

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._client.call(self._name, *args, **kwargs)


class _Connection(Protocol):
    """One tcp:// connection on the caller's loop: frames in, answers to the client's futures."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.decoder = FrameDecoder(max_frame=MAX_MESSAGE, mode=client.settings.framing)
        self.t: Transport | None = None
        self.made: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.writable = asyncio.Event()  # clear while the transport holds more than it should
        self.writable.set()
        self.lost = False
        self.reason: BaseException | None = None

    def connection_made(self, transport: Transport) -> None:
        self.t = transport
        transport.keep_reading_when_full()  # the server may wait for its answers to be read
        if not self.made.done():
            self.made.set_result(None)

    def failed(self, exc: BaseException) -> None:
        """The connect's ``on_error``: why no connection was made."""
        if not self.made.done():
            self.made.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
            while (ev := self.decoder.next_event()) is not None:
                if isinstance(ev, Frame):
                    self.client._deliver(ev.data)
        except Exception as exc:  # unreadable framing or answer: the calls waiting fail at once
            self.reason = BrokenError(f"connection lost: {exc}")
            if self.t is not None:
                self.t.abort()

    def eof_received(self) -> bool | None:
        return None  # the server closed: so do we

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.writable.set()
        if self.reason is None:
            self.reason = BrokenError(f"connection lost: {exc}" if exc is not None else
                                      "the server closed the connection")
        self.client._lost(self.reason)
        if not self.ended.done():
            self.ended.set_result(None)
        if not self.made.done():
            self.made.set_exception(self.reason)


class AsyncClient:
    """An asyncio JSON-RPC client; create it with ``await AsyncClient.connect(url)``.

    Args:
        url: ``tcp://``, ``http://`` or ``ws://`` (the latter two through a blocking client); the
            ``tls://``, ``https://``, ``wss://`` forms speak TLS (``cafile``, ``insecure``, ``pin``).
        settings: timeouts, framing (tcp:// only), the reconnect policy, TLS, as for :class:`Client`
            (:class:`~socklab.apps.rpc.settings.RpcClientSettings`).
        **changes: fields of ``settings`` to change (``timeout=5``).
    """

    def __init__(self, url: str, settings: RpcClientSettings | None = None, **changes: Any) -> None:
        self.endpoint = parse_url(url)
        self.settings = RpcClientSettings.for_url(self.endpoint.tls, settings, changes)
        self.url = url
        self._ids = itertools.count(1)
        self._pending: dict[tuple[str, Any], asyncio.Future[Any]] = {}
        self._conn: _Connection | None = None
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: Client | None = None
        self._conn_lock = asyncio.Lock()
        self._closed = False
        self.connections = 0

    @property
    def timeout(self) -> float | None:
        """Default seconds to wait for each answer (``None``: forever)."""
        return self.settings.timeout

    @classmethod
    async def connect(cls, url: str, settings: RpcClientSettings | None = None, **changes: Any) -> AsyncClient:
        """A connected client (raises ConnectError when the server cannot be reached)."""
        client = cls(url, settings, **changes)
        await client._ensure()
        return client

    async def _ensure(self) -> None:
        if self.endpoint.scheme != "tcp":
            if self._sync is None:
                self._sync = await asyncio.to_thread(Client, self.url, self.settings)
            return
        if self._conn is not None and not self._conn.lost:
            return
        async with self._conn_lock:
            if self._closed:
                raise ClosedError("this client was closed")
            if self._conn is not None and not self._conn.lost:
                return
            s = self.settings
            delay = s.backoff
            for attempt in range(s.retries + 1):
                try:
                    conn = await self._open()
                    break
                except ConnectError:
                    if attempt == s.retries:
                        raise
                    await asyncio.sleep(delay)  # backoff between attempts, not a readiness poll
                    delay = min(delay * 2, s.max_backoff)
            self._conn = conn
            self.connections += 1

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._engine is None or self._loop is not loop:
            self._engine, self._loop = loop_engine(loop), loop
        conn = _Connection(self, loop)
        connect(self.endpoint.address, lambda: conn, self.settings, engine=self._engine, on_error=conn.failed)
        wait = self.settings.connect_timeout + 5.0  # the engine enforces connect_timeout itself
        try:
            await asyncio.wait_for(asyncio.shield(conn.made), wait)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {self.endpoint.authority} within {wait:g} s") from None
        return conn

    def _lost(self, reason: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(reason)

    def _deliver(self, payload: bytes) -> None:
        replies = j.parse_replies(payload, REPLY_LIMITS)  # unreadable: the connection ends, calls fail
        for reply in replies:
            fut = self._pending.pop(j.id_key(reply.id), None) if reply.id is not None else None
            if fut is None or fut.done():
                continue
            if isinstance(reply, j.Response):
                fut.set_result(reply.result)
            else:
                fut.set_exception(error_from_object(reply.error))

    async def _write(self, payload: bytes) -> None:
        await self._ensure()
        conn = self._conn
        assert conn is not None and conn.t is not None
        conn.t.write(encode_frame(payload, self.settings.framing))
        if not conn.writable.is_set():  # the server is not reading: wait, as StreamWriter.drain() does
            await conn.writable.wait()

    async def call(self, method: str, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Call ``method`` and await its result (same errors as :meth:`Client.call`)."""
        wait = self.settings.timeout if timeout is _UNSET else timeout
        if self.endpoint.scheme != "tcp":
            await self._ensure()
            assert self._sync is not None
            return await asyncio.to_thread(self._sync.call, method, *args, timeout=wait, **kwargs)
        req = j.make_request(method, _params(args, kwargs), next(self._ids))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        key = j.id_key(req.id)
        self._pending[key] = fut
        try:
            await self._write(j.encode(req))
            return await asyncio.wait_for(fut, wait)
        except TimeoutError:
            if self.settings.cancel_on_timeout:
                with contextlib.suppress(Exception):
                    await self.notify("$/cancelRequest", id=req.id)
            raise CallTimeout(f"no answer to {method!r} within {wait:g} s") from None
        finally:
            self._pending.pop(key, None)

    async def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no answer)."""
        if self.endpoint.scheme != "tcp":
            await self._ensure()
            assert self._sync is not None
            await asyncio.to_thread(self._sync.notify, method, *args, **kwargs)
            return
        await self._write(j.encode(j.make_request(method, _params(args, kwargs), notification=True)))

    async def batch(self, calls: list[tuple[str, list[Any] | dict[str, Any] | None]]) -> list[Any]:
        """Send ``[(method, params), ...]`` as one batch; results (or exceptions) in order."""
        if self.endpoint.scheme != "tcp":
            await self._ensure()
            assert self._sync is not None
            sync = self._sync

            def run() -> list[Any]:
                b = sync.batch()
                for method, params in calls:
                    if isinstance(params, dict):
                        b.call(method, **params)
                    else:
                        b.call(method, *(params or []))
                return b.send()
            return await asyncio.to_thread(run)
        loop = asyncio.get_running_loop()
        reqs = [j.make_request(m, p, next(self._ids)) for m, p in calls]
        futs = [loop.create_future() for _ in reqs]
        for r, f in zip(reqs, futs, strict=True):
            self._pending[j.id_key(r.id)] = f
        await self._write(j.encode(reqs))  # type: ignore[arg-type]
        done = await asyncio.gather(*(asyncio.wait_for(f, self.settings.timeout) for f in futs),
                                    return_exceptions=True)
        return list(done)

    def __getattr__(self, name: str) -> _AsyncProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncProxy(self, name)

    async def close(self) -> None:
        """Close the connection (what was written leaves first, up to 1 s)."""
        self._closed = True
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
        conn = self._conn
        if conn is not None and conn.t is not None and not conn.lost:
            conn.t.close()
            try:
                # Over TLS the loop waits for the server's close_notify (up to 30 s): do not wait long.
                await asyncio.wait_for(asyncio.shield(conn.ended), 1.0)
            except TimeoutError:
                conn.t.abort()
        if self._engine is not None:
            self._engine.close()  # ends what it opened on this loop; the loop is the caller's

    async def __aenter__(self) -> AsyncClient:
        await self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
