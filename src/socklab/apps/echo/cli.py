"""``socklab echo serve`` and ``socklab echo client``: the first lesson, on every engine."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click

from socklab.cli.access import access_logged, log_options
from socklab.cli.options import (
    Number,
    build_settings,
    make_tracer,
    options_from,
    run_cli,
    trace_options,
)
from socklab.core.errors import UsageError
from socklab.core.settings import ClientSettings, ServerSettings, setting
from socklab.core.sockets import parse_endpoint
from socklab.runtime import Server, serve_until_signalled


@dataclass
class EchoSettings(ServerSettings):
    """The echo server's settings: the common server settings plus the transport."""

    udp: bool = setting(False, "Serve UDP datagrams instead of a TCP stream.")


@click.group()
def echo() -> None:
    """Echo server and client: the smallest program that shows the whole socket lifecycle.

    \b
    Try it in two terminals:
      socklab echo serve --port 7007 --trace
      socklab echo client 127.0.0.1:7007 --trace
    Then compare engines:  socklab echo serve --port 7007 --engine threads --trace
    And datagrams:         socklab echo serve --udp --port 7007 / socklab echo client --udp 127.0.0.1:7007
    """


@echo.command()
@options_from(EchoSettings)
@log_options
@trace_options
@run_cli
def serve(trace: bool, trace_json: str | None, **values: Any) -> None:
    """Run an echo server: every byte (TCP) or datagram (UDP) goes back to its sender.

    With --port 0 the kernel picks a free port; the first line printed says which.
    TLS without a certificate file: `socklab echo serve --port 7443 --tls-self-signed`, then
    `socklab echo client 127.0.0.1:7443 --pin SHA256` with the fingerprint it printed.
    """
    from socklab.apps.echo.protocol import EchoDatagramProtocol, EchoProtocol

    settings = build_settings(EchoSettings, values, transport="udp" if values.get("udp") else None)
    tracer = make_tracer(settings.engine, trace, trace_json)
    server = Server(settings, tracer=tracer, label="echo")
    if settings.udp:
        if settings.serves_tls:
            raise UsageError("TLS needs TCP: drop --udp or --tls-cert/--tls-self-signed")
        if settings.unix:
            raise UsageError("--unix serves a stream socket: drop --udp")
        server.listen_udp(EchoDatagramProtocol)
    else:
        server.listen(access_logged(EchoProtocol, "echo"))
    scheme = "udp" if settings.udp else ("tls" if settings.serves_tls else "tcp")
    serve_until_signalled(server, "echo", [scheme])


@echo.command()
@click.argument("address", metavar="HOST:PORT")
@click.option("--udp", is_flag=True, help="Speak UDP: one datagram per message, with retries on loss.")
@click.option("--count", "-c", type=Number(int, 1), default=None,
              help="Ping mode: send this many messages and print statistics (like ping).")
@click.option("--size", "-s", type=Number(int, 1, 16 * 1024 * 1024), default=64, show_default=True, help="Ping mode: bytes per message.")
@click.option("--interval", "-i", type=Number(float, 0), default=0.2, show_default=True,
              help="Ping mode: seconds between messages.")
@click.option("--timeout", type=Number(float, above=0), default=2.0, show_default=True, help="Seconds to wait for each echo.")
@click.option("--retries", type=Number(int, 0), default=2, show_default=True,
              help="UDP: resend an unanswered datagram this many times before counting it lost.")
@click.option("--json", "as_json", is_flag=True, help="Print the ping statistics as JSON.")
@options_from(ClientSettings)
@trace_options
@run_cli
def client(address: str, udp: bool, count: int | None, size: int, interval: float, timeout: float,
           retries: int, as_json: bool, trace: bool, trace_json: str | None, **values: Any) -> None:
    """Talk to an echo server at HOST:PORT ([v6addr]:PORT, or unix:/path).

    Interactive: each line you type comes back with its round-trip time. Ping mode (--count):
    send messages of --size bytes and print loss and RTT statistics at the end.
    """
    from socklab.apps.echo.client import EchoClient

    cs = build_settings(ClientSettings, values, transport="udp" if udp else None)
    if udp and cs.uses_tls:
        raise UsageError("--tls needs TCP: drop --udp or --tls")
    if udp and size > 65503:
        raise UsageError("--size must be 0..65503 for UDP (one datagram, 4 bytes of it a sequence number)")
    tracer = make_tracer("client", trace, trace_json)
    endpoint = parse_endpoint(address)
    with EchoClient(endpoint, udp=udp, timeout=timeout, retries=retries, settings=cs, tracer=tracer) as c:
        if count is not None:
            _ping(c, address, count, size, interval, as_json)
        else:
            _interactive(c, address)


def _ping(c: Any, address: str, count: int, size: int, interval: float, as_json: bool) -> None:
    def report(seq: int, rtt: float | None, err: str | None) -> None:
        if as_json:
            return
        if rtt is None:
            click.echo(f"seq={seq} lost ({err})")
        else:
            click.echo(f"{size} bytes from {address}: seq={seq} time={rtt:.3f} ms")

    if not as_json:
        click.echo(f"ECHO {address}: {count} messages of {size} bytes")
    stats = c.ping(count, size, interval, report)
    summary = stats.summary()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"--- {address} echo statistics ---")
        click.echo(f"{summary['sent']} sent, {summary['received']} received, {summary['loss_percent']}% loss, "
                   f"{summary['retries']} resends")
        if stats.rtts_ms:
            click.echo(f"rtt min/avg/max/mdev = {summary['rtt_min_ms']}/{summary['rtt_avg_ms']}/"
                       f"{summary['rtt_max_ms']}/{summary['rtt_mdev_ms']} ms")
    if stats.received < stats.sent:
        sys.exit(1)


def _interactive(c: Any, address: str) -> None:
    if sys.stdin.isatty():
        click.echo(f"connected to {address}; type lines, Ctrl-D to finish", err=True)

    def report(line: bytes, rtt: float) -> None:
        text = line.decode(errors="replace").rstrip("\n")
        click.echo(f"{text}    ({rtt:.3f} ms)")

    c.interactive(iter(sys.stdin.buffer.readline, b""), report)
