"""``socklab peer``: run a mesh node (``--listen``), or talk to a running one (status, say, share, fetch)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from typing import Any

import click

from socklab.apps.peer.settings import PeerSettings, default_control_path
from socklab.cli.access import log_options
from socklab.cli.options import Number, build_settings, make_tracer, options_from, run_cli, trace_options
from socklab.protocols.text import escape_peer_text

PROMPT_HELP = ("type a line to send it to every node; /share PATH offers a file; /fetch NAME [DIR] fetches one; "
               "/peers lists neighbours; /quit stops")


@click.group(invoke_without_command=True)
@click.option("--listen", "listen", metavar="[HOST:]PORT", default=None,
              help="Run a node accepting links here (HOST defaults to 127.0.0.1; give a LAN address to "
                   "be reachable from other hosts).")
@options_from(PeerSettings, exclude=("host", "port", "unix"))
@log_options
@trace_options
@run_cli
def peer(listen: str | None, trace: bool, trace_json: str | None, **values: Any) -> None:
    """A peer-to-peer gossip mesh: every node both listens and dials.

    \b
    Run a node (each in its own terminal):
      socklab peer --listen 7001 --name ann --discover
      socklab peer --listen 7002 --name bob --join 127.0.0.1:7001
    A mesh only your CA's nodes can join (mutual TLS), or discovery over IPv6:
      socklab peer --listen 7003 --name cat --tls-cert cat.pem --cafile ca.pem --join ...
    Links encrypted with no certificate files (but not authenticated: anyone may join):
      socklab peer --listen 7005 --name eve --tls-self-signed --join ...
      socklab peer --listen [fd00::1]:7004 --name dan --discover --group ff15::7777
    Type lines at a node's prompt: every node prints them once, with the path they took.
    Ask a running node:
      socklab peer status --name ann        # neighbours, RTT, messages, paths
      socklab peer say --name ann hello     # send without the prompt
      socklab peer share --name ann FILE    # offer a file;  socklab peer fetch --name bob FILE
    """
    ctx = click.get_current_context()
    if ctx.invoked_subcommand is not None:
        return
    if listen is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    _run_node(listen, trace, trace_json, values)


def _run_node(listen: str, trace: bool, trace_json: str | None, values: dict[str, Any]) -> None:
    from socklab.apps.peer.node import PeerNode
    from socklab.core.errors import UsageError
    from socklab.core.sockets import parse_endpoint
    from socklab.runtime import announce_tls, describe_address, register_server, serve_until_signalled

    if not values.get("name"):
        raise UsageError("a node needs a name: --name NAME")
    ep = parse_endpoint(listen, default_host="127.0.0.1")
    if ep.unix is not None:
        raise UsageError("--listen takes [HOST:]PORT (links are TCP)")
    settings = build_settings(PeerSettings, values, host=ep.host, port=ep.port)
    tracer = make_tracer(settings.engine, trace, trace_json)
    node = PeerNode(settings, tracer=tracer)
    register_server(node.server, app="peer")  # before the readiness lines: `ss` labels it once they are out
    # The readiness lines go out before the engine runs, so no node news can precede them.
    announce_tls(node.server, "peer")  # a --tls-self-signed node's fingerprint, before them
    for addr, scheme in zip(node.server.addresses, ("tls" if settings.serves_tls else "tcp", "unix"), strict=False):
        print(f"socklab peer listening on {describe_address(addr, scheme)} (engine {node.engine.name})")
    print(f"socklab peer {node.name} id {node.id} control unix:{node.control_path}", flush=True)
    print(f"  {PROMPT_HELP}", file=sys.stderr, flush=True)
    node.start()
    threading.Thread(target=_prompt_loop, args=(node,), name="socklab-peer-prompt", daemon=True).start()
    serve_until_signalled(node.server, "peer", where=[])  # lines printed above; registered for `ss`
    # Server.on_stop callbacks may still be running on the shutdown thread when serve_forever
    # returns (a daemon thread, cut short at exit): remove the socket file here as well.
    node.remove_control_socket()


def _prompt_loop(node: Any) -> None:
    """Read the prompt on its own thread; every action runs on the engine thread.

    On a terminal the line being typed stays intact under incoming messages (prompt_toolkit draws
    them above it); otherwise (a pipe, a test) stdin is read line by line.
    """
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession[str] = PromptSession()
        with patch_stdout(raw=True):
            while True:
                try:
                    line = session.prompt(f"{node.name}> ")
                except KeyboardInterrupt:  # Ctrl-C at the prompt: the same graceful stop as a signal
                    os.kill(os.getpid(), signal.SIGINT)
                    continue
                except EOFError:  # Ctrl-D
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                if _handle_line(node, line):
                    return
    for raw in sys.stdin:
        if _handle_line(node, raw.rstrip("\r\n")):
            return


def _handle_line(node: Any, line: str) -> bool:
    """Act on one typed line; True when the prompt should stop (/quit)."""
    from socklab.core.errors import SocklabError

    def guarded(action: Any) -> Any:
        def run() -> None:
            try:
                action()
            except SocklabError as exc:
                node.log(f"error: {exc}")
        return run

    if not line.strip():
        return False
    word, _, rest = line.partition(" ")
    if word == "/quit":
        os.kill(os.getpid(), signal.SIGINT)
        return True
    if word == "/share":
        node.submit(guarded(functools.partial(node.share, rest.strip())))
    elif word == "/fetch":
        parts = rest.split()
        if not parts:
            node.submit(lambda: node.log("usage: /fetch NAME [DIR]"))
            return False
        node.submit(guarded(functools.partial(node.fetch, parts[0], _ignore,
                                              parts[1] if len(parts) > 1 else None)))
    elif word in ("/peers", "/status"):
        def show() -> None:
            for n in node.status()["neighbours"]:
                rtt = "-" if n["rtt_ms"] is None else f"{n['rtt_ms']:.2f} ms"
                node.log(f"{n['name']:<16} {n['listen']:<22} {n['direction']:<4} rtt {rtt}")
        node.submit(show)
    elif word.startswith("/") and not word.startswith("//"):
        node.submit(lambda: node.log(PROMPT_HELP))
    else:
        text = line[1:] if line.startswith("//") else line
        node.submit(guarded(functools.partial(node.say, text)))
    return False


def _ignore(result: Any) -> None:
    """Fetches started at the prompt report through the node's log lines."""


