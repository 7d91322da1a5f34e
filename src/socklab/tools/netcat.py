"""``socklab connect`` and ``socklab listen``: a netcat that says what the connection is doing.

Why this exists: netcat is the first tool anyone reaches for to poke at a socket, and its most
filed complaint is end-of-file: does the tool half-close when stdin ends? does it exit when the
peer closes? ncat, netcat-openbsd and socat each answer differently, silently. Here the answer is
an explicit option, and ``--explain`` narrates each TCP transition as it happens:

- ``--on-stdin-eof shutdown`` (default): stdin ended, so send FIN with ``shutdown(SHUT_WR)`` - a
  *half-close*: we keep reading the peer's answer until it closes too (RFC 9293 section 3.6);
  ``close``: close the whole connection at once; ``keep``: do nothing, keep reading.
- ``--on-peer-eof exit`` (default): the peer sent FIN, so finish (after stdin is half-closed);
  ``keep``: the peer's FIN only ends its direction - keep sending stdin until it ends.

``connect`` uses one blocking socket, a thread reading stdin and the main thread reading the
socket (binary-safe, through file descriptors 0 and 1). ``listen`` (:mod:`socklab.tools.listen`)
serves on a socklab engine (``--engine``), one client or many (``--keep-open``), TCP, TLS, Unix
or UDP (one peer per source address), optionally running ``--exec CMD`` per connection with its
stdin/stdout on the socket.

Exit statuses: 0 success (including ``-z`` when at least one port accepts, as ``nc -z``), 1 a
network failure (refused, reset, timed out, idle timeout, ``-z`` with no port open), 2 a usage
error, 130 interrupted.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import click

from socklab.cli.options import make_tracer, run_cli, trace_options
from socklab.core.errors import (
    ConnectError,
    OperationTimeout,
    SocklabError,
    UsageError,
    translate_oserror,
)
from socklab.core.sockets import (
    Endpoint,
    client_ssl_context,
    connect_tcp,
    open_udp_socket,
)
from socklab.core.trace import Tracer, format_addr, tcp_state
from socklab.protocols.text import escape_peer_text

__all__ = ["CHUNK", "Explainer", "connect"]

CHUNK = 64 * 1024


class Explainer:
    """Prints ``--explain`` narration on stderr (and as trace notes when tracing)."""

    def __init__(self, enabled: bool, tracer: Tracer | None = None) -> None:
        self.enabled, self.tracer = enabled, tracer

    def __call__(self, text: str, sock: socket.socket | None = None) -> None:
        if not self.enabled:
            return
        state = tcp_state(sock) if sock is not None else None
        suffix = f"  [kernel: {state}]" if state else ""
        # notes quote addresses (a Unix client's path is its own choice) and errors: never raw
        sys.stderr.write(f"socklab: {escape_peer_text(text)}{suffix}\n")
        sys.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _crlf(data: bytes, last: list[int]) -> bytes:
    """LF -> CRLF (an LF already preceded by CR is left alone, across chunk boundaries)."""
    out = bytearray()
    prev = last[0]
    for b in data:
        if b == 0x0A and prev != 0x0D:
            out.append(0x0D)
        out.append(b)
        prev = b
    if data:
        last[0] = data[-1]
    return bytes(out)


def _hex(direction: str, data: bytes) -> None:
    from socklab.tools.tap.observe import hexdump

    sys.stderr.write(f"{direction} {len(data)} bytes\n" + "".join(f"  {ln}\n" for ln in hexdump(data)))
    sys.stderr.flush()


def _eof_options(func: Any) -> Any:
    func = click.option("--explain", is_flag=True,
                        help="Narrate each transition on stderr (FIN sent, CLOSE_WAIT, why we wait).")(func)
    func = click.option("--hex", "hexdump", is_flag=True, help="Dump what passes as hex on stderr.")(func)
    func = click.option("--crlf", is_flag=True, help="Send LF from stdin as CRLF (for SMTP, HTTP by hand).")(func)
    func = click.option("--on-peer-eof", type=click.Choice(["exit", "keep"]), default="exit", show_default=True,
                        help="When the peer sends FIN: exit (after half-closing), or keep sending stdin.")(func)
    func = click.option("--on-stdin-eof", type=click.Choice(["shutdown", "close", "keep"]), default="shutdown",
                        show_default=True,
                        help="When stdin ends: shutdown = send FIN and keep reading (half-close), close = "
                             "close now, keep = send nothing and keep reading.")(func)
    return func


# ---- connect --------------------------------------------------------------------------------------
def _ports(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise UsageError(f"bad port {part!r}: write N, N-M or N,M")
        if not 0 < a <= b <= 65535:
            raise UsageError(f"bad port range {part!r}")
        out.extend(range(a, b + 1))
    return out


def _scan(host: str, ports: list[int], timeout: float, explain: Explainer) -> int:
    """``-z``: which ports accept a TCP connection (connect, then close at once).

    Exit status as ``nc -z``: 0 when at least one port accepted, 1 when none did.
    """
    opened = 0
    for port in ports:
        try:
            sock = connect_tcp(Endpoint(host, port), timeout=timeout)
        except SocklabError as exc:
            click.echo(f"{format_addr((host, port))} closed: {exc}", err=True)
            continue
        opened += 1
        sock.close()
        click.echo(f"{format_addr((host, port))} open")
        explain("the three-way handshake completed, so something listens there; we closed at once")
    if len(ports) > 1:
        explain(f"{opened} of {len(ports)} ports open; exit status {0 if opened else 1} "
                "(0 if any port accepted, as nc -z)")
    return 0 if opened else 1


@dataclass
class _Session:
    """The shared state of the stdin thread and the socket reader of ``connect``."""

    sock: socket.socket
    udp: bool
    tls: bool
    on_stdin_eof: str
    explain: Explainer
    crlf: bool
    hexdump: bool
    stdin_done: bool = False
    wr_closed: bool = False
    closing: bool = False
    error: BaseException | None = None
    last_activity: float = 0.0

    def __post_init__(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        self.last_activity = time.monotonic()
        # An SSLSocket must not be written on one thread while another reads it (OpenSSL forbids
        # it; the write can fail or hang). With TLS the stdin thread hands its data to the main
        # thread, which owns every socket call; a plain socket is written directly.
        self.outbox: collections.deque[bytes] = collections.deque()

    def flush_outbox(self) -> None:
        """Send what the stdin thread queued (TLS only; the socket is non-blocking). Main thread."""
        while self.outbox:
            view = memoryview(self.outbox.popleft())
            while view:
                try:
                    n = self.sock.send(view)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    select.select([], [self.sock], [])  # the peer is slow to read: wait for room
                    continue
                view = view[n:]

    def pump_stdin(self) -> None:
        last = [0]
        try:
            while True:
                data = os.read(0, CHUNK)
                if not data:
                    break
                self.last_activity = time.monotonic()
                if self.crlf:
                    data = _crlf(data, last)
                if self.hexdump:
                    _hex(">>", data)
                if self.tls:
                    self.outbox.append(data)
                    os.write(self.wake_w, b"x")
                else:
                    self.sock.sendall(data)
        except OSError as exc:
            if not self.closing:
                self.error = exc
        self.stdin_done = True
        if self.error is None and not self.closing:
            self._stdin_eof()
        os.write(self.wake_w, b"x")

    def _stdin_eof(self) -> None:
        policy = self.on_stdin_eof
        if policy == "keep":
            self.explain("stdin ended; sending nothing (--on-stdin-eof keep), still reading the peer")
        elif policy == "close":
            self.explain("stdin ended: closing the connection (--on-stdin-eof close)", self.sock)
            self.closing = True
        elif self.udp:
            self.explain("stdin ended; UDP has no FIN, so the peer is not told - still reading replies "
                         "until --idle-timeout")
        elif self.tls:
            self.explain("stdin ended; TLS cannot half-close here (close_notify ends both directions), so we "
                         "keep reading until the peer closes")
        else:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            self.wr_closed = True
            self.explain("stdin ended -> we sent FIN (shutdown SHUT_WR): a half-close. We are in FIN_WAIT "
                         "and still read the peer until it sends its own FIN", self.sock)


def _run_session(session: _Session, on_peer_eof: str, idle_timeout: float, hexdump: bool) -> None:
    sock, explain = session.sock, session.explain
    threading.Thread(target=session.pump_stdin, name="socklab-stdin", daemon=True).start()
    peer_eof = False
    while True:
        try:
            session.flush_outbox()
        except OSError as exc:
            session.error = exc
        if session.error is not None:
            raise translate_oserror(session.error, "sending stdin")
        if session.closing:
            return
        if peer_eof and session.stdin_done:
            explain("both directions are finished: closing the socket", sock)
            return
        wait: float | None = None
        if idle_timeout > 0:
            wait = max(0.0, session.last_activity + idle_timeout - time.monotonic())
        elif session.udp and session.stdin_done:
            wait = 2.0  # UDP has no EOF: after stdin ended, give replies a moment
        rlist = [session.wake_r] + ([] if peer_eof else [sock])
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        ready = rlist if pending else select.select(rlist, [], [], wait)[0]
        if not ready:
            if session.udp and session.stdin_done:
                explain("no more replies: UDP has no EOF, so silence after stdin ended is the normal end")
                return
            raise OperationTimeout(f"no data either way for {idle_timeout:g} s (--idle-timeout)")
        if session.wake_r in ready:
            os.read(session.wake_r, 64)
            continue
        try:
            data = sock.recv(CHUNK)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue  # only TLS records without application data (session tickets): wait again
        except ssl.SSLError as exc:
            raise translate_oserror(exc, "reading TLS data") from exc
        except ConnectionRefusedError as exc:
            if session.udp:
                raise ConnectError(f"nothing listens there (ICMP port unreachable): {exc.strerror}") from exc
            raise
        except OSError as exc:
            if session.closing:
                return
            if exc.errno is not None and exc.errno in (104,):
                explain("the peer sent RST: the connection is reset (no FIN, unread data is lost)")
            raise translate_oserror(exc, "reading from the peer") from exc
        session.last_activity = time.monotonic()
        if data:
            if hexdump:
                _hex("<<", data)
            _write_all(1, data)
            continue
        if session.udp:
            continue  # an empty datagram is data too (zero bytes), not an EOF
        peer_eof = True
        if session.wr_closed:
            explain("peer sent FIN after ours: both sides finished (we close; our side keeps TIME_WAIT "
                    "for 60 s because we sent FIN first)", sock)
            return
        if on_peer_eof == "exit":
            explain("peer sent FIN -> we are in CLOSE_WAIT -> closing now because --on-peer-eof exit", sock)
            return
        explain("peer sent FIN -> we are in CLOSE_WAIT -> waiting for stdin EOF because --on-peer-eof keep "
                "(we may still send)", sock)


@click.command()
@click.argument("host")
@click.argument("port", required=False)
@click.option("--udp", "-u", is_flag=True, help="Use UDP (each stdin read is one datagram).")
@click.option("--unix", "unix", metavar="PATH", default=None, help="Connect to a Unix stream socket.")
@click.option("--tls", is_flag=True, help="Speak TLS to the server.")
@click.option("--cafile", metavar="PEM", default=None, help="Trust this CA bundle for --tls.")
@click.option("--insecure", is_flag=True, help="Do not verify the server certificate (testing only).")
@click.option("--server-name", metavar="NAME", default=None, help="Name to verify (SNI) for --tls.")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the handshake.")
@click.option("--idle-timeout", type=float, default=0.0, show_default=True,
              help="Exit with status 1 after this many seconds without data either way (0 = never).")
@click.option("-z", "scan", is_flag=True, help="Only check which ports of PORT (N, N-M or N,M) accept connections; "
                                               "exit 0 if any does (as nc -z), 1 if none.")
@_eof_options
@trace_options
@run_cli
def connect(host: str, port: str | None, udp: bool, unix: str | None, tls: bool, cafile: str | None,
            insecure: bool, server_name: str | None, connect_timeout: float, idle_timeout: float, scan: bool,
            on_stdin_eof: str, on_peer_eof: str, crlf: bool, hexdump: bool, explain: bool, trace: bool,
            trace_json: str | None) -> None:
    """Connect to HOST PORT and join stdin/stdout to the socket (binary-safe).

    \b
    Examples:
      printf 'GET / HTTP/1.0\\r\\n\\r\\n' | socklab connect example.test 80 --explain
      socklab connect 127.0.0.1 7007 --on-peer-eof keep       # keep sending after the server's FIN
      socklab connect -z 127.0.0.1 8000-8010                   # which ports accept connections?
      socklab connect unix:/tmp/app.sock
    """
    tracer = make_tracer("client", trace, trace_json)
    ex = Explainer(explain, tracer)
    if host.startswith("unix:"):
        unix = host[5:]
    if scan:
        if port is None:
            raise UsageError("-z needs a PORT (N, N-M or N,M)")
        sys.exit(_scan(host, _ports(port), connect_timeout, ex))
    if unix is None:
        if port is None or not port.isdigit():
            raise UsageError("connect needs HOST PORT (or unix:/path)")
        endpoint = Endpoint(host.strip("[]"), int(port))
    else:
        endpoint = Endpoint(unix=unix)
    if udp:
        if unix is not None:
            raise UsageError("--udp and Unix sockets do not mix here")
        sock = open_udp_socket("", 0, connect_to=(endpoint.host, endpoint.port), tracer=tracer)
        ex(f"UDP socket ready for {endpoint}: no handshake happened, nothing is known about the peer yet")
    else:
        ex(f"connecting to {endpoint}: SYN sent, waiting for SYN-ACK")
        sock = connect_tcp(endpoint, timeout=connect_timeout, tracer=tracer)
        ex("SYN-ACK received, ACK sent: ESTABLISHED (three-way handshake done)", sock)
        if tls:
            ctx = client_ssl_context(cafile, insecure)
            name = server_name or endpoint.host or None
            sock.settimeout(connect_timeout)
            try:
                sock = ctx.wrap_socket(sock, server_hostname=name)
            except (OSError, ssl.SSLError) as exc:
                raise translate_oserror(exc, f"TLS handshake with {endpoint}") from exc
            # Non-blocking from here on: TLS 1.3 session tickets make the socket readable with no
            # application data behind them, and a blocking SSL recv() would then wait forever.
            sock.setblocking(False)
            cipher = sock.cipher()
            ex(f"TLS handshake done ({sock.version()}, {cipher[0] if cipher else '?'})")
    session = _Session(sock, udp, tls, on_stdin_eof, ex, crlf, hexdump)
    try:
        _run_session(session, on_peer_eof, idle_timeout, hexdump)
    finally:
        session.closing = True
        if tracer:
            tracer.emit("close", sock)
        sock.close()
