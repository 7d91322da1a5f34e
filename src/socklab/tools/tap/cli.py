"""``socklab tap``: the command line of the recording, fault-injecting relay.

Why this exists: the relay is a library (:class:`~socklab.tools.tap.Tap`); this module maps flags
onto it. ``socklab tap LISTEN --to TARGET`` runs a tap (the ``run`` subcommand is implied);
``socklab tap ctl ...`` talks to a running one; ``socklab tap replay`` replays a recording;
``socklab tap faults`` lists the fault kinds.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from socklab.cli.options import EXIT_VERIFY, build_settings, make_tracer, options_from, run_cli, trace_options
from socklab.cli.params import WritablePath
from socklab.core.errors import UsageError
from socklab.core.sockets import parse_endpoint
from socklab.core.trace import format_addr
from socklab.protocols.faults import FAULT_KINDS, Fault
from socklab.runtime import announce_tls, register_server, serve_until_signalled
from socklab.tools.tap.relay import Observer, Tap
from socklab.tools.tap.settings import TapSettings

__all__ = ["tap"]

_SUBCOMMANDS = ("run", "ctl", "replay", "faults")


class _TapGroup(click.Group):
    """``socklab tap LISTEN --to T`` means ``socklab tap run LISTEN --to T``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_TapGroup)
def tap() -> None:
    """A relay that shows, records and breaks what passes: `socklab tap LISTEN --to TARGET`.

    \b
    Examples:
      socklab tap 127.0.0.1:8081 --to 127.0.0.1:8080 --text            # watch HTTP go by
      socklab tap :8081 --to :8080 --pcap http.pcapng                  # then: tshark -r http.pcapng
      socklab tap :8081 --to :8080 --pcap - | tshark -r -               # live, in tshark
      socklab tap :5353 --to :53 --udp --fault loss:upstream,probability=0.2 --seed 7
      socklab tap :8081 --to :8080 --ctl 0                              # then: socklab tap ctl PORT list
      socklab tap --api 8474                                            # a toxiproxy server (its clients, curl)
      socklab tap :8081 --to :8080 --api 8474   # ...with this proxy in it, named "tap"

    \b
    Units are toxiproxy's: times in ms, slicer delay in MICROseconds, bandwidth rate in KB/s
    (1 KB = 1000 bytes; it used to be bytes/s: divide old rates by 1000).
    """


@tap.command("run")
@click.argument("listen", required=False)
@options_from(TapSettings, exclude=("host", "port", "unix", "workers", "queue_size"),
              defaults={"shutdown_timeout": 1.0})
@click.option("--hexdump", "view", flag_value="hex", help="Print what passes as a hexdump.")
@click.option("--text", "view", flag_value="text", help="Print what passes as text.")
@click.option("--quiet", "view", flag_value="none", default=True,
              help="Print only connections and faults (the default).")
@click.option("--pcap", metavar="FILE", type=WritablePath(allow_dash=True), help="Write a pcapng capture (faults as packet comments). '-': stream "
                                            "it to stdout, a block at a time, for `| tshark -r -` or "
                                            "`| wireshark -k -i -` (then every other line goes to stderr).")
@click.option("--record", metavar="FILE", type=WritablePath(), help="Record sessions as JSON lines for `socklab tap replay`.")
@click.option("--api", metavar="[HOST:]PORT", default=None,
              help="Serve toxiproxy's HTTP API (/proxies, /proxies/NAME/toxics, /reset...; toxiproxy's "
                   "port is 8474) on 127.0.0.1 unless HOST says otherwise: toxiproxy's clients and curl "
                   "create proxies and add toxics. LISTEN --to TARGET, if given, is the proxy --name. "
                   "A HOST that is not loopback lets other machines change the faults: a warning says so.")
@click.option("--name", "proxy_name", default="tap", show_default=True,
              help="With --api: the name of the LISTEN proxy.")
