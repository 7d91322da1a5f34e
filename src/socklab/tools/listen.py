"""``socklab listen``: the server half of socklab's netcat, on a socklab engine.

Why this exists: see :mod:`socklab.tools.netcat` (the EOF policies and ``--explain`` are shared).
``listen`` serves on a socklab engine (``--engine``), one client or many (``--keep-open``), TCP,
TLS, Unix or UDP (one peer per source address), optionally running ``--exec CMD`` per connection
with its stdin/stdout on the socket. ``--explain`` follows who closed first: the side that sends
FIN first goes FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT, the other CLOSE_WAIT -> LAST_ACK.

TLS without ``--keep-open``: the one client is the first one that completes the handshake *and*
then sends something (data, or its close). A client can refuse our certificate after its side of
the handshake is done - ``connect --pin`` with another fingerprint checks it then and resets the
connection - and the server's handshake has succeeded by then, so such a client (gone by an
abort before saying anything) is not counted: listen says so and keeps waiting, with the
listening socket open until a client has spoken; a client arriving while one is being served is
turned away at once. A client whose handshake fails never reaches listen at all. (ncat ``-l
--ssl`` without ``-k`` closes its listening socket at accept and exits with status 1 when the
handshake fails; listen keeps waiting instead, so a mistyped pin does not end the session.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import click

from socklab.cli.options import (
    Number,
    build_settings,
    make_tracer,
    options_from,
    run_cli,
    trace_options,
)
from socklab.core.errors import UsageError
from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.settings import ServerSettings, setting
from socklab.core.sockets import parse_endpoint
from socklab.core.trace import format_addr
from socklab.core.transport import DatagramTransport, Transport
from socklab.runtime import Server, serve_until_signalled
from socklab.tools.netcat import CHUNK, Explainer, _crlf, _eof_options, _hex, _write_all

__all__ = ["ListenSettings", "listen"]


@dataclass
class ListenSettings(ServerSettings):
    """``socklab listen``: a server whose idle timeout is off unless asked (netcat waits forever)."""

    idle_timeout: float = setting(0.0, "Close a connection silent for this many seconds (0 = never).")
    shutdown_timeout: float = setting(1.0, "Seconds to let connections finish after Ctrl-C.")


class _Hub:
    """What the stdin thread and the connections share (runs on the engine thread)."""

    def __init__(self, server: Server, *, keep_open: bool, on_stdin_eof: str, on_peer_eof: str,
                 explain: Explainer, hexdump: bool, execute: str | None, quit_after: float | None = None,
                 tls: bool = False) -> None:
        self.server, self.keep_open, self.quit_after = server, keep_open, quit_after
        # TLS, one client: it counts once it has spoken (see the module docstring); until then the
        # listening socket stays open
        self.one_tls = tls and not keep_open and not execute
        self.on_stdin_eof, self.on_peer_eof = on_stdin_eof, on_peer_eof
        self.explain, self.hexdump, self.execute = explain, hexdump, execute
        self.conns: set[_ListenConn] = set()
        self.udp: _ListenUdp | None = None
        self.stdin_eof = False
        self.served = 0
        self.have_peer = threading.Event()  # stdin is read only once someone can receive it

    def output(self, data: bytes) -> None:
        if self.hexdump:
            _hex("<<", data)
        try:
            _write_all(1, data)
        except OSError:
            self.server.engine.stop()  # stdout went away (| head): nothing more to do

    def from_stdin(self, data: bytes) -> None:
        if self.hexdump:
            _hex(">>", data)
        for conn in list(self.conns):
            conn.transport.write(data)
        if self.udp is not None:
            self.udp.send_all(data)

    def stdin_ended(self) -> None:
        self.stdin_eof = True
        for conn in list(self.conns):
            conn.apply_stdin_eof()
        if self.quit_after is not None:
            self.explain(f"stdin ended: exiting in {self.quit_after:g} s (--quit-after, nc -q); what clients "
                         "send goes on to stdout until then")
            self.server.engine.call_later(self.quit_after, self.server.engine.stop)

    def finished(self, conn: _ListenConn) -> None:
        self.conns.discard(conn)
        if not self.keep_open:
            self.explain("the client is gone and --keep-open is off: exiting")
            self.server.engine.stop()


class _ListenConn(Protocol):
    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.proc: subprocess.Popen[bytes] | None = None
        # Who sent FIN first decides the states: the first closer goes FIN_WAIT1 -> FIN_WAIT2 ->
        # TIME_WAIT (the active close), the other CLOSE_WAIT -> LAST_ACK (the passive close).
        self.fin_sent = False
        self.fin_received = False
        self.handed_over = False  # --exec: the socket was handed to the program (transport.detach)
        self.spoke = False  # TLS, one client: it sent data or its close (it is listen's one client)
        self.turned_away = False  # TLS, one client: another client is being served

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        hub = self.hub
        peer = format_addr(transport.get_extra_info("peername"))
        if hub.one_tls:
            if transport.is_closing():
                # the client reset the connection as our handshake ended (the session ticket's send
                # failed), before this call: the TLS layer reports no connection_lost after it
                hub.explain(f"{peer} went away as the TLS handshake ended (it refused our certificate?): not "
                            "counted as the one client; still waiting for one")
                return
            if hub.served:
                self.turned_away = True
                hub.explain(f"turning {peer} away: already serving a client and --keep-open is off")
                transport.close()
                return
            hub.explain(f"accepted {peer}, TLS handshake done: it is the one client (no --keep-open) once it "
                        "sends something; gone before that (it refused our certificate), and we keep waiting")
        elif not hub.keep_open:
            # one client only, as netcat does without -k; deferred: we are inside the accept loop
            hub.server.engine.call_soon_threadsafe(hub.server.engine.close_listeners)
        hub.served += 1
        if not hub.one_tls:
            hub.explain(f"accepted {peer}: accept() returned a new connected socket (ESTABLISHED)"
                        + ("" if hub.keep_open else "; no --keep-open, so the listening socket is closed now"))
        hub.conns.add(self)
        hub.have_peer.set()
        if hub.execute:
            self._exec(hub.execute)
        elif hub.stdin_eof:
            self.apply_stdin_eof()

    def _exec(self, cmd: str) -> None:
        # The program owns the socket now: the engine hands it over (transport.detach) and stops
        # watching it; this connection ends for the engine, and for the hub when the program exits.
        self.handed_over = True
        sock = self.transport.detach()
        self.hub.explain(f"running {cmd!r} with its stdin and stdout on the socket")
        try:
            self.proc = subprocess.Popen(cmd, shell=True, stdin=sock.fileno(), stdout=sock.fileno(), close_fds=True)
        except BaseException:
            self.hub.finished(self)
            raise
        finally:
            sock.close()  # the program has its own copy
        proc, engine, hub = self.proc, self.hub.server.engine, self.hub

        def reap() -> None:
            proc.wait()
            engine.call_soon_threadsafe(lambda: hub.finished(self))
        threading.Thread(target=reap, name="socklab-exec", daemon=True).start()

    def apply_stdin_eof(self) -> None:
        if self.hub.execute:
            return
        policy = self.hub.on_stdin_eof
        if policy == "shutdown":
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.fin_sent = True
                if self.fin_received:
                    self.hub.explain("stdin ended -> FIN sent to the client, which had already sent its own: "
                                     "CLOSE_WAIT -> LAST_ACK (waiting for the ACK of our FIN), then gone")
                else:
                    self.hub.explain("stdin ended -> FIN sent to the client first (half-close, shutdown "
                                     "SHUT_WR): FIN_WAIT1, FIN_WAIT2 once it is ACKed; still reading the "
                                     "client until its FIN")
            else:
                self.hub.explain("stdin ended; this connection cannot half-close (its engine's TLS cannot): "
                                 "still reading")
        elif policy == "close":
            if self.fin_received:
                self.hub.explain("stdin ended: closing the connection (--on-stdin-eof close); the client "
                                 "closed first, so ours is the passive close: LAST_ACK, then gone")
            else:
                self.hub.explain("stdin ended: closing the connection first (--on-stdin-eof close): FIN sent, "
                                 "FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT on our side once the client closes too")
            self.fin_sent = True
            self.transport.close()

    def _spoke(self) -> None:
        if self.spoke or not self.hub.one_tls:
            return
        self.spoke = True
        self.hub.explain("the client spoke: it is the one client (no --keep-open), so the listening socket "
                         "is closed now")
        self.hub.server.engine.call_soon_threadsafe(self.hub.server.engine.close_listeners)

    def data_received(self, data: bytes) -> None:
        self._spoke()
        self.hub.output(data)

    def eof_received(self) -> bool | None:
        hub = self.hub
        self._spoke()
        self.fin_received = True
        if self.fin_sent:
            hub.explain("client sent FIN after ours: both directions are finished. We closed first (the "
                        "active close: FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT), so our side of this "
                        "connection stays in TIME_WAIT for 60 s (ss shows it); the client's is gone")
            return None
        if hub.on_peer_eof == "keep" and not hub.stdin_eof:
            hub.explain("client sent FIN first -> this connection is in CLOSE_WAIT -> waiting for stdin EOF "
                        "because --on-peer-eof keep (we may still send)")
            return True
        hub.explain("client sent FIN first -> CLOSE_WAIT -> closing our side (the passive close: LAST_ACK "
                    "until our FIN is ACKed, then gone; the client keeps the TIME_WAIT)")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        hub = self.hub
        if self.turned_away:
            return
        if hub.one_tls and not self.spoke and exc is not None:
            # gone by an abort before a byte: a client that refused our certificate after the
            # handshake (connect --pin with another fingerprint) - not the one client
            hub.conns.discard(self)
            hub.served -= 1
            hub.explain(f"the client went away before sending anything ({exc}): it refused our certificate? "
                        "not counted as the one client; still waiting for one")
            return
        if exc is not None:
            hub.explain(f"connection lost: {exc}")
        if not self.handed_over:  # (with --exec the program's exit ends it: see _exec)
            self.hub.finished(self)


class _ListenUdp(DatagramProtocol):
    """UDP: every source address is a peer of its own (there are no connections to accept)."""

    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.peers: dict[Any, float] = {}
        self.out: DatagramTransport | None = None
        hub.udp = self

    def connection_made(self, transport: DatagramTransport) -> None:
        self.out = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr not in self.peers:
            if self.peers and not self.hub.keep_open:
                self.hub.explain(f"ignoring a datagram from {format_addr(addr)}: serving only the first peer "
                                 "(use --keep-open for many)")
                return
            self.hub.explain(f"new UDP peer {format_addr(addr)}: UDP has no accept(), peers are told apart "
                             "by their source address")
        self.peers[addr] = time.monotonic()
        self.hub.have_peer.set()
        self.hub.output(data)

    def send_all(self, data: bytes) -> None:
        if self.out is None:
            return
        if not self.peers:
            self.hub.explain("stdin data but no UDP peer yet: dropped (we learn a peer from its first datagram)")
        for addr in self.peers:
            self.out.sendto(data, addr)


def _stdin_thread(server: Server, hub: _Hub, crlf: bool) -> None:
    last = [0]
    hub.have_peer.wait()
    try:
        while True:
            data = os.read(0, CHUNK)
            if not data:
                break
            if crlf:
                data = _crlf(data, last)
            server.call_soon_threadsafe(lambda d=data: hub.from_stdin(d))  # type: ignore[misc]
    except OSError:
        pass
    with contextlib.suppress(Exception):  # the engine may have stopped already
        server.call_soon_threadsafe(hub.stdin_ended)


@click.command()
@click.argument("args", nargs=-1, metavar="[HOST] PORT")
@click.option("--udp", "-u", is_flag=True, help="Listen for UDP datagrams.")
@click.option("--keep-open", "-k", is_flag=True, help="Serve many clients (concurrently on the engine), not one.")
@click.option("--exec", "execute", metavar="CMD", default=None,
              help="Run CMD (via /bin/sh) per connection with its stdin/stdout on the socket.")
@click.option("--quit-after", type=Number(float, 0), default=None, metavar="SECS",
              help="Once stdin ended, exit with status 0 after SECS even if clients are still connected "
                   "(nc -l -q SECS).")
@_eof_options
@options_from(ListenSettings, exclude=("host", "port", "workers", "queue_size", "reuse_port", "backlog"))
@trace_options
@run_cli
def listen(args: tuple[str, ...], udp: bool, keep_open: bool, execute: str | None, quit_after: float | None,
           on_stdin_eof: str, on_peer_eof: str, crlf: bool, hexdump: bool, explain: bool,
           trace: bool, trace_json: str | None, **values: Any) -> None:
    """Listen on [HOST] PORT (default host 127.0.0.1) and join stdin/stdout to the client(s).

    \b
    Examples:
      socklab listen 9000 > received.bin                     # one client, then exit
      socklab listen -k 9000 --engine threads --explain      # many clients at once
      socklab listen -u 9000                                 # UDP, every source address a peer
      socklab listen -k 9000 --exec 'tr a-z A-Z'             # a per-connection program
      socklab listen 9443 --tls-self-signed                  # TLS; clients: connect --pin SHA256

    TLS without -k: a client that goes away before sending anything (connect --pin with another
    fingerprint refuses the certificate after the handshake) is not the one client; listen keeps
    waiting (ncat -l --ssl would exit), and closes the listening socket once a client has spoken.
    """
    if len(args) == 1:
        host, port_s = "127.0.0.1", args[0]
    elif len(args) == 2:
        host, port_s = args
    elif not args and values.get("unix"):
        host, port_s = "127.0.0.1", "0"
    else:
        raise UsageError("listen needs [HOST] PORT (or --unix PATH)")
    if not port_s.isdigit():
        ep = parse_endpoint(port_s)
        host, port_s = ep.host, str(ep.port)
    settings = build_settings(ListenSettings, values, host=host.strip("[]"), port=int(port_s))
    if execute and udp:
        raise UsageError("--exec needs a stream socket (TCP or Unix), not --udp")
    if udp and settings.serves_tls:
        raise UsageError("TLS needs a stream: drop --udp or --tls-cert/--tls-self-signed")
    tracer = make_tracer(settings.engine, trace, trace_json)
    server = Server(settings, tracer=tracer, label="listen")
    hub = _Hub(server, keep_open=keep_open, on_stdin_eof=on_stdin_eof, on_peer_eof=on_peer_eof,
               explain=Explainer(explain, tracer), hexdump=hexdump, execute=execute, quit_after=quit_after,
               tls=settings.serves_tls)
    if udp:
        addr = server.listen_udp(lambda: _ListenUdp(hub))
        scheme = "udp"
    else:
        addr = server.listen(lambda: _ListenConn(hub))
        scheme = "tls" if settings.serves_tls else "tcp"
    where = f"unix:{addr}" if isinstance(addr, str) else f"{scheme}://{format_addr(addr)}"
    if not execute:
        threading.Thread(target=_stdin_thread, args=(server, hub, crlf), name="socklab-stdin",
                         daemon=True).start()
    serve_until_signalled(server, "listen", where=[where], stream=sys.stderr, quiet=True)
    if isinstance(addr, str):
        with contextlib.suppress(OSError):
            os.unlink(addr)

