"""The client's byte pipes: TCP (framed), HTTP POST (h11) and WebSocket (wsproto), all blocking.

Why this exists: the client's logic (ids, futures, timeouts, reconnect) should not care how a
message travels. A channel offers ``send(payload)`` and delivers every message that arrives to
``on_message(payload)``; when the connection dies it calls ``on_lost(exc)`` once. TCP and
WebSocket channels give their socket to one thread of its own, which reads it and writes what
``send`` queued (any thread may send; TLS sockets must not be read and written from two threads
at once), so many calls can be in flight; the HTTP channel does one POST per message in the
caller's thread (HTTP/1.1 answers in order, so a call waits its turn - send a batch to do
several at once).
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import wsproto
import wsproto.events as wse

from socklab.core.errors import (
    BrokenError,
    ClosedError,
    OperationTimeout,
    RemoteProtocolError,
    UsageError,
    translate_oserror,
)
from socklab.core.sockets import client_ssl_context
from socklab.protocols.framing import NDJSON, Frame, FrameDecoder, encode_frame

__all__ = ["MAX_QUEUED", "Channel", "Endpoint", "HttpChannel", "TcpChannel", "WsChannel", "open_channel",
           "parse_url", "tls_context"]

OnMessage = Callable[[bytes], None]
OnLost = Callable[[BaseException], None]
_RECV = 64 * 1024
MAX_QUEUED = 4 * 1024 * 1024
"""Bytes a TCP/WebSocket channel lets wait for the server before ``send`` blocks (back-pressure)."""
_EMPTY = memoryview(b"")
_DRAIN = 2.0  # seconds bytes queued before close() (or a server's close) get to leave


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: ``tcp://h:p``, ``http://h:p/path`` or ``ws://h:p/path``.

    ``tls://``, ``https://`` and ``wss://`` are the same over TLS (``scheme`` is the plain one and
    ``tls`` is true).
    """

    scheme: str
    host: str
    port: int
    path: str
    tls: bool = False

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(url: str) -> Endpoint:
    """Raises UsageError for an unsupported scheme or a missing port."""
    parts = urlsplit(url if "://" in url else "tcp://" + url)
    secure = {"tls": "tcp", "https": "http", "wss": "ws"}
    if parts.scheme not in ("tcp", "http", "ws") and parts.scheme not in secure:
        raise UsageError(f"{url!r}: use tcp://HOST:PORT, http://HOST:PORT/PATH or ws://HOST:PORT/PATH "
                         "(tls://, https://, wss:// for TLS)")
    tls = parts.scheme in secure
    scheme = secure.get(parts.scheme, parts.scheme)
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{url!r}: {exc}") from None
    if not parts.hostname or port is None:
        raise UsageError(f"{url!r}: give HOST:PORT")
    path = parts.path or {"tcp": "", "http": "/rpc", "ws": "/ws"}[scheme]
    return Endpoint(scheme, parts.hostname, port, path, tls)