def _control_options(func: Any) -> Any:
    func = click.option("--control", "control", metavar="PATH", default=None,
                        help="The node's control socket (default: from --name).")(func)
    func = click.option("--name", "-n", "name", default=None, help="The running node's name.")(func)
    return func


def _ask(name: str | None, control: str | None, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    from socklab.apps.peer.control import control_request
    from socklab.core.errors import SocklabError, UsageError

    if control is None:
        if not name:
            raise UsageError("say which node: --name NAME (or --control PATH)")
        control = default_control_path(name)
    answer = control_request(control, request, timeout=timeout)
    if not answer.get("ok"):
        raise SocklabError(str(answer.get("error", "the node refused")))
    return answer


@peer.command()
@_control_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--watch", type=float, default=None, metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C.")
@click.option("--messages", type=int, default=10, show_default=True, help="Recent messages shown with their path.")
@run_cli
def status(name: str | None, control: str | None, as_json: bool, watch: float | None, messages: int) -> None:
    """Show a running node: neighbours and their RTT, message counters, the path each message took."""
    import json

    if as_json:
        click.echo(json.dumps(_ask(name, control, {"cmd": "status"})["status"], indent=2))
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if watch is None:
        console.print(_render(_ask(name, control, {"cmd": "status"})["status"], messages))
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(_render(_ask(name, control, {"cmd": "status"})["status"], messages), refresh=True)
            time.sleep(max(0.1, watch))


def _render(st: dict[str, Any], messages: int) -> Any:
    """The status as rich tables. Every name, text and file name came from a peer (or may have): shown
    as typed - ``[red]`` is not markup (``[/b]`` made rich raise) - and with controls escaped."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    def shown(value: Any) -> str:
        return escape(escape_peer_text(str(value)))

    m = st["messages"]
    tls = ", TLS mesh" if st.get("tls") else ""
    head = (f"[bold]{shown(st['name'])}[/] id {st['id']} listening on {shown(st['listen'])} "
            f"(engine {st['engine']}{tls})\n"
            f"messages: {m['unique']} received, {m['sent']} sent, {m['forwarded']} forwarded, "
            f"{m['duplicates']} duplicates dropped; {m['seen_ids']} ids remembered, {m['history']} in history")
    nb = Table(title="neighbours", title_justify="left")
    for col in ("name", "address", "dir", "RTT ms", "up s"):
        nb.add_column(col)
    for n in st["neighbours"]:
        nb.add_row(shown(n["name"]), shown(n["listen"]), n["direction"], "-" if n["rtt_ms"] is None else f"{n['rtt_ms']:.3f}",
                   f"{n['up_s']:.0f}")
    recent = Table(title="recent messages (path they took)", title_justify="left")
    for col in ("from", "text", "path"):
        recent.add_column(col)
    for r in st["recent"][-messages:] if messages > 0 else []:
        text = shown(r["text"]) if r.get("text") else f"\\[shares {shown(r['offer']['file'])}]"
        recent.add_row(shown(r["from"]), text, shown(" > ".join(r["path"])))
    parts: list[Any] = [head, nb, recent]
    if st["redialling"]:
        parts.append("redialling: " + shown(", ".join(st["redialling"])))
    if st["offers"]:
        files = Table(title="files offered", title_justify="left")
        for col in ("file", "size", "from", "sha256"):
            files.add_column(col)
        for o in st["offers"]:
            files.add_row(shown(o["file"]), str(o["size"]), shown(o["from"]), shown(o["sha256"][:16]) + "...")
        parts.append(files)
    return Group(*parts)


@peer.command()
@_control_options
@click.argument("text", nargs=-1, required=True)
@run_cli
def say(name: str | None, control: str | None, text: tuple[str, ...]) -> None:
    """Send a message from a running node (as if typed at its prompt)."""
    click.echo(_ask(name, control, {"cmd": "say", "text": " ".join(text)})["mid"])


@peer.command()
@_control_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@run_cli
def share(name: str | None, control: str | None, path: str) -> None:
    """Offer a file from a running node: every node hears of it and can fetch it from this one."""
    answer = _ask(name, control, {"cmd": "share", "path": os.path.abspath(path)})
    click.echo(f"shared {answer['file']} ({answer['size']} bytes) sha256 {answer['sha256']}")


@peer.command()
@_control_options
@click.argument("file")
@click.option("--dest", default=None, metavar="DIR", help="Directory to write it to (default: the node's --downloads).")
@click.option("--timeout", type=Number(float, above=0), default=300.0, show_default=True, help="Seconds to wait for the transfer.")
@run_cli
def fetch(name: str | None, control: str | None, file: str, dest: str | None, timeout: float) -> None:
    """Have a running node fetch an offered file (by name or sha256 prefix) straight from its holder."""
    request: dict[str, Any] = {"cmd": "fetch", "file": file}
    if dest:
        request["dest"] = os.path.abspath(dest)
    answer = _ask(name, control, request, timeout=timeout)
    click.echo(f"fetched {answer['file']} ({answer['size']} bytes, sha256 verified) -> {answer['path']}")
