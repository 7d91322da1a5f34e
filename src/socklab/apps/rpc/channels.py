"""The client's byte pipes: TCP (framed), HTTP POST (h11) and WebSocket (wsproto), all blocking.

Why this exists: the client's logic (ids, futures, timeouts, reconnect) should not care how a
message travels. A channel offers ``send(payload)`` and delivers every message that arrives to
``on_message(payload)``; when the connection dies it calls ``on_lost(exc)`` once. TCP and
WebSocket channels read on a thread of their own, so many calls can be in flight; the HTTP
channel does one POST per message in the caller's thread (HTTP/1.1 answers in order, so a call
waits its turn - send a batch to do several at once).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import wsproto
import wsproto.events as wse

from socklab.core.errors import (
    BrokenError,
    ClosedError,
    RemoteProtocolError,
    SocklabError,
    UsageError,
    translate_oserror,
)
from socklab.protocols.framing import NDJSON, Frame, FrameDecoder, encode_frame

__all__ = ["Channel", "Endpoint", "HttpChannel", "TcpChannel", "WsChannel", "open_channel", "parse_url",
           "tls_context"]

OnMessage = Callable[[bytes], None]
OnLost = Callable[[BaseException], None]
_RECV = 64 * 1024


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
    ctx = ssl.create_default_context(cafile=cafile)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


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
    """A connection that carries JSON-RPC messages."""

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
    """A socket read by a daemon thread."""

    sock: socket.socket
    _thread: threading.Thread

    def _start_reader(self, name: str) -> None:
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._read_loop, name=name, daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        reason: BaseException = BrokenError("the server closed the connection")
        try:
            while True:
                data = self.sock.recv(_RECV)
                if not data:
                    break
                self._feed(data)
        except OSError as exc:
            reason = ClosedError("the client closed the connection") if self.closed else \
                translate_oserror(exc, "reading an answer")
        except SocklabError as exc:
            reason = exc
        self._report_lost(reason)

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _sendall(self, data: bytes) -> None:
        if self.closed:
            raise ClosedError("this client was closed")
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError as exc:
            raise translate_oserror(exc, "sending a request") from exc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        self.sock.close()


class TcpChannel(_ThreadedChannel):
    """JSON-RPC over TCP with ndjson (default) or Content-Length framing."""

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *, timeout: float = 10.0,
                 framing: str = NDJSON, max_message: int = 64 * 1024 * 1024,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(on_message, on_lost)
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
        self._sendall(encode_frame(payload, self.framing))


class WsChannel(_ThreadedChannel):
    """JSON-RPC over a WebSocket (RFC 6455) on a blocking socket, with wsproto."""

    def __init__(self, ep: Endpoint, on_message: OnMessage, on_lost: OnLost, *, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(on_message, on_lost)
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
        try:
            self.ws.receive_data(data)
            for ev in self.ws.events():
                self._event(ev)
        except wsproto.utilities.ProtocolError as exc:
            raise RemoteProtocolError(f"bad WebSocket data from the server: {exc}") from exc

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
                self._send_event(ev.response())
            raise BrokenError(f"the server closed the WebSocket ({ev.code} {ev.reason})".strip())

    def _send_event(self, event: wse.Event) -> None:
        if self.closed:
            raise ClosedError("this client was closed")
        try:
            with self._send_lock:
                self.sock.sendall(self.ws.send(event))
        except OSError as exc:
            raise translate_oserror(exc, "sending a request") from exc

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        self._send_event(wse.TextMessage(data=payload.decode()))

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._send_event(wse.CloseConnection(code=1000))
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