def tls_context(cafile: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """The client's TLS context: the system's CAs (or ``cafile``); ``insecure`` skips verification."""
    return client_ssl_context(cafile, insecure)  # socklab's one client context (TLS 1.2 or newer)


def _connect(ep: Endpoint, timeout: float, ssl_context: ssl.SSLContext | None = None) -> socket.socket:
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except OSError as exc:
        raise translate_oserror(exc, f"connecting to {ep.authority}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ep.tls:
        try:
            sock = (ssl_context or tls_context()).wrap_socket(sock, server_hostname=ep.host)
        except OSError as exc:  # ssl.SSLError is an OSError
            sock.close()
            raise translate_oserror(exc, f"starting TLS with {ep.authority}") from exc
    return sock


class Channel:
    """A connection that carries JSON-RPC messages.

    ``on_message`` and ``on_lost`` run on the channel's own thread, which starts inside the
    constructor: a server that speaks first (a notification pushed on connect) can call them
    before the constructor has returned its object to the caller.
    """

    def __init__(self, on_message: OnMessage, on_lost: OnLost) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.closed = False
        self._lost = False
        self._send_lock = threading.Lock()

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _report_lost(self, exc: BaseException) -> None:
        if not self._lost:
            self._lost = True
            self.on_lost(exc)


class _ThreadedChannel(Channel):
    """A socket owned by one I/O thread, which reads it and writes what ``send`` queued.

    Why one owner: an ``ssl.SSLSocket`` is one OpenSSL object, and reading it on one thread while
    another writes it is not safe (TLS 1.3 session tickets arrive after the handshake; a write
    racing a read can fail silently or hang). So the socket is non-blocking and only the owner
    thread calls it: a sender appends its whole message to a queue under a lock (messages never
    interleave and leave in the order they were queued) and wakes the owner through a socketpair;
    the owner waits on both with ``selectors``. Plain TCP uses the same owner, with one shortcut:
    a sender that finds nothing queued writes the socket itself (two threads may read and write a
    kernel socket; this saves a thread hand-off per call) and queues only what did not fit.

    Back-pressure: at most ``max_queued`` bytes (default :data:`MAX_QUEUED`, 4 MiB) wait to be
    written. A sender that would go over waits for room - up to its ``timeout``, then
    :class:`~socklab.core.errors.OperationTimeout` - so a server that stops reading cannot make the
    client buffer without bound. A single message larger than the limit is accepted when nothing
    else waits; the owner thread itself (answering a WebSocket ping from a callback) and close
    frames never wait.
    """

    sock: socket.socket

    def __init__(self, on_message: OnMessage, on_lost: OnLost, max_queued: int = MAX_QUEUED) -> None:
        super().__init__(on_message, on_lost)
        self.max_queued = max_queued
        self._cond = threading.Condition()  # guards the queue, the counters, the wake socket
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0  # bytes send() accepted that are not written yet (queue + owner's buffer)
        self._reason: BaseException | None = None  # why the connection ended; send() refuses after
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._direct = False  # senders may write the socket themselves (not TLS; see _enqueue)

    def _start_reader(self, name: str) -> None:
        try:
            self._wake_r, self._wake_w = socket.socketpair()
        except OSError as exc:
            self.sock.close()
            raise translate_oserror(exc, "creating the wake-up socketpair") from exc
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sock.setblocking(False)
        self._direct = not isinstance(self.sock, ssl.SSLSocket)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- any thread --------------------------------------------------------------------------------
    def _enqueue(self, size: int, encode: Callable[[], bytes], timeout: float | None, *,
                 bounded: bool = True) -> None:
        """Queue ``encode()``'s bytes for the owner; waits for room while ``max_queued`` is reached.

        Raises:
            ClosedError: close() was called. BrokenError: the connection ended.
            OperationTimeout: no room within ``timeout`` seconds (the server does not read).
        """
        bounded = bounded and threading.current_thread() is not self._thread
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed:
                    raise ClosedError("this client was closed")
                if self._reason is not None:
                    raise BrokenError(f"the connection is lost: {self._reason}")
                if not bounded or not self._queued or self._queued + size <= self.max_queued:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise OperationTimeout(f"timed out while sending a request: {self._queued} bytes already wait "
                                        f"for a server that does not read them (max_queued={self.max_queued})")
                self._cond.wait(left)
            data = encode()  # under the lock: the encoder's state (wsproto) follows the queue's order
            if self._direct and not self._queued:
                # Plain TCP with nothing waiting: write now, from this thread - a kernel socket may
                # be read and written by two threads at once (only TLS may not), and this saves a
                # thread hand-off per call. What does not fit goes to the owner, in order.
                try:
                    n = self.sock.send(data)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    raise translate_oserror(exc, "sending a request") from exc
                if n == len(data):
                    return
                data = data[n:]
            first = not self._queue
            self._queue.append(data)
            self._queued += len(data)
            if first:  # the owner takes the whole queue once woken: one byte is enough. Append
                self._wake_locked()  # first: the owner peeks at the queue without the lock

    def _wake_locked(self) -> None:
        if self._wake_w is not None:  # closed by the owner under the same lock: never a reused fd
            with contextlib.suppress(OSError):  # full means already woken
                self._wake_w.send(b"\0")

    def close(self) -> None:
        """Stop the owner thread and close the socket; safe from any thread, callbacks included.

        Bytes already queued get up to ``_DRAIN`` seconds to leave. From another thread this waits
        for the owner thread to end (up to 5 s); from the owner's own callbacks it returns at once.
        """
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()  # senders waiting for room
            self._wake_locked()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(5)

    # ---- the owner thread --------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _end(self, reason: BaseException) -> None:
        """The connection is over: refuse new sends, release waiting senders, report once."""
        with self._cond:
            if self._reason is None:
                self._reason = reason
            self._cond.notify_all()
        self._report_lost(reason)

    def _take(self) -> memoryview:
        if not self._queue:  # unlocked peek: an append after it wakes the owner again
            return _EMPTY
        with self._cond:
            data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
            self._queue.clear()
        return memoryview(data)

    def _written(self, n: int) -> None:
        with self._cond:
            self._queued -= n
            self._cond.notify_all()

    def _run(self) -> None:
        sock, wake = self.sock, self._wake_r
        assert wake is not None
        # TLS may hold decrypted bytes that select() cannot see.
        pending = sock.pending if isinstance(sock, ssl.SSLSocket) else None
        sel = selectors.DefaultSelector()
        sel.register(wake, selectors.EVENT_READ)
        sel.register(sock, selectors.EVENT_READ)
        interest = selectors.EVENT_READ
        out = _EMPTY  # taken from the queue, not written yet (a TLS retry needs the same bytes)
        write_waits = False  # the last send() found no room: wait for EVENT_WRITE
        read_waits = False  # a TLS recv() wants to write first (SSLWantWriteError)
        deadline: float | None = None  # once the connection is over: how long queued bytes may take
        try:
            while True:
                if self.closed and not self._lost:
                    self._end(ClosedError("the client closed the connection"))
                if self._lost and deadline is None:
                    deadline = time.monotonic() + _DRAIN
                # Write until no room: what is left, then the queue - taken once per turn so a
                # stream of sends cannot starve reading, but emptied when the connection is over.
                write_waits = took = False
                while True:
                    if not out:
                        if took and deadline is None:
                            break
                        out, took = self._take(), True
                        if not out:
                            break
                    try:
                        n = sock.send(out)
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        write_waits = True
                        break
                    except ssl.SSLWantReadError:
                        break  # needs the server's bytes first: reading is always watched
                    out = out[n:]
                    self._written(n)
                if deadline is not None and (not out or time.monotonic() >= deadline):
                    return  # everything queued left (or the server would not take it in time)
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if write_waits or read_waits else 0)
                if want != interest:
                    sel.modify(sock, want)
                    interest = want
                sock_ready = pending is not None and pending() > 0
                wait = 0.0 if sock_ready else None
                if deadline is not None and wait is None:
                    wait = max(0.0, deadline - time.monotonic())
                ready = sel.select(wait)
                for key, _ in ready:
                    if key.fileobj is wake:
                        with contextlib.suppress(OSError):
                            wake.recv(4096)
                    else:
                        sock_ready = True
                if not sock_ready:
                    continue
                # Read one chunk per turn (then write again).
                try:
                    data = sock.recv(_RECV)
                except (BlockingIOError, ssl.SSLWantReadError):
                    read_waits = False  # nothing yet, or TLS records without application data (tickets)
                    continue
                except ssl.SSLWantWriteError:
                    read_waits = True
                    continue
                read_waits = False
                if not data:
                    self._end(BrokenError("the server closed the connection"))
                    return
                if not self._lost:  # after close() the answers have nobody to go to
                    try:
                        self._feed(data)
                    except Exception as exc:  # SocklabError from the decoder; anything a callback raised
                        self._end(exc)
        except OSError as exc:
            self._end(ClosedError("the client closed the connection") if self.closed else
                      translate_oserror(exc, "talking to the server"))
        except Exception as exc:  # a bug here must still fail the waiting calls, not hang them
            self._end(exc)
        finally:
            sel.close()
            with self._cond:  # senders use these under the lock: never a closed (or reused) fd
                self._wake_w, wake_w = None, self._wake_w
                wake.close()
                if wake_w is not None:
                    wake_w.close()
                with contextlib.suppress(OSError):
                    sock.close()


class TcpChannel(_ThreadedChannel):
    """JSON-RPC over TCP with ndjson (default) or Content-Length framing."""

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *, timeout: float = 10.0,
                 framing: str = NDJSON, max_message: int = 64 * 1024 * 1024,
                 ssl_context: ssl.SSLContext | None = None, max_queued: int = MAX_QUEUED) -> None:
        super().__init__(on_message, on_lost, max_queued)
        self.framing = framing
        self.decoder = FrameDecoder(max_frame=max_message, mode=framing)
        self.sock = _connect(ep, timeout, ssl_context)
        self._start_reader(f"socklab-rpc-tcp-{ep.authority}")

    def _feed(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        while (ev := self.decoder.next_event()) is not None:
            if isinstance(ev, Frame):
                self.on_message(ev.data)

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        """Queue one message (returns before it is written; see :class:`_ThreadedChannel`).

        Raises:
            ClosedError, BrokenError, OperationTimeout: see ``_enqueue``.
        """
        frame = encode_frame(payload, self.framing)
        self._enqueue(len(frame), lambda: frame, timeout)


class WsChannel(_ThreadedChannel):
    """JSON-RPC over a WebSocket (RFC 6455) on a blocking socket, with wsproto."""

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, max_queued: int = MAX_QUEUED) -> None:
        super().__init__(on_message, on_lost, max_queued)
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.sock = _connect(ep, timeout, ssl_context)
        self._parts: list[str] = []
        try:
            self.sock.sendall(self.ws.send(wse.Request(host=ep.authority, target=ep.path)))
            accepted = False
            while not accepted:
                data = self.sock.recv(_RECV)
                if not data:
                    raise BrokenError("the server closed the connection during the WebSocket handshake")
                self.ws.receive_data(data)
                for ev in self.ws.events():
                    if isinstance(ev, wse.AcceptConnection):
                        accepted = True
                    elif isinstance(ev, wse.RejectConnection):
                        raise RemoteProtocolError(f"WebSocket upgrade refused: HTTP {ev.status_code}")
                    elif accepted:
                        self._event(ev)
        except BaseException as exc:
            self.sock.close()
            if isinstance(exc, OSError):
                raise translate_oserror(exc, "opening the WebSocket") from exc
            if isinstance(exc, wsproto.utilities.ProtocolError):
                raise RemoteProtocolError(f"WebSocket handshake failed: {exc}") from exc
            raise
        self._start_reader(f"socklab-rpc-ws-{ep.authority}")

    def _feed(self, data: bytes) -> None:
        events: list[wse.Event] = []
        error: wsproto.utilities.ProtocolError | None = None
        with self._cond:  # wsproto's state is shared with the senders' ws.send()
            try:
                self.ws.receive_data(data)
                events.extend(self.ws.events())
            except wsproto.utilities.ProtocolError as exc:
                error = exc
        for ev in events:  # callbacks run without the lock (they may send)
            self._event(ev)
        if error is not None:
            raise RemoteProtocolError(f"bad WebSocket data from the server: {error}") from error

    def _event(self, ev: wse.Event) -> None:
        if isinstance(ev, wse.TextMessage):
            self._parts.append(ev.data)
            if ev.message_finished:
                text = "".join(self._parts)
                self._parts.clear()
                self.on_message(text.encode())
        elif isinstance(ev, wse.BytesMessage):
            if ev.message_finished:
                self.on_message(bytes(ev.data))
        elif isinstance(ev, wse.Ping):
            self._send_event(ev.response())
        elif isinstance(ev, wse.CloseConnection):
            with contextlib.suppress(Exception):
                self._send_event(ev.response(), bounded=False)  # written before the socket closes
            raise BrokenError(f"the server closed the WebSocket ({ev.code} {ev.reason})".strip())

    def _send_event(self, event: wse.Event, size: int = 0, timeout: float | None = None, *,
                    bounded: bool = True) -> None:
        self._enqueue(size, lambda: self.ws.send(event), timeout, bounded=bounded)

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        """Queue one text message (returns before it is written; see :class:`_ThreadedChannel`).

        Raises:
            ClosedError, BrokenError, OperationTimeout: see ``_enqueue``.
        """
        self._send_event(wse.TextMessage(data=payload.decode()), len(payload), timeout)

    def close(self) -> None:
        """Send a close frame (RFC 6455 section 5.5.1), then close like the other channels."""
        if not self.closed:
            with contextlib.suppress(Exception):  # refused once the connection is over
                self._send_event(wse.CloseConnection(code=1000), bounded=False)
        super().close()


