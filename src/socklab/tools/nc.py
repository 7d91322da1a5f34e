"""``socklab nc``: netcat-openbsd's flags and meanings, on socklab's ``connect`` and ``listen``.

Why this exists: people type ``nc -l -p 9000`` and ``nc -z -w 2 host 22`` from habit. ``socklab
connect``/``listen`` explain half-close and EOF with long option names; ``socklab nc`` takes the
short flags nc users know and runs those same commands, so both behave the same underneath.

Mapping (nc -> socklab):
  -l            listen (else connect)          -k       --keep-open (with -l)
  -p PORT       with -l the port to listen on; connecting, the source port (--source :PORT)
  -s ADDR       with -l the address to listen on; connecting, the source address (--source ADDR)
  -u            --udp                          -C       --crlf
  -v            --explain (narrate on stderr)
  -N            --on-stdin-eof shutdown (FIN when stdin ends; without -N nothing is sent, as nc)
  -q 0          --on-stdin-eof close (quit when stdin ends)
  -q SECS       -N, then --quit-after SECS: exit (status 0) SECS after stdin ended, even if the
                peer is still open (a negative SECS: wait for the peer, nc's default)
  -w SECS       --connect-timeout and --idle-timeout SECS
  -z            connect -z (exit 0 if any port accepts, like nc)
  -4 / -6       resolve HOST as IPv4 / IPv6 only
  --ssl         TLS (ncat's flag): with -l a self-signed in-memory certificate, its SHA-256 printed;
                connecting, --pin SHA256 accepts exactly that certificate (no CA)
Differences on purpose: ``-l`` without ``-s``/HOST listens on 127.0.0.1 (nc: every address).
``-q SECS`` follows nc's manual ("after EOF on stdin, wait the specified number of seconds and then
quit"); netcat-openbsd 1.219 on Linux starts that wait only once the peer has closed too.

Connecting with ``--ssl`` is ``socklab connect --pin``, on the same client contract as plain
``nc`` (:mod:`socklab.runtime.client`): a reactor engine, whose TLS half-closes, so ``-N`` sends
close_notify, then the FIN, and the server's answer is still read.
"""

from __future__ import annotations

import socket

import click

from socklab.cli.options import run_cli
from socklab.core.errors import ResolveError, UsageError

__all__ = ["nc", "split_host_port"]


def split_host_port(args: tuple[str, ...]) -> tuple[str | None, str | None]:
    """``HOST PORT``, ``HOST:PORT``, ``[v6]:PORT``, ``PORT`` or nothing -> (host, port)."""
    if len(args) == 2:
        return args[0].strip("[]"), args[1]
    if len(args) == 1:
        text = args[0]
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            return host, rest[1:] if rest.startswith(":") else None
        if text.count(":") == 1:
            host, _, port = text.partition(":")
            return host or None, port
        if text.replace("-", "").replace(",", "").isdigit():
            return None, text
        return text, None
    if not args:
        return None, None
    raise UsageError(f"too many arguments {' '.join(args)!r}: write HOST PORT or HOST:PORT")


def _resolve(host: str, family: int) -> str:
    if family == socket.AF_UNSPEC:
        return host
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        flag = "-4" if family == socket.AF_INET else "-6"
        raise ResolveError(f"{host!r} has no {'IPv4' if flag == '-4' else 'IPv6'} address ({flag}): "
                           f"{exc.strerror}") from exc
    return str(infos[0][4][0])


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, metavar="[HOST] [PORT] | HOST:PORT")
@click.option("-l", "listen_mode", is_flag=True, help="Listen for a connection instead of connecting.")
@click.option("-p", "port_opt", metavar="PORT", default=None,
              help="With -l: the port to listen on. Connecting: the source port.")
@click.option("-u", "udp", is_flag=True, help="UDP instead of TCP.")
@click.option("-k", "keep", is_flag=True, help="With -l: keep listening after a client leaves (many clients).")
@click.option("-v", "verbose", is_flag=True, help="Say what happens on stderr (socklab's --explain).")
@click.option("-w", "wait", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECS",
              help="Give up a connection attempt, or an idle connection, after SECS.")
@click.option("-N", "shutdown_on_eof", is_flag=True, help="Shut down the socket (send FIN) when stdin ends.")
@click.option("-q", "quit_after", type=float, default=None, metavar="SECS",
              help="After EOF on stdin, wait SECS then quit (exit 0); implies -N. -q 0: quit at once; "
                   "negative: wait for the peer (the default).")
@click.option("-z", "scan", is_flag=True, help="Only scan: exit 0 if any PORT (N, N-M or N,M) accepts.")
@click.option("-4", "ipv4", is_flag=True, help="IPv4 only.")
@click.option("-6", "ipv6", is_flag=True, help="IPv6 only.")
@click.option("-s", "source", metavar="ADDR", default=None,
              help="With -l: the local address to listen on. Connecting: the source address.")
