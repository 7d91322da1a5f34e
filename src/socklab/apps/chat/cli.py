"""``socklab chat serve`` and ``socklab chat connect``: a multi-room chat over TCP and the web."""

from __future__ import annotations

from typing import Any

import click

from socklab.apps.chat.settings import ChatSettings
from socklab.cli.access import log_options
from socklab.cli.options import build_settings, make_tracer, options_from, run_cli, trace_options
from socklab.core.settings import ClientSettings
from socklab.runtime import serve_until_signalled


@click.group()
def chat() -> None:
    """A chat: rooms shared by nc/telnet users, a terminal client and browsers.

    \b
    Try it:
      socklab chat serve --tcp-port 7070 --http-port 7080     # history kept in SQLite
      nc 127.0.0.1 7070                                       # type /nick ann, then talk
      socklab chat connect 127.0.0.1:7070 --nick bob          # the terminal client
      open http://127.0.0.1:7080/                             # the web page
    Several nodes sharing rooms:  socklab chat serve --broker redis://127.0.0.1:6379
    """


@chat.command()
@options_from(ChatSettings, exclude=("port", "unix", "web"))
@log_options
@trace_options
@run_cli
def serve(trace: bool, trace_json: str | None, **values: Any) -> None:
    """Run a chat node: the line protocol on --tcp-port, the web page and WebSocket on --http-port.

    One readiness line per listener is printed on stdout. History survives restarts (SQLite,
    --store); with --broker several nodes share rooms, nicks and history through Redis.

    Anyone who can reach the ports is a peer: text with control, bidi or zero-width characters
    is refused (ERR 422), a connection must choose a nick within --register-timeout, one address
    holds at most --max-per-address chat connections, commands are rate-limited, and the web
    port answers only its own pages (--allow-origin, --allow-host to widen that).

    Crowded rooms: joins and parts go out once per --presence-interval; above --presence-names
    members a room gets one PRESENCE line per tick (the count and a few names) instead of a
    JOIN/PART line per nick, and /who lists the members on demand.

    \b
    Examples:
      socklab chat serve --store :memory:                     # nothing kept on disk
      socklab chat serve --max-per-address 4 --register-timeout 10
      socklab chat serve --host 0.0.0.0 --max-per-address 256 # clients behind one NAT
      socklab chat serve --allow-origin http://127.0.0.1:8000 # a page served elsewhere may connect
      socklab chat serve --presence-names 1000 --max-connections 20000  # big rooms still named up to 1,000
    """
    from socklab.apps.chat.server import ChatServer

    settings = build_settings(ChatSettings, values)
    tracer = make_tracer(settings.engine, trace, trace_json)
    node = ChatServer(settings, tracer)
    serve_until_signalled(node.server, "chat", node.schemes)


@chat.command()
@click.argument("address", metavar="HOST:PORT")
@click.option("--nick", "-n", required=True, help="Your nick (letters, digits, _ and -); at the prompt, /nick NEW changes it.")
@click.option("--room", "-r", default=None, help="Room to join after connecting (default: the server's).")
@click.option("--plain", is_flag=True, help="No full-screen prompt: read stdin, print lines (for scripts).")
@options_from(ClientSettings, exclude=("connect_timeout",))
@run_cli
def connect(address: str, nick: str, room: str | None, plain: bool, **values: Any) -> None:
    """Chat from the terminal: incoming messages never break the line you are typing.

    Up/down browse what you typed; the commands are the server's (/join, /msg, /who, /help...).
    Reconnects after a server restart and catches up from the last message seen.
    """
    from socklab.apps.chat.client import run_terminal_client
    from socklab.core.sockets import client_ssl_context

    cs = build_settings(ClientSettings, values)
    # --pin makes its own context (no CA: the fingerprint is the check), from the settings
    tls = client_ssl_context(cs.cafile, cs.insecure) if (cs.tls or cs.cafile or cs.insecure) and not cs.pin else None
    run_terminal_client(address, nick, room=room, plain=plain, tls=tls, server_name=cs.server_name, settings=cs)
