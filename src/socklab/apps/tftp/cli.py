"""``socklab tftp serve|get|put``: TFTP with every option, on any engine."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from socklab.apps.tftp.server import TftpSettings
from socklab.cli.access import log_options
from socklab.cli.options import build_settings, make_tracer, options_from, run_cli, trace_options
from socklab.cli.progress import BarScope, bar_wanted, byte_progress
from socklab.core.errors import UsageError
from socklab.core.sockets import parse_endpoint
from socklab.runtime import serve_until_signalled


@click.group()
def tftp() -> None:
    """TFTP: reliable file transfer built from UDP datagrams, timeouts and retransmission.

    \b
    Try it:
      mkdir -p /tmp/tftproot && echo hello > /tmp/tftproot/hello.txt
      socklab tftp serve --root /tmp/tftproot --port 6969 --trace     # read-only
      socklab tftp get 127.0.0.1:6969 hello.txt -o -
      socklab tftp get 127.0.0.1:6969 hello.txt --blksize 1428 --windowsize 8
      tftp 127.0.0.1 6969 -c get hello.txt          # tftp-hpa against socklab
    """


@tftp.command()
@options_from(TftpSettings, transport="udp")  # TCP-only settings (TLS, --workers...) left out
@log_options
@trace_options
@run_cli
def serve(trace: bool, trace_json: str | None, **values: Any) -> None:
    """Serve the files under --root (RRQ). Read-only unless told: --allow-write lets uploads (WRQ)
    replace existing files, --create lets them create new ones. Each transfer is answered from a
    new port (its TID, RFC 1350 section 4).

    \b
    Examples:
      socklab tftp serve --root /srv/tftp --port 6969                  # read-only
      socklab tftp serve --root /srv/tftp --port 6969 --create         # a drop box: new files only
      socklab tftp serve --root /srv/tftp --port 6969 --allow-write --create

    \b
    Who may write what: a replaced file must be a regular file with a write bit (0444 is never
    replaced) that the server's user may write; it keeps its mode and owner. An upload is
    acknowledged only once fsynced and renamed into place. Limits per client: --max-timeout,
    --stall-timeout, --max-transfers-per-client. On SIGTERM, transfers in flight finish within
    --shutdown-timeout.
    """
    from socklab.apps.tftp.server import serve_tftp

    settings = build_settings(TftpSettings, values)
    tracer = make_tracer(settings.engine, trace, trace_json)
    server, proto = serve_tftp(settings, tracer)
    server.on_stop(lambda: print(f"socklab tftp: {proto.completed} transfers completed, {proto.failed} failed"
                                 + (f", {proto.refused} requests refused (limits, shutdown)" if proto.refused else ""),
                                 file=sys.stderr, flush=True))
    serve_until_signalled(server, "tftp", ["udp"])


def _client_options(func: Any) -> Any:
    decorators = [
        click.option("--port", type=int, default=69, show_default=True, help="Server port (unless HOST:PORT)."),
        click.option("--mode", type=click.Choice(["octet", "netascii"]), default="octet", show_default=True,
                     help="octet: bytes as they are; netascii: text with CR LF line ends on the wire."),
        click.option("--blksize", type=int, default=None, help="Ask for this block size (RFC 2348, 8..65464)."),
        click.option("--windowsize", type=int, default=None,
                     help="Ask for this many blocks per ACK (RFC 7440); 1 is lock-step."),
        click.option("--timeout", type=float, default=1.0, show_default=True,
                     help="Seconds before a retransmission."),
        click.option("--retries", type=int, default=5, show_default=True,
                     help="Timeouts in a row before giving up."),
        click.option("--tsize/--no-tsize", default=True, show_default=True,
                     help="Exchange the file size (RFC 2349)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
    ]
    for d in reversed(decorators):
        func = d(func)
    return func


def _target(host: str, port: int) -> tuple[str, int]:
    ep = parse_endpoint(host, default_port=port)
    if ep.unix is not None:
        raise UsageError("TFTP runs over UDP: give HOST or HOST:PORT")
    return ep.host, ep.port


def _summary(kind: str, name: str, result: Any, quiet: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"operation": kind, "file": name, "bytes": result.bytes,
                               "seconds": round(result.seconds, 6), "rate": round(result.rate, 1),
                               "blksize": result.blksize, "windowsize": result.windowsize,
                               "tsize": result.tsize, "retransmissions": result.retransmissions,
                               "packets_sent": result.packets_sent}))
    elif not quiet:
        click.echo(f"socklab tftp: {kind} {name}: {result.bytes} bytes in {result.seconds:.3f} s "
                   f"({result.rate / 1e6:.2f} MB/s), blksize {result.blksize}, windowsize {result.windowsize}, "
                   f"{result.retransmissions} retransmissions", err=True)


class _Bar(BarScope):
    """A rich progress bar (rate, ETA once the size is known from tsize) on stderr when it is a
    terminal and not ``--quiet`` (:func:`bar_wanted`), or nothing. ``label`` is shown as it is: no
    format fields, no rich markup (a file may be called ``a{x}[bold]``)."""

    def __init__(self, label: str, quiet: bool, total: int | None = None) -> None:
        self.task: Any = None
        if bar_wanted(quiet):
            from rich.markup import escape

            self.progress = byte_progress("{task.description}")
            self.task = self.progress.add_task(escape(label), total=total)

    def update(self, done: int, tsize: int | None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=tsize or None)


def _options(mode: str, blksize: int | None, windowsize: int | None, timeout: float, retries: int,
             tsize: bool) -> Any:
    from socklab.apps.tftp.client import TftpClientOptions

    if timeout <= 0 or retries < 1:
        raise UsageError("--timeout must be positive and --retries at least 1")
    return TftpClientOptions(mode=mode, blksize=blksize, windowsize=windowsize, timeout=timeout,
                             max_retries=retries, tsize=tsize)


@tftp.command()
@click.argument("host", metavar="HOST[:PORT]")
@click.argument("remote", metavar="FILE")
@click.option("-o", "--output", default=None, help="Local file to write (default: FILE's base name; - for stdout).")
@_client_options
@run_cli
def get(host: str, remote: str, output: str | None, port: int, mode: str, blksize: int | None,
        windowsize: int | None, timeout: float, retries: int, tsize: bool, quiet: bool, as_json: bool) -> None:
    """Download FILE from a TFTP server. The local file appears only once complete."""
    from socklab.apps.tftp.client import tftp_get

    h, p = _target(host, port)
    opts = _options(mode, blksize, windowsize, timeout, retries, tsize)
    if output == "-":
        result = tftp_get(h, p, remote, sys.stdout.buffer, opts)
        sys.stdout.flush()
        _summary("get", remote, result, quiet, False)
        return
    dest = Path(output or Path(remote).name or "download")
    part = dest.with_name(dest.name + ".part")
    try:
        with open(part, "wb") as f, _Bar(f"get {remote}", quiet or as_json) as bar:
            result = tftp_get(h, p, remote, f, opts, progress=bar.update)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, dest)
    finally:
        if part.exists():
            part.unlink()
    _summary("get", remote, result, quiet, as_json)


@tftp.command()
@click.argument("host", metavar="HOST[:PORT]")
@click.argument("local", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--remote", "-r", default=None, help="Name on the server (default: FILE's base name).")
@_client_options
@run_cli
def put(host: str, local: str, remote: str | None, port: int, mode: str, blksize: int | None,
        windowsize: int | None, timeout: float, retries: int, tsize: bool, quiet: bool, as_json: bool) -> None:
    """Upload FILE to a TFTP server. The server must allow it: socklab's --create (a new file) or
    --allow-write (replace one); tftp-hpa's -c, or a world-writable existing file."""
    from socklab.apps.tftp.client import tftp_put

    h, p = _target(host, port)
    opts = _options(mode, blksize, windowsize, timeout, retries, tsize)
    name = remote or (Path(local).name if local != "-" else None)
    if not name:
        raise UsageError("uploading stdin needs --remote NAME")
    if local == "-":
        result = tftp_put(h, p, name, sys.stdin.buffer, opts)
    else:
        try:
            f = open(local, "rb")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot read {local}: {exc.strerror}") from exc
        size = os.fstat(f.fileno()).st_size
        with f, _Bar(f"put {name}", quiet or as_json, size) as bar:
            result = tftp_put(h, p, name, f, opts, progress=lambda done, _t: bar.update(done, size))
    _summary("put", name, result, quiet, as_json)
