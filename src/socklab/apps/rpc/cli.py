"""``socklab rpc serve`` and ``socklab rpc call``: JSON-RPC 2.0 from the command line."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from socklab.cli.access import log_options
from socklab.cli.options import (
    EXIT_NETWORK,
    build_settings,
    make_tracer,
    options_from,
    run_cli,
    trace_options,
)
from socklab.cli.output import json_text
from socklab.core.errors import UsageError


@click.group()
def rpc() -> None:
    """JSON-RPC 2.0 server and client over TCP, HTTP POST and WebSocket.

    \b
    Try it:
      socklab rpc serve --demo --listen tcp://127.0.0.1:7010 --listen http://127.0.0.1:7011/rpc
      socklab rpc call tcp://127.0.0.1:7010 subtract 42 23            # 19
      socklab rpc call http://127.0.0.1:7011/rpc rpc.discover           # the methods
      printf '{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":1}\\n' | nc -N 127.0.0.1 7010
      curl -H 'content-type: application/json' -d '{"jsonrpc":"2.0","method":"get_data","id":1}' \\
        http://127.0.0.1:7011/rpc
    """


def _settings_cls() -> Any:
    from socklab.apps.rpc.server import RpcSettings

    return RpcSettings


def _client_settings_cls() -> Any:
    from socklab.apps.rpc.settings import RpcClientSettings

    return RpcClientSettings


@rpc.command()
@click.argument("target", required=False, metavar="TARGET")
@click.option("--demo", is_flag=True, help="Serve the demo service (the specification's example methods).")
@click.option("--listen", "listen", multiple=True, metavar="URL",
              help="tcp://HOST:PORT, http://HOST:PORT/PATH or ws://HOST:PORT/PATH (tls://, https://, wss:// "
                   "with --tls-cert or --tls-self-signed); repeat for several (default: tcp:// on --host/--port).")
@options_from(_settings_cls())
@log_options
@trace_options
@run_cli
def serve(target: str | None, demo: bool, listen: tuple[str, ...], trace: bool, trace_json: str | None,
          **values: Any) -> None:
    """Serve TARGET's functions: module:object, a module, or path/to/file.py[:object].

    The same service is reachable on every --listen URL at once. One line per listener is
    printed when it is ready: `socklab rpc listening on URL (engine NAME)`.

    TARGET is imported with the current directory first on the module path, as `uvicorn calc:app`
    does: from the folder that holds calc.py, `socklab rpc serve calc` works.

    \b
    Examples:
      socklab rpc serve calc --port 7000                 # calc.py in this folder: its public functions
      socklab rpc serve calc:Service --engine pool --workers 8
      socklab rpc serve --demo --listen http://127.0.0.1:8000/rpc
    """
    from socklab.apps.rpc.server import RpcSettings
    from socklab.apps.rpc.server import serve as rpc_serve
    from socklab.apps.rpc.service import demo_service, load_target
    from socklab.runtime import serve_until_signalled

    if demo and target is not None:
        raise UsageError("give a TARGET (module:object) or --demo, not both")
    if not demo and target is None:
        raise UsageError("give the service to serve: a TARGET (module:object), or --demo for the built-in one")
    if not demo:
        _import_from_cwd()
    service = demo_service() if demo else load_target(str(target))
    settings = build_settings(RpcSettings, values)
    tracer = make_tracer(settings.engine, trace, trace_json)
    rs = rpc_serve(service, list(listen), settings, tracer=tracer)
    rs.server.start()
    serve_until_signalled(rs.server, "rpc", where=rs.urls, waiting_for="calls in flight",
                          on_ready=lambda: click.echo(f"  {len(service.methods)} methods", err=True))


def _import_from_cwd() -> None:
    """Put the current directory first on ``sys.path`` (uvicorn's default ``--app-dir .``).

    ``python -m socklab`` has it there already; the ``socklab`` console script does not, so a
    module beside the user could not be imported.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


# --workers comes from the shared server settings: say what it means here, for uvicorn users
for _param in serve.params:
    if _param.name == "workers" and isinstance(_param, click.Option):
        _param.help = ("Threads of the 'pool' engine (used with --engine pool): calls run on this many "
                       "threads of one process. Not uvicorn's --workers, which starts processes.")


def _arg(text: str) -> Any:
    """A command-line argument as JSON when it parses (``42``, ``true``, ``[1,2]``), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@rpc.command()
@click.argument("url")
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--named", "-n", multiple=True, metavar="NAME=VALUE",
              help="Pass a parameter by name (VALUE parsed as JSON when it parses); repeatable.")
@click.option("--params", "params_json", metavar="JSON", default=None,
              help="The params member verbatim: a JSON array or object.")
@click.option("--notify", is_flag=True, help="Send a notification (no answer is expected or printed).")
@options_from(_client_settings_cls(), exclude=("tls",))  # the URL's scheme says TLS
@run_cli
def call(url: str, method: str, args: tuple[str, ...], named: tuple[str, ...], params_json: str | None,
         notify: bool, **values: Any) -> None:
    """Call METHOD at URL with ARGS and print the result as JSON (or the error on stderr).

    URL: tcp://HOST:PORT, http://HOST:PORT/PATH, ws://HOST:PORT/PATH (tls://, https://, wss:// for TLS;
    --pin SHA256 trusts a --tls-self-signed server's certificate, no CA needed).

    ARGS are parsed as JSON when they parse (42, "text", [1,2], {"a":1}) and passed as strings
    otherwise. Exit status 1 when the server answers with an error.
    """
    from socklab.apps.rpc.channels import parse_url
    from socklab.apps.rpc.client import Client
    from socklab.apps.rpc.errors import RpcError
    from socklab.apps.rpc.settings import RpcClientSettings

    settings = build_settings(RpcClientSettings, values, retries=0)  # one attempt: a command says why at once
    if (settings.pin or settings.cafile or settings.insecure) and not parse_url(url).tls:
        raise UsageError(f"--pin, --cafile and --insecure are for TLS: {url!r} is not tls://, https:// or wss://")
    positional = [_arg(a) for a in args]
    kwargs: dict[str, Any] = {}
    for item in named:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--named {item!r}: use NAME=VALUE")
        kwargs[name] = _arg(value)
    if params_json is not None:
        if positional or kwargs:
            raise UsageError("--params replaces ARGS and --named: give one or the other")
        try:
            given = json.loads(params_json)
        except ValueError as exc:
            raise UsageError(f"--params is not JSON: {exc}") from None
        if isinstance(given, dict):
            kwargs = given
        elif isinstance(given, list):
            positional = given
        else:
            raise UsageError("--params must be a JSON array or object")
    if positional and kwargs:
        raise UsageError("JSON-RPC passes parameters by position or by name, not both")
    with Client(url, settings) as client:
        if notify:
            client.notify(method, *positional, **kwargs)
            return
        try:
            result = client.call(method, *positional, **kwargs)
        except RpcError as exc:
            detail = f" (data: {json.dumps(exc.data)})" if exc.has_data else ""
            click.echo(f"socklab: error {exc.code}: {exc.message}{detail}", err=True)
            sys.exit(EXIT_NETWORK)
    click.echo(json_text(result))  # pretty on a terminal, one compact line in a pipe (as httpie)


@rpc.command("bench")
@click.option("--engines", default="epoll,select,poll,threads,pool,asyncio,uvloop", show_default=True,
              help="Comma-separated engines to measure.")
@click.option("--calls", type=int, default=20000, show_default=True,
              help="Pipelined calls per run (sequential runs make a quarter of them).")
@click.option("--window", type=int, default=100, show_default=True, help="Calls in flight when pipelining.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@run_cli
def bench(engines: str, calls: int, window: int, as_json: bool) -> None:
    """Calls/s and latency, sequential and pipelined, per engine, beside Python's xmlrpc.server."""
    from socklab.apps.rpc.bench import run, table

    rows = run(engines.split(","), calls, window)
    click.echo(json.dumps(rows, indent=1) if as_json else table(rows))
