"""The ``socklab check`` command: probe a learner's server, one line per probe, exit 0 if all pass."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from socklab.cli.options import run_cli
from socklab.core.errors import UsageError
from socklab.core.sockets import Endpoint, parse_endpoint
from socklab.protocols.text import escape_peer_text
from socklab.tools.check.report import Probe, Result, format_line, results_json, run_probes, write_gradescope

__all__ = ["check"]


def _target(text: str) -> Endpoint:
    ep = parse_endpoint(text)
    if ep.unix is not None or ep.port == 0:
        raise UsageError(f"HOST:PORT {text!r}: give the TCP/UDP address the server listens on, e.g. 127.0.0.1:7007")
    return ep


def _only(probes: list[Probe], only: tuple[str, ...]) -> list[Probe]:
    if not only:
        return probes
    names = {p.name for p in probes}
    for name in only:
        if name not in names:
            raise UsageError(f"--only {name!r}: no such probe (there are: {', '.join(sorted(names))})")
    return [p for p in probes if p.name in only]


def _run(kind: str, target: Endpoint, probes: list[Probe], as_json: bool, gradescope: str | None,
         problem: str | None = None) -> None:
    """Run the probes (or, when the server could not start, fail each with ``problem``) and report."""

    def show(result: Result) -> None:
        if not as_json:
            click.echo(format_line(result))

    if not as_json:
        click.echo(f"socklab check {kind}: {len(probes)} probes against {target}")
    if problem is None:
        results = run_probes(probes, show)
    else:
        results = [Result(p.name, p.title, False, problem, "the server did not start",
                          "run the command yourself and read what it prints") for p in probes]
        for r in results:
            show(r)
    passed = sum(r.passed for r in results)
    if as_json:
        click.echo(results_json(kind, str(target), results))
    else:
        click.echo(f"{passed} of {len(results)} probes passed")
    if gradescope:
        write_gradescope(gradescope, results)
    sys.exit(0 if passed == len(results) else 1)


def _grade(kind: str, target: str | None, run: str | None, udp: bool,
           make: Callable[[Endpoint], list[Probe]], as_json: bool, gradescope: str | None) -> None:
    """Grade the server at ``target``, or the one ``--run`` starts (stopped afterwards)."""
    if (target is None) == (run is None):
        raise UsageError("give the server's HOST:PORT, or --run 'COMMAND {port}' to start it (one of the two)")
    if run is None:
        assert target is not None
        ep = _target(target)
        _run(kind, ep, make(ep), as_json, gradescope)
        return
    from socklab.tools.check.launch import Launched

    server = Launched(run, udp)
    try:
        ep = Endpoint("127.0.0.1", server.port)
        problem = None
        if server.problem:
            tail = server.output_tail()
            problem = server.problem + (f"; it printed: {escape_peer_text(tail)}" if tail else "")
        _run(kind, ep, make(ep), as_json, gradescope, problem)
    finally:
        server.stop()


def _common(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")(func)
    func = click.option("--gradescope", metavar="FILE", type=click.Path(dir_okay=False, writable=True),
                        help="Also write Gradescope's results.json (one test per probe, 1 point each).")(func)
    func = click.option("--only", multiple=True, metavar="PROBE",
                        help="Run only this probe (repeatable); the names are those printed.")(func)
    func = click.option("--timeout", type=click.FloatRange(0.5, 120), default=5.0, show_default=True,
                        help="Seconds each probe waits for the server to make progress.")(func)
    func = click.option("--run", "run_cmd", metavar="'CMD {port}'",
                        help="Start the server with this command ({port}: a free port chosen for it), grade it, "
                             "then stop it: one command per submission.")(func)
    return func


@click.group()
def check() -> None:
    """Grade a server you wrote: each probe prints PASS, or FAIL with the mistake and the fix.

    The probes provoke what TCP is allowed to do (split a message, merge several, half-close,
    reset) and what real clients do (arrive together, sit idle, vanish). Every probe has a
    deadline, so a broken server makes the grader fail, never hang. Exit status: 0 all passed,
    1 some failed, 2 bad arguments. Give the server's HOST:PORT, or --run a command and the
    check starts the server on a free port and stops it afterwards. docs/learn.md has the
    probes, the chat subset, and a loop that grades a whole class.

    \b
    Examples:
      python -m socklab.lessons.tcp_echo_server 7007 &    # a lesson's server (or yours)
      socklab check echo 127.0.0.1:7007
      socklab check echo --udp 127.0.0.1:7008
      socklab check http 127.0.0.1:8080 --root ./www
      socklab check chat 127.0.0.1:7070
      socklab check echo 127.0.0.1:7007 --gradescope results.json   # for an autograder
      socklab check echo --run 'python3 server.py {port}'            # start it, grade it, stop it
    """


@check.command()
@click.argument("target", metavar="HOST:PORT", required=False)
@click.option("--udp", is_flag=True, help="The server speaks UDP datagrams (a UDP echo server / pinger lab).")
@click.option("--iterative", is_flag=True,
              help="The lab asks for an iterative server (one client at a time): leave out the probes "
                   "that need clients served at once.")
@_common
@run_cli
def echo(target: str | None, udp: bool, iterative: bool, as_json: bool, gradescope: str | None,
         only: tuple[str, ...], timeout: float, run_cmd: str | None) -> None:
    """Grade an echo server: every byte (TCP) or datagram (UDP) must come back to its sender.

    \b
    TCP probes: two small messages on one connection; one message a byte at a time; 100 messages
    in one segment; every byte value; 1 MiB; 16 MiB sent before reading (a slow reader: partial
    sends must not lose bytes); a second client while the first stays connected (an iterative
    server fails here); an idle client; 50 clients at once; half-close (the server must send
    everything back, then close: CLOSE_WAIT is named); a client that resets.
    UDP probes: one datagram; boundaries kept; a 60,000-byte datagram; 20 peers; a peer that
    vanished before its answer.

    \b
    Example:
      socklab check echo 127.0.0.1:7007
      socklab check echo 127.0.0.1:7007 --only half_close --only reset
      socklab check echo --iterative 127.0.0.1:7007   # lesson tcp-echo: one client at a time
      socklab check echo --run 'python3 server.py {port}' --gradescope results.json
    """
    from socklab.tools.check.echo import CONCURRENT_PROBES, tcp_probes, udp_probes

    def make(ep: Endpoint) -> list[Probe]:
        probes = udp_probes(ep, timeout) if udp else tcp_probes(ep, timeout)
        if iterative:
            probes = [p for p in probes if p.name not in CONCURRENT_PROBES]
        return _only(probes, only)

    _grade("echo --udp" if udp else "echo", target, run_cmd, udp, make, as_json, gradescope)


@check.command()
@click.argument("target", metavar="HOST:PORT", required=False)
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The directory the server serves: the grader compares a file from it byte for byte.")
@click.option("--path", "url_path", default=None, metavar="URL",
              help="The URL of a file that exists (default: the first file in --root, else /).")
@_common
@run_cli
def http(target: str | None, root: Path | None, url_path: str | None, as_json: bool, gradescope: str | None,
         only: tuple[str, ...], timeout: float, run_cmd: str | None) -> None:
    """Grade a web server (the classic lab): HTTP/1.1 over a socket you wrote.

    \b
    Probes: GET a file (status 200, body byte-exact with --root); Content-Length present and
    right; a request arriving in pieces; two requests on one keep-alive connection; 404 for a
    missing file; HEAD (headers, no body); 400 for garbage; no path traversal out of the
    served directory (../, %2e%2e/, ..%2f).

    \b
    Example:
      python -m socklab.lessons.web_server 8080 ./www &
      socklab check http 127.0.0.1:8080 --root ./www
      socklab check http --run 'python3 server.py {port} www' --root www
    """
    from socklab.tools.check.http import http_probes

    _grade("http", target, run_cmd, False, lambda ep: _only(http_probes(ep, root, url_path, timeout), only),
           as_json, gradescope)


@check.command()
@click.argument("target", metavar="HOST:PORT", required=False)
@_common
@run_cli
def chat(target: str | None, as_json: bool, gradescope: str | None, only: tuple[str, ...], timeout: float,
         run_cmd: str | None) -> None:
    """Grade a chat server that speaks the lab subset of socklab's line protocol.

    \b
    The subset (docs/chat-protocol.md, docs/learn.md): one command per line ending in LF;
    /nick NAME is answered by a line containing NAME; /join #room by a line containing #room;
    any other line is said in the room: every other member receives a line containing the
    sender's nick and the text (the sender at most one copy); /quit closes.

    \b
    Probes: nick; join; a message reaches the others (and not the sender twice); a line sent in
    pieces; two lines in one segment; 10 clients at once; a client that vanishes.

    \b
    Example:
      python -m socklab.lessons.chat_server 7070 &
      socklab check chat 127.0.0.1:7070
      socklab chat serve --tcp-port 7071 &    # socklab's own chat speaks the subset too
      socklab check chat 127.0.0.1:7071
    """
    from socklab.tools.check.chat import chat_probes

    _grade("chat", target, run_cmd, False, lambda ep: _only(chat_probes(ep, timeout), only), as_json, gradescope)
