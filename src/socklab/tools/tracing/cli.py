"""``socklab trace run`` and ``socklab trace view``: the commands (the work is in the modules beside).

Why this exists: one place for the options, the help that teaches, and the exit statuses.

It keeps raw sockets on purpose (issue 18: clients use :mod:`socklab.runtime.client`): tracing shows
the system calls themselves, so its demonstrations make them by hand.
"""

from __future__ import annotations

import os
import sys

import click

from socklab.cli.options import EXIT_USAGE, run_cli
from socklab.core.errors import UsageError

__all__ = ["trace"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def trace() -> None:
    """Trace ANY program's sockets (run), and draw traces as a ladder diagram (view).

    \b
    Examples:
      socklab trace run -- python3 my_server.py 7007         # your own server, traced
      socklab trace run --json client.jsonl -- curl -s http://127.0.0.1:8080/
      socklab trace view server.jsonl client.jsonl -o ladder.html
    """


@trace.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--json", "json_path", metavar="FILE",
              help="Also write every event as a JSON line (what `socklab trace view` draws).")
@click.option("-o", "--output", metavar="FILE", help="Write the trace lines here instead of stderr.")
@click.option("--explain", is_flag=True, help="Say what each kind of call does the first time it appears, "
                                                "and sum up each process at the end.")
@click.option("--slow", type=click.FloatRange(min=0.0), default=1.0, show_default=True, metavar="SECONDS",
              help="Note a blocking call without a timeout that waited at least this long.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
@run_cli
def run(json_path: str | None, output: str | None, explain: bool, slow: float, cmd: tuple[str, ...]) -> None:
    """Run CMD under strace and print its socket lifecycle, like socklab's own --trace.

    Every socket call of CMD, its child processes and threads: socket, setsockopt, bind, listen,
    accept (the new fd and the peer), connect, send/recv and read/write on sockets with byte
    counts (a partial send is shown as k of n), shutdown and close, with the TCP state the calls
    imply. Notes name the classic mistakes as they happen: recv returned 0 and the program kept
    reading, a partial send whose rest was never sent, EADDRINUSE and why, a socket left in
    CLOSE_WAIT at exit, a blocking call with no timeout that waited long.

    CMD's own input and output pass through untouched; the trace goes to stderr (or --output),
    so `socklab trace run -- ./client | sort` sorts the client's output. The exit status is CMD's.
    Needs strace (scripts/setup.sh installs it); exit 2 if it is missing, 1 if the system does
    not allow tracing.

    \b
    Examples:
      socklab trace run -- python3 echo_server.py 7007
      socklab trace run --explain -- python3 -c 'import socket; socket.create_connection(("127.0.0.1", 7007))'
      socklab trace run --json c.jsonl -- curl -s http://127.0.0.1:8080/ > page.html
      cc -o client client.c && socklab trace run -- ./client 127.0.0.1 7007
    """
    from socklab.tools.tracing.run import TraceRun, TracingUnavailable, open_sink

    argv = list(cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("trace run: give the program to run after --, e.g. socklab trace run -- python3 app.py")
    try:
        console = open_sink(output) if output else sys.stderr
        json_out = open_sink(json_path)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    try:
        code = TraceRun(argv, console, json_out, explain=explain, slow=slow).run()
    except TracingUnavailable as exc:
        click.echo(f"socklab: {exc}", err=True)
        sys.exit(exc.exit_code)
    except FileNotFoundError as exc:
        click.echo(f"socklab: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        for f in (console, json_out):
            if f is not None and f not in (sys.stdout, sys.stderr):
                f.close()
    sys.exit(code)


@trace.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE.jsonl [FILE.jsonl]...")
@click.option("-o", "--output", required=True, metavar="OUT.html", help="Where to write the page.")
@click.option("--title", default=None, help="The page's title (default: the files' names).")
@run_cli
def view(files: tuple[str, ...], output: str, title: str | None) -> None:
    """Draw trace files as a ladder (sequence) diagram: one self-contained HTML page.

    FILES are JSON-lines traces: socklab's own --trace-json files and `socklab trace run --json`
    files, mixed. Each endpoint gets a lane; events are put on one clock; the two ends of each
    connection are found by their addresses, and arrows show the handshake, the data (bytes, and
    where one send was split over several recvs or several merged into one), FIN and RST. The TCP
    state is written along each lane, and the notes beside the events they explain.

    The page has no script and loads nothing: open it in any browser, on a phone too, or hand
    it in.

    \b
    Examples:
      socklab echo serve --port 7007 --trace-json server.jsonl &
      socklab trace run --json client.jsonl -- python3 my_client.py 127.0.0.1 7007
      socklab trace view server.jsonl client.jsonl -o ladder.html
    """
    from socklab.tools.tracing.ladder import build
    from socklab.tools.tracing.svg import render_html

    ladder = build(list(files))
    page = render_html(ladder, title or "socklab ladder: " + ", ".join(os.path.basename(f) for f in files))
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise UsageError(f"--output {output}: {exc.strerror}") from exc
    click.echo(f"wrote {output}: {len(ladder.lanes)} lanes, {len(ladder.events)} events, "
               f"{len(ladder.arrows)} arrows", err=True)