@click.option("-C", "crlf", is_flag=True, help="Send CRLF as line ending.")
@click.option("--ssl", "use_tls", is_flag=True,
              help="TLS. With -l: a self-signed certificate made now (its SHA-256 is printed); "
                   "connecting: pair with --pin.")
@click.option("--pin", metavar="SHA256", default=None,
              help="Connecting with --ssl: accept only the certificate with this SHA-256 fingerprint.")
@click.pass_context
@run_cli
def nc(ctx: click.Context, args: tuple[str, ...], listen_mode: bool, port_opt: str | None, udp: bool, keep: bool,
       verbose: bool, wait: float | None, shutdown_on_eof: bool, quit_after: float | None, scan: bool,
       ipv4: bool, ipv6: bool, source: str | None, crlf: bool, use_tls: bool, pin: str | None) -> None:
    """netcat with netcat-openbsd's flags: connect to HOST PORT, or listen with -l.

    \b
    Examples:
      socklab nc -l -p 9000 > got.bin          # receive one connection's bytes
      socklab nc -N 127.0.0.1 9000 < file.bin  # send a file, FIN at its end
      socklab nc -z -w 2 127.0.0.1 8000-8010   # exit 0 if any port accepts
      socklab nc -u 127.0.0.1:9000             # UDP; HOST:PORT works too
      socklab nc -l -p 9443 --ssl              # TLS with a self-signed certificate (prints its SHA-256)
      socklab nc --ssl --pin AB:CD:… 127.0.0.1 9443
      socklab nc -s 127.0.0.2 127.0.0.1 9000  # connect from 127.0.0.2 (-p PORT: that source port)
      printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | socklab nc -q 1 127.0.0.1 8080  # exit 1 s after stdin
    For the same things with explanations, see `socklab connect --help` and `socklab listen --help`.
    """
    if ipv4 and ipv6:
        raise UsageError("-4 and -6 exclude each other")
    family = socket.AF_INET if ipv4 else socket.AF_INET6 if ipv6 else socket.AF_UNSPEC
    if quit_after is not None and quit_after < 0:
        quit_after = None  # nc: a negative -q waits for the peer, as without -q
    # -q SECS implies -N (netcat-openbsd's manual); -q 0 quits as stdin ends
    on_stdin_eof = "close" if quit_after == 0 else "shutdown" if shutdown_on_eof or quit_after else "keep"
    linger = quit_after or None
    host, port = split_host_port(args)
    if listen_mode:
        _listen(ctx, host or source, port_opt or port, family, udp=udp, keep=keep, verbose=verbose,
                crlf=crlf, on_stdin_eof=on_stdin_eof, use_tls=use_tls, quit_after=linger)
        return
    if host is None or port is None:
        raise UsageError("nc needs HOST PORT (or HOST:PORT), or -l -p PORT")
    source_text = _source(source, port_opt)
    host = _resolve(host, family)
    if pin is not None or use_tls:
        if pin is None:
            raise UsageError("--ssl connecting needs --pin SHA256 (the fingerprint the server printed)")
        if udp:
            raise UsageError("--ssl needs TCP, not -u")
    from socklab.tools.netcat import connect

    ctx.invoke(connect, host=host, port=port, udp=udp, scan=scan, connect_timeout=wait or 10.0,
               idle_timeout=0.0 if (wait is None or scan) else wait, on_stdin_eof=on_stdin_eof,
               on_peer_eof="exit", crlf=crlf, explain=verbose, source=source_text, quit_after=linger, pin=pin)


def _source(addr: str | None, port: str | None) -> str | None:
    """``-s ADDR`` and ``-p PORT`` when connecting: the ``--source`` they mean (``ADDR``, ``ADDR:PORT``, ``:PORT``)."""
    if port is not None and (not port.isdigit() or int(port) > 65535):
        raise UsageError(f"-p {port!r}: the source port must be a number 0..65535")
    if addr is None:
        return None if port is None else f":{port}"
    if port is None:
        return addr
    return f"[{addr.strip('[]')}]:{port}" if ":" in addr else f"{addr}:{port}"


def _listen(ctx: click.Context, host: str | None, port: str | None, family: int, *, udp: bool, keep: bool,
            verbose: bool, crlf: bool, on_stdin_eof: str, use_tls: bool, quit_after: float | None) -> None:
    from socklab.tools.listen import listen

    if port is None or not port.isdigit():
        raise UsageError("-l needs a PORT: nc -l -p PORT (or nc -l PORT)")
    if use_tls and udp:
        raise UsageError("--ssl needs TCP, not -u")
    default = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    host = default if host is None else _resolve(host, family)
    ctx.invoke(listen, args=(host, port), udp=udp, keep_open=keep, explain=verbose, crlf=crlf,
               on_stdin_eof=on_stdin_eof, on_peer_eof="exit", tls_self_signed=use_tls, quit_after=quit_after)
