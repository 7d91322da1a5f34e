"""``socklab send`` and ``socklab receive``: fast, verified, resumable file transfer over TCP.

Two directions of connection, one protocol: normally the receiver listens and the sender
connects (``send --to``); in reverse mode the sender listens (``send --listen``) and the receiver
connects to fetch (``receive --from``), for when only the receiver can open connections.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from socklab.apps.transfer.bars import Bars
from socklab.apps.transfer.receiver import FileReport, ReceiverProtocol, ReceiveSession, ReceiveSettings
from socklab.apps.transfer.settings import SendSettings
from socklab.cli.options import (
    EXIT_NETWORK,
    EXIT_VERIFY,
    build_settings,
    make_tracer,
    options_from,
    run_cli,
    trace_options,
)
from socklab.core.errors import ProtocolError, UsageError
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint, parse_endpoint
from socklab.core.trace import format_addr
from socklab.protocols import transfer as tp
from socklab.protocols.text import escape_peer_text as shown
from socklab.runtime import Server, serve_until_signalled
from socklab.runtime.client import BlockingClient

if TYPE_CHECKING:
    from socklab.apps.transfer.sender import SenderProtocol, SendItem

_RECV_EXCLUDE = ("unix", "tls_cert", "tls_key")


def _send_to(endpoint: Endpoint, items: list[SendItem], settings: SendSettings, bars: Bars,
             advance: Any) -> SenderProtocol:
    """``send --to``: connect, then draw the bar (none for a connection that fails) until the session ended."""
    from socklab.apps.transfer.sender import SenderProtocol

    with BlockingClient(settings.client(), engine=settings.engine, background=False) as client:
        handle = client.connect(endpoint, lambda: SenderProtocol(
            items, settings, client.engine.call_soon_threadsafe, progress=advance, skipped=advance))
        with bars:
            client.wait(handle.closed)  # a reactor engine turns on this thread meanwhile
    assert handle.protocol is not None
    return handle.protocol


def _send_listening(items: list[SendItem], settings: SendSettings, bars: Bars, advance: Any) -> SenderProtocol:
    """``send --listen``: serve one receiver through the runtime (readiness line, signals, ``ss``)."""
    from socklab.apps.transfer.sender import SendServer

    sender = SendServer(items, settings, progress=advance, skipped=advance)
    where = format_addr(sender.address)
    with bars:
        serve_until_signalled(sender.server, "send", quiet=True,
                              where=[f"tcp://{where} (fetch with: socklab receive --from {where} --dir DIR)"])
    if sender.protocol is None or sender.protocol.interrupted:
        raise KeyboardInterrupt  # Ctrl-C or SIGTERM before or during the session: "interrupted", 130
    return sender.protocol


def _report_sent(items: list[SendItem], session: SenderProtocol, quiet: bool, as_json: bool) -> None:
    reports = session.result()
    seconds = max(session.ended - session.started, 1e-9)
    sent = sum(r.sent for r in reports)
    already = sum(r.offset for r in reports)  # resumed prefixes and files present: not sent again
    failed = [r for r in reports if not r.ok]
    present = [r for r in reports if r.ok and r.code == "present"]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "files": len([i for i in items if i.entry.kind != "dir"]),
                               "bytes": sum(r.bytes for r in reports), "sent": sent, "already": already,
                               "present": len(present), "seconds": round(seconds, 6),
                               "rate": round(sent / seconds, 1), "entries": [r.__dict__ for r in reports]}))
    elif not quiet:
        for r in reports:
            if r.ok and r.code == "present":
                click.echo(f"  {shown(r.name)}: already present on the receiver (same content, verified), "
                           f"skipped", err=True)
            elif r.ok and r.offset:
                click.echo(f"  {shown(r.name)}: resumed at byte {r.offset} (the receiver had the bytes before)",
                           err=True)
        some = f" ({len(present)} already present)" if present else ""
        kept = f" ({already} already on the receiver)" if already else ""
        rate = f" ({sent / seconds / 1e6:.1f} MB/s)" if sent else ""
        click.echo(f"socklab send: {len(reports) - len(failed)}/{len(reports)} entries{some}, {sent} bytes "
                   f"sent this run{kept} in {seconds:.3f} s{rate}, verified", err=True)
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


def _address(option: str, text: str) -> Any:
    """``HOST:PORT`` or ``HOST`` (the transfer port) given to ``option``, or a usage error naming it."""
    try:
        return parse_endpoint(text, default_port=tp.DEFAULT_PORT)
    except UsageError as exc:
        raise UsageError(f"{option} {text!r}: {exc}") from None


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--to", "to", metavar="HOST[:PORT]", default=None,
              help=f"The receiver's address (`socklab receive`); the port defaults to {tp.DEFAULT_PORT}.")
@click.option("--listen", "listen", is_flag=True,
              help="Reverse mode: listen and let the receiver connect (`socklab receive --from`).")
@options_from(SendSettings)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@run_cli
def send(paths: tuple[str, ...], to: str | None, listen: bool, quiet: bool, as_json: bool, **values: Any) -> None:
    """Send files, directories (recursively) or stdin ('-'), verified end to end.

    \b
    socklab receive --dir /tmp/in                     # on the receiving side (port 7060)
    socklab send big.iso photos/ --to 127.0.0.1       # zero-copy sendfile, BLAKE3-tree verified
    socklab send big.iso --to 127.0.0.1:7061          # a receiver on another port
    tar c dir | socklab send - --name dir.tar --to 127.0.0.1
    A progress bar on a terminal (none when stderr is a pipe, or with --quiet).
    Interrupted? Run the same command again: it resumes from the verified prefix, and
    files that already arrived are verified (hashed on both sides) and skipped; the
    summary says how many bytes were sent this run and how many were already there.
    A different file under the same name is the receiver's choice: it keeps it unless
    started with `socklab receive --overwrite`.
    """
    # every usage error before any work: no connection, no listener yet
    if (to is None) == (not listen):
        raise UsageError("give --to HOST[:PORT], or --listen for reverse mode (not both)")
    settings = build_settings(SendSettings, values)
    if "-" in paths:
        try:
            tp.check_name(settings.name)
        except ProtocolError as exc:
            raise UsageError(f"--name {settings.name!r}: {exc} (a receiver would refuse it)") from None
    if paths.count("-") > 1:
        raise UsageError("PATH '-' (stdin) can be given once")
    from socklab.apps.transfer.sender import collect

    items = collect(list(paths), stdin_name=settings.name)
    endpoint = _address("--to", to) if to is not None else None
    sizes = [i.entry.size for i in items if i.entry.kind != "dir"]
    total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
    bars = Bars(quiet)
    task = bars.task("sending", total)
    advance = (lambda n: bars.progress.advance(task, n)) if task is not None else None
    if endpoint is not None:
        session = _send_to(endpoint, items, settings, bars, advance)
    else:
        session = _send_listening(items, settings, bars, advance)
    _report_sent(items, session, quiet, as_json)


def _logger(bars: Bars) -> Any:
    def log(r: FileReport) -> None:
        if r.ok and r.code == "present":
            bars.say(f"  already present {shown(r.name)}: {r.bytes} bytes, same content (verified), kept")
        elif r.ok:
            extra = f" (resumed at {r.resumed_from})" if r.resumed_from else ""
            bars.say(f"  received {shown(r.name)}: {r.bytes} bytes, verified{extra}")
        else:
            bars.say(f"  refused {shown(r.name)}: {shown(r.error)}")
    return log


def _summarize(session: ReceiveSession, seconds: float, as_json: bool, bars: Bars) -> int:
    """The session's summary: entries, bytes received this run (a kept .part's too), bytes that were
    already here (resumed prefixes, files present), and the .part kept after an interruption."""
    reports = session.reports
    failed = [r for r in reports if not r.ok]
    got = session.received
    counts = f"{got} bytes received this run" + (f" ({session.already} already here)" if session.already else "")
    counts += f" in {seconds:.3f} s" + (f" ({got / seconds / 1e6:.1f} MB/s)" if got else "")
    if as_json:
        click.echo(json.dumps({"ok": not failed and not session.failed, "complete": session.done,
                               "error": session.failed, "bytes": got, "received": got,
                               "already": session.already, "partial": session.partial,
                               "partial_bytes": session.partial_bytes, "seconds": round(seconds, 6),
                               "rate": round(got / seconds, 1), "entries": [r.__dict__ for r in reports]}))
    elif session.done:
        bars.say(f"socklab receive: {len(reports) - len(failed)}/{len(reports)} entries, {counts}")
    else:
        # the sender never said DONE: nobody knows how many entries there were meant to be
        kept = (f"; {shown(session.partial)}.part kept to resume ({session.partial_bytes} bytes in it; run the "
                f"same send again)") if session.partial else ""
        bars.say(f"socklab receive: session interrupted after {len(reports)} entries "
                 f"({len(reports) - len(failed)} ok), {counts}{kept}")
    if session.failed:
        bars.say(f"socklab: error: {shown(session.failed)}", always=True)
    if any(r.code == "verify" for r in failed):
        return EXIT_VERIFY
    return EXIT_NETWORK if failed or session.failed else 0


@click.command()
@click.option("--from", "source", metavar="HOST[:PORT]", default=None,
              help="Reverse mode: connect to a sender started with `socklab send --listen`.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Write the received data to stdout instead of --dir.")
@click.option("--once", is_flag=True, help="Serve one session, then exit with its status.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary of each session on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, per-file lines or summary.")
@options_from(ReceiveSettings, exclude=_RECV_EXCLUDE)
@trace_options
@run_cli
def receive(source: str | None, to_stdout: bool, once: bool, as_json: bool, quiet: bool, trace: bool,
            trace_json: str | None, **values: Any) -> None:
    """Receive files into --dir: verified, atomic (NAME.part until verified), resumable.

    \b
    socklab receive --dir /tmp/in                          # serve senders on port 7060 (any engine)
    socklab receive --port 0 --dir /tmp/in                 # a port the kernel picks (it says which)
    socklab receive --from 127.0.0.1:7071 --dir /tmp/in    # fetch from `send --listen`
    socklab receive --dir /tmp/in --no-perms               # new files 0666 & ~umask
    On a terminal, a progress bar per file being received (none on a pipe, or with
    --quiet); each session ends with one line: entries, bytes received this run, bytes
    already here (resumed, present), and the NAME.part kept if the sender broke off.
    A sender only suggests permission bits (rwxr-xr-x at most, masked by the
    umask; never setuid, setgid, sticky or group/world write); names stay inside
    --dir; bad times are refused.
    """
    # every usage error before any work: nothing listens or connects yet
    settings = build_settings(ReceiveSettings, values)
    if not to_stdout and not settings.discard:
        settings.check_writable()
    if to_stdout and as_json:
        raise UsageError("--stdout carries the data: drop --json")
    endpoint = _address("--from", source) if source is not None else None
    out = sys.stdout.buffer if to_stdout else None
    bars = Bars(quiet, enabled=False if trace else None)  # --trace's lines would tear a bar
    log = _logger(bars)
    tracer = make_tracer(settings.engine, trace, trace_json)
    if endpoint is not None:
        sys.exit(_fetch(endpoint, settings, out, as_json, bars, tracer))
    server = Server(settings, tracer=tracer, label="receive")
    status = [0]
    started = [time.monotonic()]

    def on_session(s: ReceiveSession) -> None:
        code = _summarize(s, max(time.monotonic() - started[0], 1e-9), as_json, bars)
        status[0] = status[0] or code
        if once:
            threading.Thread(target=server.shutdown, daemon=True).start()

    def factory() -> ReceiverProtocol:
        started[0] = time.monotonic()
        if out is not None:
            return _StdoutReceiver(settings, log, on_session, out, bars.file_bar)
        return ReceiverProtocol(settings, log, on_session, bars.file_bar)

    server.listen(factory)
    with bars:
        serve_until_signalled(server, "receive", ["tcp"], stream=sys.stderr if to_stdout else None, quiet=quiet)
    if once:
        sys.exit(status[0])


class _StdoutReceiver(ReceiverProtocol):
    def __init__(self, settings: ReceiveSettings, log: Any, on_session: Any, out: Any, bar: Any) -> None:
        super().__init__(settings, log, on_session, bar)
        self._out = out

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.session = ReceiveSession(self.settings, transport.write, self._log, stdout=self._out)
        self.session.bar = (self._bar() if self._bar is not None else None) or self.session.bar


def _fetch(endpoint: Endpoint, settings: ReceiveSettings, out: Any, as_json: bool, bars: Bars, tracer: Any) -> int:
    """``receive --from`` (reverse mode): the receiver's protocol as a client of a ``send --listen``.

    Returns the session's exit status. Raises ConnectionRefused, ConnectTimeout... when it cannot connect.
    """
    log = _logger(bars)
    # the connect waits up to --idle-timeout (0: as long as the kernel tries); the session has no
    # idle limit here, as before: a sender may hash a large file before its first byte
    client_settings = ClientSettings(connect_timeout=settings.idle_timeout or 130.0)
    with BlockingClient(client_settings, engine=settings.engine, tracer=tracer, background=False) as client:
        def factory() -> ReceiverProtocol:
            if out is not None:
                return _StdoutReceiver(settings, log, None, out, bars.file_bar)
            return ReceiverProtocol(settings, log, None, bars.file_bar)

        handle = client.connect(endpoint, factory)
        start = time.monotonic()
        with bars:
            client.wait(handle.closed)  # a reactor engine turns on this thread meanwhile
    session = handle.protocol.session if handle.protocol is not None else None
    assert session is not None
    return _summarize(session, max(time.monotonic() - start, 1e-9), as_json, bars)
