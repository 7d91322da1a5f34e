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

``connect`` is a client on the servers' contract (:mod:`socklab.runtime.client`): an engine
owns the connection and its callbacks write to stdout, a thread reads stdin (binary-safe, through
file descriptors 0 and 1); OS errors come translated from the engine. ``listen`` (:mod:`socklab.tools.listen`)
serves on a socklab engine (``--engine``), one client or many (``--keep-open``), TCP, TLS, Unix
or UDP (one peer per source address), optionally running ``--exec CMD`` per connection with its
stdin/stdout on the socket.

Exit statuses: 0 success (including ``-z`` when at least one port accepts, as ``nc -z``), 1 a
network failure (refused, reset, timed out, idle timeout, ``-z`` with no port open), 2 a usage
error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import click

from socklab.cli.options import Number, build_settings, make_tracer, options_from, run_cli, trace_options
from socklab.core.errors import (
    BrokenError,
    ConnectError,
    ConnectionRefused,
    OperationTimeout,
    SocklabError,
    UsageError,
)
from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.settings import ClientSettings, best_engine
from socklab.core.sockets import Endpoint
from socklab.core.trace import Tracer, format_addr
from socklab.protocols.text import escape_peer_text
from socklab.runtime.client import BlockingClient

__all__ = ["CHUNK", "Explainer", "connect"]

CHUNK = 64 * 1024
_GATE_HIGH, _GATE_LOW, _GATE_POLL = 1 << 20, 256 * 1024, 0.005  # stdin held back above 1 MiB unsent
_ENGINE_HIGH = 64 << 20  # never reached: the gate stops stdin first


class Explainer:
    """Prints ``--explain`` narration on stderr (and as trace notes when tracing)."""

    def __init__(self, enabled: bool, tracer: Tracer | None = None) -> None:
        self.enabled, self.tracer = enabled, tracer

    def __call__(self, text: str, transport: Any = None) -> None:
        """Say ``text``; with ``transport``, beside the kernel's TCP state (``transport.tcp_state()``)."""
        if not self.enabled:
            return
        state = transport.tcp_state() if transport is not None else None
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


def _scan(host: str, ports: list[int], settings: ClientSettings, explain: Explainer) -> int:
    """``-z``: which ports accept a TCP connection (connect, then close at once; no TLS).

    Exit status as ``nc -z``: 0 when at least one port accepted, 1 when none did.
    """
    opened = 0
    # connect and close: nothing to read meanwhile, so the engine turns on this thread while it waits
    with BlockingClient(settings.replace(tls=False, pin=None), background=False) as client:
        for port in ports:
            try:
                handle = client.connect(Endpoint(host, port), Protocol)
            except SocklabError as exc:
                click.echo(f"{format_addr((host, port))} closed: {exc}", err=True)
                continue
            opened += 1
            client.call(handle.transport.close)
            click.echo(f"{format_addr((host, port))} open")
            explain("the three-way handshake completed, so something listens there; we closed at once")
    if len(ports) > 1:
        explain(f"{opened} of {len(ports)} ports open; exit status {0 if opened else 1} "
                "(0 if any port accepted, as nc -z)")
    return 0 if opened else 1