@trace_options
@run_cli
def run(listen: str | None, view: str, pcap: str | None, record: str | None, api: str | None, proxy_name: str,
        trace: bool, trace_json: str | None, **values: Any) -> None:
    """Relay LISTEN (HOST:PORT, or PORT on 127.0.0.1) to --to, showing, recording and breaking traffic.

    With --api, serve toxiproxy's HTTP API too (or only: `socklab tap --api 8474`). The relay's
    options are the fields of socklab.tools.tap.TapSettings, which the library takes as they are.

    \b
    Examples:
      socklab tap 8081 --to 127.0.0.1:8080 --text
      socklab tap 8081 --to 127.0.0.1:8080 --fault bandwidth:downstream,rate=100   # 100 KB/s
      socklab tap 8081 --to 127.0.0.1:8080 --pcap - | tshark -l -r -
      socklab tap --api 8474 &
      curl --json '{"name":"web","listen":"127.0.0.1:8081","upstream":"127.0.0.1:8080"}' localhost:8474/proxies
      curl --json '{"type":"latency","attributes":{"latency":200}}' localhost:8474/proxies/web/toxics
    """
    from socklab.tools.tap.observe import DumpObserver, PcapObserver, RecordObserver

    udp = bool(values["udp"])
    if listen is None:
        if api is None:
            raise UsageError("give LISTEN --to TARGET (a relay), --api PORT (toxiproxy's API), or both")
        if values["target"] or values["faults"] or pcap or record or values["ctl"] or udp:
            raise UsageError("--to, --fault, --pcap, --record, --ctl and --udp are for the LISTEN relay: "
                             "give LISTEN too (the API's own proxies take their toxics over HTTP)")
        _serve_api(api, None, build_settings(TapSettings, values), proxy_name, [], sys.stdout)
        return
    if not values["target"]:
        raise UsageError("LISTEN needs --to HOST:PORT (where to relay to)")
    if api is not None and udp:
        raise UsageError("--api speaks toxiproxy's API, whose proxies are TCP: not with --udp")
    at = parse_endpoint(listen, default_host="127.0.0.1")
    settings = build_settings(TapSettings, values, transport="udp" if udp else "tcp", host=at.host, port=at.port)
    out = sys.stderr if pcap == "-" else sys.stdout  # with --pcap -, stdout carries the capture only
    observers: list[Observer] = [DumpObserver(out, view)]
    if pcap:
        observers.append(PcapObserver(pcap))
    if record:
        observers.append(RecordObserver(record))
    tracer = make_tracer(settings.engine, trace, trace_json)

    def make_relay(at: Any, to: Any, with_faults: list[Fault]) -> Tap:  # again when --api re-enables it
        return Tap(settings.with_fields(listen=at, target=to, faults=with_faults, ctl=None), observers=observers,
                   tracer=tracer)
    relay = Tap(settings, observers=observers, tracer=tracer).bind()
    scheme = "udp" if udp else ("tls" if settings.serves_tls else "tcp")
    ctl_addr = relay.control_address
    if ctl_addr is not None and not _is_loopback(ctl_addr):
        click.echo(f"socklab tap: warning: the control API listens on {format_addr(ctl_addr)}, not on "
                   f"loopback: anyone who can reach it can change this tap's faults (it has no "
                   f"authentication); use --ctl PORT for 127.0.0.1", err=True)

    where = f"{scheme}://{format_addr(relay.address)} -> {relay.target}"

    def ready() -> None:  # once the signal handlers are in place: a SIGTERM after it is graceful
        click.echo(f"socklab tap listening on {where}", file=out)
        details()

    def details() -> None:
        if ctl_addr is not None:
            click.echo(f"socklab tap control on tcp://{format_addr(ctl_addr)}", file=out)
        click.echo(f"socklab tap seed {relay.seed} faults: "
                   f"{', '.join(repr(f) for f in settings.faults) or 'none'}", file=out)
        out.flush()

    if api is not None:
        announce_tls(relay.server, "tap")  # its readiness line is the API's: the fingerprint goes first
        _serve_api(api, relay, settings, proxy_name, observers, out, announce=ready, relay_factory=make_relay)
        return
    serve_until_signalled(relay.server, "tap", stream=out, where=[where], on_ready=details,
                          waiting_for="relayed connections", serve=relay.serve_forever)


