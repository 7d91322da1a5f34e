"""``socklab http serve [DIR]``: a hardened static file server on any engine."""

from __future__ import annotations

from typing import Any

import click

from socklab.apps.http.settings import HttpSettings
from socklab.cli.access import log_options
from socklab.cli.options import build_settings, make_tracer, options_from, run_cli, trace_options


@click.group()
def http() -> None:
    """HTTP/1.1 static file server (with the WebSocket layer other apps mount on).

    \b
    Try it:
      socklab http serve . --port 8080
      curl -v http://127.0.0.1:8080/
      curl -r 0-99 http://127.0.0.1:8080/README.md     # a Range request: 206
      curl -H 'Host: attacker.example' http://127.0.0.1:8080/   # 421: DNS rebinding refused
    Compare engines: socklab http serve . --engine threads
    """


@http.command()
@click.argument("directory", required=False, default=".", type=click.Path(exists=True, file_okay=False))
@options_from(HttpSettings)
@log_options
@trace_options
@run_cli
def serve(directory: str, trace: bool, trace_json: str | None, **values: Any) -> None:
    """Serve the files under DIRECTORY (default: the current one).

    Prints `socklab http listening on http://HOST:PORT (engine E)`, then one access-log line per
    response (--log-format common|json|none). Every limit is on by default; see docs/http.md.
    On loopback only Host names of this machine are answered (--allow-host adds one), and one
    address holds at most --max-connections-per-ip connections. HTTPS without a certificate file:
    --tls-self-signed prints the SHA-256 of the certificate it made (curl --insecure, or pin it).
    """
    from socklab.apps.http.router import Router
    from socklab.apps.http.server import serve_http
    from socklab.runtime import serve_until_signalled

    settings = build_settings(HttpSettings, values)
    tracer = make_tracer(settings.engine, trace, trace_json)
    router = Router()
    router.static("/", directory, follow_symlinks=settings.follow_symlinks, listing=settings.listing,
                  cache_bytes=settings.file_cache)
    server = serve_http(settings, router, tracer=tracer)
    serve_until_signalled(server, "http", ["https" if settings.serves_tls else "http"])