class _Session:
    """One ``connect`` session: stdin (a thread) to the peer, the peer (the engine's callbacks) to stdout.

    The engine owns the connection; the stdin thread hands each read to it (waiting while the
    transport's buffer is over its high-water mark: the peer does not read). The main thread waits
    for ``done`` (or the idle timeout). The engine keeps a thread of its own (``BlockingClient``'s
    default): stdin needs a thread anyway, and the peer is read whatever the main thread does.
    """

    def __init__(self, client: BlockingClient, udp: bool, on_stdin_eof: str, on_peer_eof: str,
                 explain: Explainer, crlf: bool, hexdump: bool, quit_after: float | None = None) -> None:
        self.client, self.udp, self.on_stdin_eof, self.on_peer_eof = client, udp, on_stdin_eof, on_peer_eof
        self.explain, self.crlf, self.hexdump, self.quit_after = explain, crlf, hexdump, quit_after
        self.transport: Any = None
        self.stdin_done = False
        self.wr_closed = False
        self.peer_eof = False
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.can_write = threading.Event()
        self.can_write.set()
        self.activity = threading.Event()  # set on each byte either way (the idle timer restarts)
        self.last_activity = time.monotonic()

    def sock(self) -> Any:
        """The transport, for --explain to show its kernel state beside a step (``tcp_state()``)."""
        return self.transport if self.transport is not None and not self.udp else None

    def finish(self, error: BaseException | None = None) -> None:
        if self.error is None:
            self.error = error
        self.done.set()
        self.activity.set()  # wakes the main thread

    def touched(self) -> None:
        self.last_activity = time.monotonic()
        self.activity.set()

    # ---- the stdin thread --------------------------------------------------------------------------
    def pump_stdin(self) -> None:
        last = [0]
        try:
            while not self.done.is_set():
                self.can_write.wait()
                data = os.read(0, CHUNK)
                if not data:
                    break
                self.touched()
                if self.crlf:
                    data = _crlf(data, last)
                if self.hexdump:
                    _hex(">>", data)
                self.client.engine.call_soon_threadsafe(lambda d=data: self._send(d))  # type: ignore[misc]
        except OSError as exc:
            err = SocklabError(f"reading stdin: {exc.strerror or exc}")
            self.client.engine.call_soon_threadsafe(lambda: self.finish(err))
            return
        self.client.engine.call_soon_threadsafe(self._stdin_eof)

    # ---- the engine's thread -----------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self.transport is None or self.done.is_set():
            return
        if self.udp:
            self.transport.sendto(data)
            return
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > _GATE_HIGH:
            self.can_write.clear()  # the stdin thread waits; the engine keeps reading the peer
            self.client.engine.call_later(_GATE_POLL, self._drained)

    def _drained(self) -> None:
        if self.done.is_set() or self.transport is None or self.transport.get_write_buffer_size() <= _GATE_LOW:
            self.can_write.set()
        else:
            self.client.engine.call_later(_GATE_POLL, self._drained)

    def _stdin_eof(self) -> None:
        self.stdin_done = True
        if self.done.is_set():
            return
        policy = self.on_stdin_eof
        if policy == "keep":
            self.explain("stdin ended; sending nothing (--on-stdin-eof keep), still reading the peer")
        elif policy == "close":
            self.explain("stdin ended: closing the connection (--on-stdin-eof close)", self.sock())
            self.finish()
        elif self.udp:
            self.explain("stdin ended; UDP has no FIN, so the peer is not told - still reading replies "
                         "until --idle-timeout")
        elif not self.transport.can_write_eof():
            self.explain("stdin ended; this TLS cannot half-close (close_notify would end both directions), "
                         "so we keep reading until the peer closes")
        else:
            self.transport.write_eof()
            self.wr_closed = True
            tls = "TLS close_notify, then " if self.transport.get_extra_info("ssl_object") is not None else ""
            self.explain(f"stdin ended -> we sent {tls}FIN (shutdown SHUT_WR): a half-close. We are in FIN_WAIT "
                         "and still read the peer until it sends its own FIN", self.sock())
        if self.peer_eof and not self.done.is_set():
            self.explain("both directions are finished: closing the socket", self.sock())
            self.finish()
        if self.quit_after is not None and not self.done.is_set():
            self.explain(f"quitting in {self.quit_after:g} s (--quit-after, nc -q) unless the peer finishes "
                         "first; its data goes on to stdout until then")
            self.client.engine.call_later(self.quit_after, self._quit)
        self.activity.set()  # the main thread re-reads stdin_done (UDP: the end of replies)

    def _quit(self) -> None:
        if not self.done.is_set():
            self.explain(f"{self.quit_after:g} s since stdin ended (--quit-after): closing, exit status 0",
                         self.sock())
            self.finish()

    def received(self, data: bytes) -> None:
        self.touched()
        if self.hexdump:
            _hex("<<", data)
        _write_all(1, data)

    def peer_finished(self) -> bool:
        """The peer sent FIN: finish, or keep the connection half-open (True) while stdin goes on."""
        self.peer_eof = True
        if self.wr_closed:
            self.explain("peer sent FIN after ours: both sides finished (we close; our side keeps TIME_WAIT "
                         "for 60 s because we sent FIN first)", self.sock())
            self.finish()
            return False
        if self.stdin_done:
            self.explain("peer sent FIN and stdin had ended: both directions are finished, closing", self.sock())
            self.finish()
            return False
        if self.on_peer_eof == "exit":
            self.explain("peer sent FIN -> we are in CLOSE_WAIT -> closing now because --on-peer-eof exit",
                         self.sock())
            self.finish()
            return False
        self.explain("peer sent FIN -> we are in CLOSE_WAIT -> waiting for stdin EOF because --on-peer-eof keep "
                     "(we may still send)", self.sock())
        return True

    def lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, BrokenError) and "reset" in str(exc):
            self.explain("the peer sent RST: the connection is reset (no FIN, unread data is lost)")
        self.finish(exc if exc is not None or self.done.is_set() or self.peer_eof
                    else BrokenError("the connection closed"))

    # ---- the main thread ---------------------------------------------------------------------------
    def wait(self, idle_timeout: float) -> None:
        """Until the session is over; raises why it failed (or OperationTimeout when idle)."""
        while not self.done.is_set():
            wait: float | None = None
            if idle_timeout > 0:
                wait = max(0.0, self.last_activity + idle_timeout - time.monotonic())
            elif self.udp and self.stdin_done and self.quit_after is None:
                wait = max(0.0, self.last_activity + 2.0 - time.monotonic())  # UDP has no EOF
            self.activity.clear()
            if self.done.is_set() or self.activity.wait(wait):
                continue
            if self.done.is_set():
                break
            if self.udp and self.stdin_done and idle_timeout <= 0 and self.quit_after is None:
                self.explain("no more replies: UDP has no EOF, so silence after stdin ended is the normal end")
                return
            raise OperationTimeout(f"no data either way for {idle_timeout:g} s (--idle-timeout)")
        if self.error is not None:
            raise self.error