class HttpChannel(Channel):
    """JSON-RPC over HTTP/1.1 POST with keep-alive (h11): one round trip per message."""

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(on_message, on_lost)
        self.ep = ep
        self.connect_timeout = timeout
        self.ssl_context = ssl_context
        self.sock: socket.socket | None = None
        self.conn = h11.Connection(h11.CLIENT)
        self._used = False  # the current connection already carried a request
        self._answered = False  # the current request got answer bytes
        self._open()  # fail early when nothing listens

    def _open(self) -> None:
        self.sock = _connect(self.ep, self.connect_timeout, self.ssl_context)
        self.conn = h11.Connection(h11.CLIENT)
        self._used = False

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        if self.closed:
            raise ClosedError("this client was closed")
        with self._send_lock:
            try:
                try:
                    reused = self.sock is not None and self._used
                    self._answered = False
                    body = self._roundtrip(payload, timeout)
                except (OSError, h11.ProtocolError):
                    # A kept-alive connection the server closed while idle fails before any answer
                    # byte: the request was never read, so it is safe to send it once more on a new
                    # connection (what urllib3 does). Anything else is reported.
                    if not reused or self._answered or self.closed:
                        raise
                    self._drop()
                    body = self._roundtrip(payload, timeout)
            except OSError as exc:
                self._drop()
                raise translate_oserror(exc, f"posting to {self.ep.authority}{self.ep.path}") from exc
            except h11.ProtocolError as exc:
                self._drop()
                raise RemoteProtocolError(f"bad HTTP answer: {exc}") from exc
        if body:
            self.on_message(body)

    def _roundtrip(self, payload: bytes, timeout: float | None) -> bytes:
        if self.sock is None:
            self._open()
        assert self.sock is not None
        self.sock.settimeout(timeout)
        conn = self.conn
        out = conn.send(h11.Request(method="POST", target=self.ep.path, headers=[
            ("Host", self.ep.authority), ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))), ("Accept", "application/json")]))
        out += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
        self._used = True
        self.sock.sendall(out)
        status = 0
        body = bytearray()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = self.sock.recv(_RECV)
                self._answered = self._answered or bool(data)
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self._drop()
        if status == 204:
            return b""
        if status != 200:
            raise RemoteProtocolError(f"HTTP {status} from the server: {bytes(body[:200]).decode(errors='replace')}")
        return bytes(body)

    def close(self) -> None:
        self.closed = True
        self._drop()


def open_channel(ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *, timeout: float = 10.0,
                 framing: str = NDJSON, ssl_context: ssl.SSLContext | None = None) -> Channel:
    """Connect to ``ep`` with the channel its scheme names."""
    if ep.scheme == "tcp":
        return TcpChannel(ep, on_message, on_lost, timeout=timeout, framing=framing, ssl_context=ssl_context)
    if ep.scheme == "ws":
        return WsChannel(ep, on_message, on_lost, timeout=timeout, ssl_context=ssl_context)
    return HttpChannel(ep, on_message, on_lost, timeout=timeout, ssl_context=ssl_context)