def _serve_api(api: str, relay: Tap | None, settings: TapSettings, name: str, observers: list[Observer],
               out: Any, announce: Any = None, relay_factory: Any = None) -> None:
    """Serve toxiproxy's HTTP API on the main thread; every proxy (``relay`` too) runs on its own.

    The API's proxies take the command's settings (engine, seed, timeouts, splice...) without its
    TLS, UDP and control port: toxiproxy's proxies are plain TCP, their toxics come over HTTP.
    """
    from socklab.apps.http.api import HttpSettings, serve_http
    from socklab.core.sockets import Endpoint
    from socklab.tools.tap.api import ToxiproxyApi

    base = settings.with_fields(tls_cert=None, tls_key=None, tls_self_signed=False, to_tls=False, cafile=None,
                                insecure=False, to_server_name=None, pin=None, udp=False, ctl=None, faults=())

    def make_tap(listen: Endpoint, upstream: Endpoint, faults: list[Fault]) -> Tap:
        return Tap(base.with_fields(listen=listen, target=upstream, faults=faults))

    api_ep = parse_endpoint(api, default_host="127.0.0.1")
    toxi = ToxiproxyApi(make_tap, log=lambda line: click.echo(line, err=True))
    http = HttpSettings(host=api_ep.host, port=api_ep.port, engine=settings.engine, log_format="none",
                        shutdown_timeout=settings.shutdown_timeout)
    server = serve_http(http, toxi.router(), label="tap-api")
    try:
        if relay is not None:
            relay.start()
            register_server(relay.server, app="tap")  # the proxy given on the command line, for `ss`
            toxi.add_proxy(name, Endpoint(), Endpoint(relay.target.host, relay.target.port), tap=relay,
                           observers=observers, factory=relay_factory)
        api_addr = server.addresses[0]
        if not _is_loopback(api_addr):
            click.echo(f"socklab tap: warning: the toxiproxy API listens on {format_addr(api_addr)}, not on "
                       f"loopback: anyone who can reach it can change the faults and open proxies (it has "
                       f"no authentication); use --api PORT for 127.0.0.1", err=True)

        def ready() -> None:
            if announce is not None:
                announce()
            click.echo(f"socklab tap api on http://{format_addr(api_addr)} (toxiproxy's HTTP API; try: "
                       f"curl http://{format_addr(api_addr)}/proxies)", file=out)
            out.flush()
        serve_until_signalled(server, "tap-api", stream=out, where=[], on_ready=ready,
                              waiting_for="API calls")
    finally:
        toxi.close()
        if relay is not None:
            relay.close()


def _is_loopback(addr: Any) -> bool:
    import ipaddress

    if not isinstance(addr, tuple):
        return True  # a Unix socket is local
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@tap.command("ctl")
@click.argument("port", metavar="[HOST:]PORT")
@click.argument("op", type=click.Choice(["list", "add", "remove", "clear", "stats"]))
@click.argument("arg", required=False)
@run_cli
def ctl(port: str, op: str, arg: str | None) -> None:
    """Change a running tap's faults: list, add SPEC, remove NAME, clear, stats.

    The control port speaks SOCKLAB-TAP/1 (a greeting line, then JSON lines; see docs/tools.md),
    so an HTTP request from a web page cannot change the faults.

    \b
      socklab tap ctl 9999 add latency:downstream,latency=200
      socklab tap ctl 9999 remove latency_downstream
    """
    from socklab.tools.tap.control import request

    ep = parse_endpoint(port, default_host="127.0.0.1")
    req: dict[str, Any] = {"op": op}
    if op == "add":
        if not arg:
            raise UsageError("add needs a fault SPEC, e.g. latency:downstream,latency=100")
        req["fault"] = Fault.parse(arg).to_dict()
    elif op == "remove":
        if not arg:
            raise UsageError("remove needs a fault NAME (see `ctl PORT list`)")
        req["name"] = arg
    answer = request(ep.host, ep.port, req)
    click.echo(json.dumps(answer, indent=2))
    if not answer.get("ok"):
        from socklab.protocols.text import escape_peer_text

        raise UsageError(escape_peer_text(answer.get("error")))  # whatever listens there wrote it


@tap.command("replay")
@click.argument("recording", type=click.Path(exists=True, dir_okay=False))
@click.option("--to", "target", required=True, metavar="HOST:PORT", help="The server to replay against.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for answers.")
@run_cli
def replay_cmd(recording: str, target: str, timeout: float) -> None:
    """Replay a `--record` file's client side against a server; compare the answers (exit 3 if they differ)."""
    from socklab.tools.tap.replay import replay

    results = replay(recording, parse_endpoint(target, default_host="127.0.0.1"), timeout=timeout)
    for r in results:
        click.echo(r.describe())
    bad = [r for r in results if not r.matches]
    click.echo(f"{len(results) - len(bad)} of {len(results)} connections answered as recorded")
    if bad:
        sys.exit(EXIT_VERIFY)


@tap.command("faults")
def faults_cmd() -> None:
    """List the fault kinds and their parameters."""
    for kind, (transport, params, meaning) in FAULT_KINDS.items():
        ps = ", ".join(f"{k}={v:g}" for k, v in params.items()) or "-"
        click.echo(f"{kind:<11} {transport:<4} {meaning}\n{'':16}params: {ps}")