class _StreamSide(Protocol):
    def __init__(self, session: _Session) -> None:
        self.session = session

    def connection_made(self, transport: Any) -> None:
        self.transport = self.session.transport = transport
        # The engine stops reading while its write buffer is over the high-water mark. A pipe to a
        # peer that does the same (an echo) would then deadlock, each side waiting for the other to
        # read; so the session holds stdin back itself, well below that mark (see _Session._send).
        transport.set_write_buffer_limits(high=_ENGINE_HIGH)

    def data_received(self, data: bytes) -> None:
        self.session.received(data)

    def eof_received(self) -> bool | None:
        return self.session.peer_finished()

    def pause_writing(self) -> None:
        self.session.can_write.clear()

    def resume_writing(self) -> None:
        self.session.can_write.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.session.can_write.set()
        self.session.lost(exc)


class _DatagramSide(DatagramProtocol):
    def __init__(self, session: _Session) -> None:
        self.session = session

    def connection_made(self, transport: Any) -> None:
        self.transport = self.session.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.session.received(data)  # an empty datagram is data too (zero bytes), not an EOF

    def error_received(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionRefused):
            exc = ConnectError(f"nothing listens there (ICMP port unreachable): {exc}")
        self.session.finish(exc)


@click.command()
@click.argument("host")
@click.argument("port", required=False)
@click.option("--udp", "-u", is_flag=True, help="Use UDP (each stdin read is one datagram).")
@click.option("--unix", "unix", metavar="PATH", default=None, help="Connect to a Unix stream socket.")
@options_from(ClientSettings)
@click.option("--idle-timeout", type=Number(float, 0), default=0.0, show_default=True,
              help="Exit with status 1 after this many seconds without data either way (0 = never).")
@click.option("--quit-after", type=Number(float, 0), default=None, metavar="SECS",
              help="Once stdin ended (and --on-stdin-eof was applied), exit with status 0 after SECS even if "
                   "the peer is still open; its data goes on to stdout until then (nc -q SECS).")
@click.option("-z", "scan", is_flag=True, help="Only check which ports of PORT (N, N-M or N,M) accept connections; "
                                               "exit 0 if any does (as nc -z), 1 if none.")
