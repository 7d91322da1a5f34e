"""``socklab send`` and ``socklab receive``: fast, verified, resumable file transfer over TCP.

Two directions of connection, one protocol: normally the receiver listens and the sender
connects (``send --to``); in reverse mode the sender listens (``send --listen``) and the receiver
connects to fetch (``receive --from``), for when only the receiver can open connections.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

import click

from socklab.apps.transfer.receiver import FileReport, ReceiverProtocol, ReceiveSession, ReceiveSettings
from socklab.cli.options import (
    EXIT_NETWORK,
    EXIT_VERIFY,
    build_settings,
    make_tracer,
    options_from,
    run_cli,
    trace_options,
)
from socklab.cli.serving import serve_until_signalled
from socklab.core.errors import UsageError, translate_oserror
from socklab.core.server import Server
from socklab.core.sockets import connect_tcp, open_tcp_listener, parse_endpoint
from socklab.core.trace import format_addr
from socklab.protocols import transfer as tp
from socklab.protocols.text import escape_peer_text as shown

_RECV_EXCLUDE = ("unix", "tls_cert", "tls_key")


def _progress(total: int | None, quiet: bool) -> Any:
    if quiet:
        return None
    from socklab.cli.progress import byte_progress

    return byte_progress("[bold]{task.description}")


def _run_sender(sock: socket.socket, paths: list[str], name: str, chunk_size: int, quiet: bool,
                as_json: bool) -> None:
    from socklab.apps.transfer.sender import SendSession, collect

    items = collect(paths, stdin_name=name)
    sizes = [i.entry.size for i in items if i.entry.kind != "dir"]
    total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
    bar = _progress(total, quiet)
    start = time.monotonic()
    try:
        if bar is not None:
            with bar:
                task = bar.add_task("sending", total=total)
                session = SendSession(sock, chunk_size, progress=lambda n: bar.advance(task, n))
                reports = session.run(items)
        else:
            reports = SendSession(sock, chunk_size).run(items)
    finally:
        sock.close()
    seconds = max(time.monotonic() - start, 1e-9)
    sent = sum(r.sent for r in reports)
    failed = [r for r in reports if not r.ok]
    present = [r for r in reports if r.ok and r.code == "present"]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "files": len([i for i in items if i.entry.kind != "dir"]),
                               "bytes": sum(r.bytes for r in reports), "sent": sent, "present": len(present),
                               "seconds": round(seconds, 6), "rate": round(sent / seconds, 1),
                               "entries": [r.__dict__ for r in reports]}))
    elif not quiet:
        for r in reports:
            if r.ok and r.code == "present":
                click.echo(f"  {shown(r.name)}: already present on the receiver (same content, verified), "
                           f"skipped", err=True)
            elif r.ok and r.offset:
                click.echo(f"  {shown(r.name)}: resumed at byte {r.offset}", err=True)
        already = f" ({len(present)} already present)" if present else ""
        rate = f" ({sent / seconds / 1e6:.1f} MB/s)" if sent else ""
        click.echo(f"socklab send: {len(reports) - len(failed)}/{len(reports)} entries{already}, {sent} bytes "
                   f"sent in {seconds:.3f} s{rate}, verified", err=True)
    for r in failed:
        click.echo(f"socklab: error: {_send_error(r)}", err=True)
    if failed:
        sys.exit(EXIT_VERIFY if any(r.code == "verify" for r in failed) else EXIT_NETWORK)


def _send_error(r: Any) -> str:
    """One line for an entry the receiver refused (its text escaped: it came from the network)."""
    if r.code == "exists":
        return (f"{shown(r.name)}: the receiver already has a different file by that name and keeps it - the "
                f"receiver's policy: `socklab receive --overwrite` on the receiving side replaces such files "
                f"(receiver said: {shown(r.error)})")
    return shown(r.error)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--to", "to", metavar="HOST:PORT", default=None, help="The receiver's address (`socklab receive`).")
@click.option("--listen", "listen", is_flag=True,
              help="Reverse mode: listen and let the receiver connect (`socklab receive --from`).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Reverse mode: address to listen on.")
@click.option("--port", type=int, default=0, show_default=True, help="Reverse mode: port (0: the kernel picks).")
@click.option("--name", default="stdin", show_default=True, help="Name given to stdin ('-') on the receiver.")
@click.option("--chunk-size", type=int, default=tp.CHUNK_SIZE, show_default=True,
              help="Bytes per verified chunk; a resume re-sends at most one.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@run_cli
def send(paths: tuple[str, ...], to: str | None, listen: bool, host: str, port: int, name: str,
         chunk_size: int, quiet: bool, as_json: bool) -> None:
    """Send files, directories (recursively) or stdin ('-'), verified end to end.

    \b
    socklab receive --port 7070 --dir /tmp/in         # on the receiving side
    socklab send big.iso photos/ --to 127.0.0.1:7070  # zero-copy sendfile, BLAKE3-tree verified
    tar c dir | socklab send - --name dir.tar --to 127.0.0.1:7070
    Interrupted? Run the same command again: it resumes from the verified prefix, and
    files that already arrived are verified (hashed on both sides) and skipped.
    A different file under the same name is the receiver's choice: it keeps it unless
    started with `socklab receive --overwrite`.
    """
    if (to is None) == (not listen):
        raise UsageError("give --to HOST:PORT, or --listen for reverse mode")
    if not 4096 <= chunk_size <= 1 << 30:
        raise UsageError("--chunk-size must be within 4096..1 GiB")
    if to is not None:
        sock = connect_tcp(parse_endpoint(to))
        _run_sender(sock, list(paths), name, chunk_size, quiet, as_json)
        return
    listener = open_tcp_listener(host, port, backlog=1)
    addr = listener.getsockname()
    where = format_addr(addr)
    print(f"socklab send listening on tcp://{where} (fetch with: socklab receive --from {where} --dir DIR)",
          flush=True)
    try:
        sock, _ = listener.accept()
    except OSError as exc:
        raise translate_oserror(exc, "accepting the receiver") from exc
    finally:
        listener.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _run_sender(sock, list(paths), name, chunk_size, quiet, as_json)


def _logger(quiet: bool) -> Any:
    def log(r: FileReport) -> None:
        if quiet:
            return
        if r.ok and r.code == "present":
            click.echo(f"  already present {shown(r.name)}: {r.bytes} bytes, same content (verified), kept",
                       err=True)
        elif r.ok:
            extra = f" (resumed at {r.resumed_from})" if r.resumed_from else ""
            click.echo(f"  received {shown(r.name)}: {r.bytes} bytes, verified{extra}", err=True)
        else:
            click.echo(f"  refused {shown(r.name)}: {shown(r.error)}", err=True)
    return log


def _summarize(session: ReceiveSession, seconds: float, as_json: bool, quiet: bool) -> int:
    reports = session.reports
    failed = [r for r in reports if not r.ok]
    total = sum(r.bytes - r.resumed_from for r in reports if r.ok)
    rate = f"{total} bytes in {seconds:.3f} s" + (f" ({total / seconds / 1e6:.1f} MB/s)" if total else "")
    if as_json:
        click.echo(json.dumps({"ok": not failed and not session.failed, "complete": session.done,
                               "error": session.failed, "partial": session.partial, "bytes": total,
                               "seconds": round(seconds, 6), "rate": round(total / seconds, 1),
                               "entries": [r.__dict__ for r in reports]}))
    elif not quiet and session.done:
        click.echo(f"socklab receive: {len(reports) - len(failed)}/{len(reports)} entries, {rate}", err=True)
    elif not quiet:
        # the sender never said DONE: nobody knows how many entries there were meant to be
        kept = f"; {shown(session.partial)}.part kept to resume (run the same send again)" if session.partial \
            else ""
        click.echo(f"socklab receive: session interrupted after {len(reports)} entries ({len(reports) - len(failed)}"
                   f" ok), {rate}{kept}", err=True)
    if session.failed:
        click.echo(f"socklab: error: {shown(session.failed)}", err=True)
    if any(r.code == "verify" for r in failed):
        return EXIT_VERIFY
    return EXIT_NETWORK if failed or session.failed else 0


@click.command()
@click.option("--from", "source", metavar="HOST:PORT", default=None,
              help="Reverse mode: connect to a sender started with `socklab send --listen`.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Write the received data to stdout instead of --dir.")
@click.option("--once", is_flag=True, help="Serve one session, then exit with its status.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary of each session on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No per-file lines or summary.")
@options_from(ReceiveSettings, exclude=_RECV_EXCLUDE)
@trace_options
@run_cli
def receive(source: str | None, to_stdout: bool, once: bool, as_json: bool, quiet: bool, trace: bool,
            trace_json: str | None, **values: Any) -> None:
    """Receive files into --dir: verified, atomic (NAME.part until verified), resumable.

    \b
    socklab receive --port 7070 --dir /tmp/in              # serve senders (any engine)
    socklab receive --from 127.0.0.1:7071 --dir /tmp/in    # fetch from `send --listen`
    socklab receive --port 7070 --dir /tmp/in --no-perms   # new files 0666 & ~umask
    A sender only suggests permission bits (rwxr-xr-x at most, masked by the
    umask; never setuid, setgid, sticky or group/world write); names stay inside
    --dir; bad times are refused.
    """
    settings = build_settings(ReceiveSettings, values)
    out = sys.stdout.buffer if to_stdout else None
    if to_stdout and as_json:
        raise UsageError("--stdout carries the data: drop --json")
    log = _logger(quiet)
    if source is not None:
        sock = connect_tcp(parse_endpoint(source), timeout=settings.idle_timeout)
        session = ReceiveSession(settings, sock.sendall, log, stdout=out)
        start = time.monotonic()
        try:
            _drive_blocking(sock, session)
        finally:
            sock.close()
            session.close()
        sys.exit(_summarize(session, max(time.monotonic() - start, 1e-9), as_json, quiet))
    tracer = make_tracer(settings.engine, trace, trace_json)
    server = Server(settings, tracer=tracer, label="receive")
    status = [0]
    started = [time.monotonic()]

    def on_session(s: ReceiveSession) -> None:
        code = _summarize(s, max(time.monotonic() - started[0], 1e-9), as_json, quiet)
        status[0] = status[0] or code
        if once:
            threading.Thread(target=server.shutdown, daemon=True).start()

    def factory() -> ReceiverProtocol:
        started[0] = time.monotonic()
        if out is not None:
            return _StdoutReceiver(settings, log, on_session, out)
        return ReceiverProtocol(settings, log, on_session)

    server.listen(factory)
    serve_until_signalled(server, "receive", ["tcp"], stream=sys.stderr if to_stdout else None, quiet=quiet)
    if once:
        sys.exit(status[0])


class _StdoutReceiver(ReceiverProtocol):
    def __init__(self, settings: ReceiveSettings, log: Any, on_session: Any, out: Any) -> None:
        super().__init__(settings, log, on_session)
        self._out = out

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.session = ReceiveSession(self.settings, transport.write, self._log, stdout=self._out)


def _drive_blocking(sock: socket.socket, session: ReceiveSession) -> None:
    """The same session on a blocking socket (reverse mode): recv_into its buffers until done."""
    while not session.finished:
        buf = session.get_buffer()
        try:
            n = sock.recv_into(buf)
        except OSError as exc:
            session.abort(str(translate_oserror(exc, "receiving")))
            return
        if n == 0:
            session.eof()
            return
        session.buffer_updated(n)
