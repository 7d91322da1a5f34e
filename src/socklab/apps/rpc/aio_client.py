"""The asyncio JSON-RPC client: ``await client.add(1, 2)``, thousands of calls in flight.

Why this exists: an async program should not spend a thread per call. Over ``tcp://`` this
client is native asyncio (one reader task matches answers to futures by id, like the blocking
client's reader thread). Over ``http://`` and ``ws://`` it drives the blocking
:class:`~socklab.apps.rpc.client.Client` from a worker thread, so the same API works everywhere::

    async with await AsyncClient.connect("tcp://127.0.0.1:7010") as client:
        results = await asyncio.gather(*(client.add(i, i) for i in range(1000)))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from socklab.apps.rpc.channels import parse_url, tls_context
from socklab.apps.rpc.client import REPLY_LIMITS, Client, _params
from socklab.apps.rpc.errors import CallTimeout, error_from_object
from socklab.core.errors import BrokenError, ClosedError, ConnectError, translate_oserror
from socklab.protocols import jsonrpc as j
from socklab.protocols.framing import NDJSON, Frame, FrameDecoder, encode_frame

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


class AsyncClient:
    """An asyncio JSON-RPC client; create it with ``await AsyncClient.connect(url)``.

    Args:
        url: ``tcp://``, ``http://`` or ``ws://`` (the latter two through a blocking client); the
            ``tls://``, ``https://``, ``wss://`` forms speak TLS (``cafile``, ``insecure``).
        timeout: default seconds to wait for each answer.
        framing: ``"ndjson"`` or ``"content-length"`` (tcp:// only).
        retries/backoff/max_backoff: reconnect policy, as for :class:`Client`.
    """

    def __init__(self, url: str, *, timeout: float | None = 30.0, framing: str = NDJSON, retries: int = 5,
                 backoff: float = 0.05, max_backoff: float = 2.0, connect_timeout: float = 10.0,
                 cafile: str | None = None, insecure: bool = False) -> None:
        self.endpoint = parse_url(url)
        self.cafile = cafile
        self.insecure = insecure
        self.ssl_context = tls_context(cafile, insecure) if self.endpoint.tls else None
        self.url = url
        self.timeout = timeout
        self.framing = framing
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._pending: dict[tuple[str, Any], asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._sync: Client | None = None
        self._conn_lock = asyncio.Lock()
        self._closed = False
        self.connections = 0

    @classmethod
    async def connect(cls, url: str, **options: Any) -> AsyncClient:
        """A connected client (raises ConnectError when the server cannot be reached)."""
        client = cls(url, **options)
        await client._ensure()
        return client

    async def _ensure(self) -> None:
        if self.endpoint.scheme != "tcp":
            if self._sync is None:
                self._sync = await asyncio.to_thread(
                    Client, self.url, timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                    max_backoff=self.max_backoff, connect_timeout=self.connect_timeout, cafile=self.cafile,
                    insecure=self.insecure)
            return
        if self._writer is not None and not self._writer.is_closing():
            return
        async with self._conn_lock:
            if self._closed:
                raise ClosedError("this client was closed")
            if self._writer is not None and not self._writer.is_closing():
                return
            delay = self.backoff
            for attempt in range(self.retries + 1):
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.endpoint.host, self.endpoint.port, ssl=self.ssl_context),
                        self.connect_timeout)
                    break
                except (TimeoutError, OSError) as exc:
                    err = translate_oserror(exc, f"connecting to {self.endpoint.authority}")
                    if attempt == self.retries or not isinstance(err, ConnectError):
                        raise err from exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff)
            self._writer = writer
            self.connections += 1
            self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(max_frame=64 * 1024 * 1024, mode=self.framing)
        reason: Exception = BrokenError("the server closed the connection")
        try:
            while data := await reader.read(64 * 1024):
                decoder.receive_data(data)
                while (ev := decoder.next_event()) is not None:
                    if isinstance(ev, Frame):
                        self._deliver(ev.data)
        except (OSError, Exception) as exc:
            reason = BrokenError(f"connection lost: {exc}")
        if self._writer is not None:
            self._writer.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(reason)

    def _deliver(self, payload: bytes) -> None:
        replies = j.parse_replies(payload, REPLY_LIMITS)  # unreadable: the reader ends, calls fail
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
        assert self._writer is not None
        self._writer.write(encode_frame(payload, self.framing))
        await self._writer.drain()

    async def call(self, method: str, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Call ``method`` and await its result (same errors as :meth:`Client.call`)."""
        wait = self.timeout if timeout is _UNSET else timeout
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
        done = await asyncio.gather(*(asyncio.wait_for(f, self.timeout) for f in futs), return_exceptions=True)
        return list(done)

    def __getattr__(self, name: str) -> _AsyncProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncProxy(self, name)

    async def close(self) -> None:
        """Close the connection and stop the reader."""
        self._closed = True
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
        if self._writer is not None:
            self._writer.close()
            try:
                # Over TLS asyncio waits for the server's close_notify (up to 30 s): do not wait long.
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            except TimeoutError:
                self._writer.transport.abort()
            except Exception:
                pass
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task

    async def __aenter__(self) -> AsyncClient:
        await self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