@_eof_options
@trace_options
@run_cli
def connect(host: str, port: str | None, udp: bool, unix: str | None, idle_timeout: float,
            quit_after: float | None, scan: bool, on_stdin_eof: str, on_peer_eof: str, crlf: bool, hexdump: bool,
            explain: bool, trace: bool, trace_json: str | None, **values: Any) -> None:
    """Connect to HOST PORT and join stdin/stdout to the socket (binary-safe).

    \b
    Examples:
      printf 'GET / HTTP/1.0\\r\\n\\r\\n' | socklab connect example.test 80 --explain
      socklab connect 127.0.0.1 7007 --on-peer-eof keep       # keep sending after the server's FIN
      socklab connect -z 127.0.0.1 8000-8010                   # which ports accept connections?
      socklab connect unix:/tmp/app.sock
      socklab connect 127.0.0.1:7007                            # HOST:PORT works too
      socklab connect 127.0.0.1 7443 --pin AB:CD:…             # TLS to a --tls-self-signed server
      socklab connect 127.0.0.1 7007 --source 127.0.0.2        # from this local address
    """
    tracer = make_tracer("client", trace, trace_json)
    ex = Explainer(explain, tracer)
    if host.startswith("unix:"):
        unix = host[5:]
    elif port is None and ":" in host and host.rsplit(":", 1)[1].replace("-", "").replace(",", "").isdigit():
        host, port = host.rsplit(":", 1)  # HOST:PORT, [::1]:PORT, like every other socklab command
    settings = build_settings(ClientSettings, values,
                              transport="udp" if udp else "unix" if unix is not None else "tcp")
    if udp and settings.uses_tls:
        raise UsageError("--tls needs a stream: drop --udp or --tls")
    if scan:
        if port is None:
            raise UsageError("-z needs a PORT (N, N-M or N,M)")
        sys.exit(_scan(host, _ports(port), settings, ex))
    if unix is None:
        if port is None or not port.isdigit():
            raise UsageError("connect needs HOST PORT (or unix:/path)")
        endpoint = Endpoint(host.strip("[]"), int(port))
    else:
        endpoint = Endpoint(unix=unix)
    if udp and unix is not None:
        raise UsageError("--udp and Unix sockets do not mix here")
    # a reactor engine (epoll on Linux), whose TLS half-closes (close_notify, then FIN): what
    # --on-stdin-eof shutdown (nc --ssl -N) needs
    with BlockingClient(settings, engine=best_engine(), tracer=tracer) as client:
        session = _Session(client, udp, on_stdin_eof, on_peer_eof, ex, crlf, hexdump, quit_after)
        if udp:
            client.open_datagram(endpoint, lambda: _DatagramSide(session))
            ex(f"UDP socket ready for {endpoint}: no handshake happened, nothing is known about the peer yet")
        else:
            ex(f"connecting to {endpoint}" + (f" from {settings.source}" if settings.source else "")
               + ": SYN sent, waiting for SYN-ACK")
            client.connect(endpoint, lambda: _StreamSide(session))
            ex("SYN-ACK received, ACK sent: ESTABLISHED (three-way handshake done)", session.sock())
            if settings.uses_tls and explain:  # on the engine's thread: it is reading the TLS object now
                client.call(lambda: _explain_tls(ex, session.transport, settings.pin))
        threading.Thread(target=session.pump_stdin, name="socklab-stdin", daemon=True).start()
        try:
            session.wait(idle_timeout)
        finally:
            session.done.set()
            session.can_write.set()
            if session.transport is not None:
                client.call(session.transport.close)


def _explain_tls(ex: Explainer, transport: Any, pin: str | None) -> None:
    cipher = transport.get_extra_info("cipher")
    ex(f"TLS handshake done ({transport.get_extra_info('tls_version') or 'TLS'}, {cipher[0] if cipher else '?'})")
    if pin is not None:
        from socklab.core.selfsigned import fingerprint

        der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        ex(f"the server's certificate has SHA-256 {fingerprint(der)}: the one --pin names (no CA was asked)")
