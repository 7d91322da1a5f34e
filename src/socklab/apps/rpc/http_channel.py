"""The client's HTTP channel: JSON-RPC as HTTP/1.1 POSTs with keep-alive (h11), on a socklab engine.

Why this exists: ``http://`` is the transport every proxy and every language speaks, and it has
its own rules: one answer per request, in order (so one call waits for the previous one; a batch
does several at once), and a kept-alive connection the server may close while it is idle. The
connection is a protocol on the client's engine (:mod:`socklab.runtime.client`); the caller's
thread posts through it and waits for the answer (on select, poll and epoll it writes the request
and reads the answer itself, turning the engine while it waits: no thread hand-off).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import h11

from socklab.apps.rpc.channels import Channel, Endpoint, OnLost, OnMessage, _connect
from socklab.apps.rpc.settings import RpcClientSettings
from socklab.core.errors import BrokenError, ClosedError, NetworkError, OperationTimeout, RemoteProtocolError
from socklab.core.protocol import Protocol
from socklab.core.transport import Transport
from socklab.runtime.client import BlockingClient

__all__ = ["HttpChannel"]


class _Answer:
    """One POST's outcome, filled in on the engine and waited for by the caller.

    ``finished`` is the flag a caller turning the engine itself looks at; ``event`` is set too
    when the engine has a thread of its own (made only then: one less object per call).
    """

    def __init__(self, threaded: bool) -> None:
        self.finished = False
        self.event = threading.Event() if threaded else None
        self.status = 0
        self.body = bytearray()
        self.error: BaseException | None = None
        self.answered = False  # answer bytes came: the server read the request

    def finish(self) -> None:
        self.finished = True
        if self.event is not None:
            self.event.set()

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.error = exc
            self.finish()

    def wait(self, runner: BlockingClient, timeout: float | None, start: Callable[[], None]) -> bool:
        """Run ``start`` (the POST) on the engine, then wait for the outcome."""
        if self.event is not None:
            return runner.wait(self.event, timeout, start=start)
        return runner.run_until(lambda: self.finished, timeout, start=start)


class _HttpConnection(Protocol):
    """One kept-alive HTTP/1.1 connection on the engine; h11 is only ever used on the engine's side."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.h11 = h11.Connection(h11.CLIENT)
        self._t: Transport | None = None
        self.used = False  # it already carried a request
        self.lost = False  # closed, or closing: the next request needs a new connection
        self.waiter: _Answer | None = None

    def connection_made(self, transport: Transport) -> None:
        self._t = transport
        transport.keep_reading_when_full()

    def post(self, answer: _Answer, payload: bytes) -> None:
        """On the engine: send one POST; ``answer`` is filled in when its answer (or an error) comes."""
        t = self._t
        if self.lost or t is None or t.is_closing():
            self.lost = True
            answer.fail(BrokenError("the kept-alive connection was closed before the request was sent"))
            return
        try:
            out = self.h11.send(h11.Request(method="POST", target=self.ep.path, headers=[
                ("Host", self.ep.authority), ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))), ("Accept", "application/json")]))
            out += self.h11.send(h11.Data(data=payload)) + self.h11.send(h11.EndOfMessage())
        except h11.ProtocolError as exc:  # the connection is in no state for a request
            self.lost = True
            answer.fail(RemoteProtocolError(f"bad HTTP state: {exc}"))
            t.abort()
            return
        self.used = True
        self.waiter = answer
        t.write(out)

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and data:
            self.waiter.answered = True
        self.h11.receive_data(data)
        self._events()

    def eof_received(self) -> bool | None:
        self.h11.receive_data(b"")
        self._events()
        return None

    def _events(self) -> None:
        while self.waiter is not None or self.h11.their_state is not h11.IDLE:
            try:
                ev = self.h11.next_event()
            except h11.ProtocolError as exc:
                self._drop(RemoteProtocolError(f"bad HTTP answer: {exc}"))
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            waiter = self.waiter
            if isinstance(ev, h11.Response):
                if waiter is not None:
                    waiter.status = ev.status_code
            elif isinstance(ev, h11.Data):
                if waiter is not None:
                    waiter.body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                self.waiter = None
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                else:  # the server closes after this answer (Connection: close)
                    self.lost = True
                    if self._t is not None:
                        self._t.close()
                if waiter is not None:
                    waiter.finish()
            elif isinstance(ev, h11.ConnectionClosed):
                self._drop(BrokenError(f"the server closed the connection before answering the POST to "
                                       f"{self.ep.authority}{self.ep.path}"))
                return

    def _drop(self, exc: BaseException) -> None:
        self.lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.fail(exc)
        if self._t is not None:
            self._t.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.fail(exc if exc is not None else BrokenError(
                f"the server closed the connection before answering the POST to {self.ep.authority}{self.ep.path}"))


class HttpChannel(Channel):
    """JSON-RPC over HTTP/1.1 POST with keep-alive (h11): one round trip per message.

    Raises (from the constructor): why the first connection failed - it is opened at once, so a
    server that is not there is found before the first call.
    """

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *,
                 settings: RpcClientSettings | None = None, runner: BlockingClient | None = None,
                 ssl_context: Any = None) -> None:
        super().__init__(on_message, on_lost, settings, runner)
        self.ep = ep
        self.ssl_context = ssl_context
        self.conn: _HttpConnection | None = None
        try:
            self._open()  # fail early when nothing listens
        except BaseException:
            self._stop_runner(False)
            raise
        self._opened = True

    def _open(self) -> _HttpConnection:
        conn = _HttpConnection(self.ep)
        _connect(self.runner, self.ep, lambda: conn, self.settings, self.ssl_context)
        self.conn = conn
        return conn

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and conn._t is not None:
            conn.lost = True
            self.runner.post(conn._t.abort)

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        """POST one message and wait for its answer, which goes to ``on_message`` (none for 204).

        Raises:
            ClosedError: close() was called. OperationTimeout: no answer within ``timeout``.
            RemoteProtocolError: an HTTP status other than 200/204, or a bad answer.
            BrokenError, ConnectError...: the connection failed.
        """
        if self.closed:
            raise ClosedError("this client was closed")
        with self._send_lock:
            conn = self.conn
            if conn is None or conn.lost:  # the server closed it while idle (we saw it): a new one
                self._drop()
                conn = self._open()
            reused = conn.used
            answer = self._roundtrip(conn, payload, timeout)
            if answer.error is not None and reused and not answer.answered and not self.closed \
                    and isinstance(answer.error, (NetworkError, RemoteProtocolError)):
                # A kept-alive connection the server closed while idle fails before any answer
                # byte: the request was never read, so it is safe to send it once more on a new
                # connection (what urllib3 does). Anything else is reported.
                self._drop()
                answer = self._roundtrip(self._open(), payload, timeout)
            if answer.error is not None:
                self._drop()
                raise answer.error
        if answer.status == 204:
            return
        if answer.status != 200:
            raise RemoteProtocolError(f"HTTP {answer.status} from the server: "
                                      f"{bytes(answer.body[:200]).decode(errors='replace')}")
        if answer.body:
            self.on_message(bytes(answer.body))

    def _roundtrip(self, conn: _HttpConnection, payload: bytes, timeout: float | None) -> _Answer:
        answer = _Answer(threaded=not self.runner.runs_on_caller)
        if not answer.wait(self.runner, timeout, lambda: conn.post(answer, payload)):
            self._drop()
            raise OperationTimeout(f"timed out while waiting for the answer to the POST to "
                                   f"{self.ep.authority}{self.ep.path}")
        return answer

    def close(self) -> None:
        self.closed = True
        self._drop()
        self._stop_runner(False)
