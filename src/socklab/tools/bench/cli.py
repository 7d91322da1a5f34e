"""``socklab bench``: measure the echo server on every engine against fair references, and each app.

Why this exists: the commands below are the whole method in one place - which servers are run,
how they are pinned, how long, how many times - so anyone can reproduce a published figure or
compare socklab with their own server (``--target HOST:PORT``). Everything they start ships in
the package: the reference servers, the C sources of the load generators (compiled on first use
into a user cache), and each app's benchmark (:mod:`.tap`, :mod:`.transfer`, :mod:`.http`,
:mod:`.chat`, :mod:`.ws`).

\b
  socklab bench echo                          # every engine, 1 KiB x 20 connections, ping-pong
  socklab bench echo --size 65536 --connections 10 --with-c --chart echo.html
  socklab bench echo --engines epoll --target 127.0.0.1:8080   # compare with another server
  socklab bench sweep --chart sweep.html      # 10 -> 10,000 mostly idle connections
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console

from socklab.cli.options import run_cli
from socklab.core.errors import UsageError
from socklab.core.settings import ENGINE_NAMES
from socklab.tools.bench.options import (
    measurement_options,
    run_meta,
    save_figures,
    slice_option,
    table_console,
)

__all__ = ["bench"]

SWEEP_ENGINES = ("select", "poll", "epoll", "asyncio", "uvloop", "threads")
ITERATIVE_WHY = ("iterative serves one connection at a time, so with several connections all but one "
                 "would wait for the first to close: it is left out of concurrency runs")
POOL_WHY = ("pool serves at most --workers connections at once (the rest queue): idle connections would "
            "occupy every worker, so the sweep would measure its queue limit; pass --engines pool to see it")


def _engines(spec: str | None, default: tuple[str, ...], connections: int, err: Console) -> list[str]:
    from socklab.engines import engine_class

    explicit = spec is not None and spec != "all"  # "all" skips what cannot run, with a note
    names = [e.strip() for e in spec.split(",") if e.strip()] if spec else list(default)
    if spec == "all":
        names = list(ENGINE_NAMES)
    out = []
    for name in names:
        if name not in ENGINE_NAMES:
            raise UsageError(f"unknown engine {name!r}; choose from: {', '.join(ENGINE_NAMES)}")
        if name == "iterative" and connections > 1:
            if explicit:
                raise UsageError(ITERATIVE_WHY + " (use --connections 1)")
            err.print(f"[dim]note: {ITERATIVE_WHY}[/dim]")
            continue
        try:
            engine_class(name)
        except UsageError as exc:
            if explicit:
                raise
            err.print(f"[yellow]skipped {name}: {exc}[/yellow]")
            continue
        out.append(name)
    return out


def _targets(values: tuple[str, ...]) -> list[tuple[str, int]]:
    out = []
    for v in values:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise UsageError(f"--target {v!r}: expected HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return out


@click.group()
def bench() -> None:
    """Measure socklab beside fair baselines: every figure next to one taken in the same run.

    On a shared machine two runs a minute apart differ by 10-30 %, more than the servers do, so
    each command runs socklab and its baselines together (a plain server written directly on the
    same mechanism, a C server, well-known peers such as nginx or netcat) and reports ratios.
    Servers run in their own processes, pinned to one core; the load comes from another.

    \b
      socklab bench echo --duration 3 --repeat 1     # every engine vs its plain reference
      socklab bench tap --smoke                      # what the tap adds to a connection
      socklab bench http --engines epoll --duration 2 --rounds 2
    """


def describe_setup(kinds: list[str], pinning: str, gen_cpu: int | None, interleave: bool,
                   slice_ms: float) -> tuple[str, str]:
    """What applies to this run, in words: (the pinning sentence, how the runs were taken).

    A ``--target`` is a server socklab did not start: it is not pinned, its CPU and memory are
    not watched, and it has no reference to take turns with (it is compared with whatever else
    runs: engines, references, C). Only what applies is said.
    """
    targets = kinds.count("target")
    ours = len(kinds) - targets
    paired = interleave and "socklab" in kinds and "reference" in kinds
    how = f"each engine interleaved with its reference in {slice_ms:g} ms turns" if paired else "separate runs"
    if not targets:
        return pinning, how
    gen = f"load generator pinned to core {gen_cpu}" if gen_cpu is not None else "no pinning (one core)"
    if not ours:
        return (f"{gen}; the --target server runs outside socklab: not pinned, its CPU and memory not measured",
                "separate runs, no reference (add --engines or --with-c to compare the target with them)")
    return (f"{pinning}; --target servers: not pinned, CPU and memory not measured",
            f"{how}; each --target in runs of its own, compared with the servers above")


@bench.command()
@click.option("--engines", "engines_opt", metavar="LIST", default=None,
              help="Comma-separated engines, or 'all' (default: every available engine but iterative; "
                   "none when --target is given).")
@click.option("--size", type=click.IntRange(1, 16 * 2**20), default=1024, show_default=True,
              help="Message size, bytes.")
@click.option("--connections", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Active connections.")
@click.option("--pipeline", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Messages in flight per connection (1 = ping-pong).")
@measurement_options(repeat_help="Runs per server (interleaved, fresh process each); the table shows medians.")
@click.option("--target", "targets", metavar="HOST:PORT", multiple=True,
              help="Also measure an already running echo server (repeatable). socklab did not start it, "
                   "so it is not pinned and its CPU and memory are not measured; it is compared with "
                   "the other servers of the run (none unless --engines or --with-c).")
@click.option("--no-reference", is_flag=True, help="Skip the plain reference servers.")
@click.option("--with-c", is_flag=True, help="Also run the single-threaded C epoll echo server.")
@click.option("--interleave/--separate", default=True, show_default=True,
              help="Measure each engine together with its reference, taking turns every --slice-ms in one "
                   "generator run (precise ratios on a noisy machine), or each server in a run of its own.")
@slice_option("Turn length for --interleave, milliseconds.")
@click.option("--sweep", is_flag=True, help="Run the connection sweep instead (same as `bench sweep`).")
@click.option("--udp", is_flag=True,
              help="Echo UDP datagrams instead: --connections flows (one socket each), one datagram of --size "
                   "bytes in flight per flow; references are a blocking recvfrom loop, a selectors loop and "
                   "DatagramProtocol; --with-c adds a C recvfrom loop. Try --size 64.")
@click.option("--tls", is_flag=True,
              help="Echo over TLS (a throwaway self-signed certificate; the C generator uses OpenSSL); "
                   "references: the loop's own TLS in a plain asyncio or uvloop server, and a plain threaded "
                   "server with SSLContext.wrap_socket for the thread engines.")
@run_cli
def echo(engines_opt: str | None, size: int, connections: int, pipeline: int, duration: float, warmup: float,
         repeat: int, targets: tuple[str, ...], as_json: bool, save: str | None, chart: str | None,
         no_reference: bool, with_c: bool, interleave: bool, slice_ms: float, sweep: bool, cold: bool,
         udp: bool, tls: bool) -> None:
    """Echo throughput and latency per engine, each next to its reference (and C with --with-c).

    Every server runs in its own process pinned to one core; the C load generator runs on
    another and measures round trips. Columns: req/s, MB/s (one direction), latency percentiles,
    server CPU % and memory, ratio to the reference on the same mechanism and to C, and the load
    generator's own CPU % (flagged near 100 %: then it, not the server, is the limit).

    By default each engine runs at the same time as its reference and the generator gives them
    the load in turns (--slice-ms): on a shared VM two runs a minute apart differ by 10-30 % from
    the machine alone, two slices 200 ms apart do not, so "vs ref" is the servers' ratio. With
    --with-c the fastest engine then takes turns with the C server too (its "vs C" is marked *).
    "CPU µs/req (user)": the server's CPU per round trip and, in brackets, the part outside the
    kernel - for a Python server, the interpreter's share.

    Warm-up: before its load every server - socklab's, the references, C and --target alike -
    gets one connection opened and closed without data, then --warmup seconds of load. A plain
    asyncio server runs 3x faster after its first EOF (glibc's mmap threshold); every real server
    meets one within seconds. --cold skips it to show the other figure.

    \b
      socklab bench echo                                   # every engine, 1 KiB x 20 connections
      socklab bench echo --engines epoll,uvloop --duration 3 --repeat 1
      socklab bench echo --size 65536 --connections 10 --with-c --chart echo.html
      socklab bench echo --engines epoll --target 127.0.0.1:8080   # beside another echo server
      socklab bench echo --udp --size 64                   # UDP datagrams; --tls for TLS
    """
    if sweep:
        ctx = click.get_current_context()
        ctx.invoke(sweep_cmd, engines_opt=engines_opt, size=size, active=10, pipeline=pipeline,
                   duration=duration, warmup=warmup, repeat=repeat, as_json=as_json, save=save, chart=chart,
                   with_c=with_c, levels="10,100,1000,10000", cold=cold)
        return
    from socklab.tools.bench.procs import server_specs, udp_server_specs
    from socklab.tools.bench.runner import raise_nofile

    err = Console(stderr=True)
    tgts = _targets(targets)
    default = () if tgts and engines_opt is None else tuple(e for e in ENGINE_NAMES)
    if udp and (size > 65507 or pipeline != 1):
        raise UsageError("--udp: --size at most 65507 (one datagram) and --pipeline 1")
    if tls and (udp or pipeline != 1 or with_c or tgts):
        raise UsageError("--tls: TCP only, --pipeline 1, no --with-c (no C TLS server) and no --target")
    if tls:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="socklab-bench-tls-") as d:
            from socklab.tools.bench.tls import make_certificate, tls_server_specs

            cert, key = make_certificate(Path(d))
            specs = tls_server_specs(_engines(engines_opt, default, connections, err), references=not no_reference,
                                     cert=cert, key=key, pool_workers=max(16, connections))
            _run_echo(specs, size, connections, pipeline, duration, warmup, repeat, as_json, save, chart, interleave,
                      slice_ms, cold, "tls", err)
        return
    engines = _engines(engines_opt, default, 1 if udp else connections, err)
    nofile = raise_nofile()
    if connections + 64 > nofile:
        raise UsageError(f"{connections} connections need more file descriptors than the limit {nofile}")
    if udp:
        specs = udp_server_specs(engines, references=not no_reference, with_c=with_c)
        specs += [s for s in server_specs([], references=False, with_c=False, targets=tgts)]
    else:
        specs = server_specs(engines, references=not no_reference, with_c=with_c, targets=tgts,
                             max_connections=connections + 100 if connections > 900 else None,
                             pool_workers=max(16, connections))
    _run_echo(specs, size, connections, pipeline, duration, warmup, repeat, as_json, save, chart, interleave,
              slice_ms, cold, "udp" if udp else "tcp", err)


def _run_echo(specs: list[Any], size: int, connections: int, pipeline: int, duration: float, warmup: float,
              repeat: int, as_json: bool, save: str | None, chart: str | None, interleave: bool, slice_ms: float,
              cold: bool, proto: str, err: Console) -> None:
    """Measure ``specs`` (bench echo's TCP, UDP or TLS servers), then print or save the figures."""
    from socklab.tools.bench.procs import pick_cores
    from socklab.tools.bench.report import echo_table, generator_bound, to_json, write_chart
    from socklab.tools.bench.runner import Load, run_echo

    if not specs:
        raise UsageError("nothing to measure: name --engines, --target or --with-c")
    server_cores, gen_cpu, pinning = pick_cores()
    pinning, how = describe_setup([s.kind for s in specs], pinning, gen_cpu, interleave, slice_ms)
    err.print(f"[dim]{pinning}; {len(specs)} servers x {repeat} runs x ({warmup:g} s warm-up + {duration:g} s)"
              "[/dim]")
    load = Load(connections=connections, size=size, pipeline=pipeline, duration=duration, warmup=warmup, cold=cold,
                proto=proto)
    results = run_echo(specs, load, repeats=repeat, server_cores=server_cores, gen_cpu=gen_cpu,
                       progress=lambda m: err.print(f"[dim]{m}[/dim]"), interleave=interleave, slice_ms=slice_ms)
    meta = run_meta(load, repeat, pinning, command="echo", interleave=interleave, slice_ms=slice_ms)
    save_figures(save, results, meta, err)
    if chart:
        write_chart(chart, results, sweep=False, meta=meta)
        err.print(f"chart written to {chart}")
    if as_json:
        click.echo(to_json(results, meta))
        return
    what = {"udp": "UDP echo", "tls": "TLS echo"}.get(proto, "echo")
    title = (f"{what}, {size:,} B x {connections} {'flows' if proto == 'udp' else 'connections'}, "
             f"pipeline {pipeline}, median of {repeat} x {duration:g} s, {how}, {'COLD (no warm-up connection)' if cold else 'warm'} "
             f"({pinning})")
    table_console().print(echo_table(results, title))
    if any(generator_bound(r) for r in results if r.error is None):
        err.print("[yellow]![/yellow] on a flagged row the load generator was busier than the server: the "
                  "figure is a lower bound for the server (see `socklab bench calibrate`)")


@bench.command("sweep")
@click.option("--engines", "engines_opt", metavar="LIST", default=None,
              help=f"Comma-separated engines (default: {','.join(SWEEP_ENGINES)}).")
@click.option("--levels", default="10,100,1000,10000", show_default=True, metavar="LIST",
              help="Total open connections per step.")
@click.option("--active", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Connections that carry load; the rest do one round trip and stay idle.")
@click.option("--size", type=click.IntRange(1, 16 * 2**20), default=1024, show_default=True,
              help="Message size, bytes.")
@click.option("--pipeline", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Messages in flight per active connection.")
@measurement_options(per="step", duration=3.0, warmup=0.5, repeat=1)
@click.option("--with-c", is_flag=True, help="Also sweep the C epoll echo server.")
@run_cli
def sweep_cmd(engines_opt: str | None, levels: str, active: int, size: int, pipeline: int, duration: float,
              warmup: float, repeat: int, as_json: bool, save: str | None, chart: str | None,
              with_c: bool, cold: bool) -> None:
    """How each engine scales from 10 to 10,000 mostly idle connections, and what one costs in memory.

    Each step starts a fresh server, opens the connections (each does one round trip, proving the
    server holds it), then measures the active ones. "KiB per conn" is the server's resident
    memory under load minus before, divided by the open connections. iterative is never swept
    (one connection at a time); pool only when asked (idle connections occupy its workers).

    \b
      socklab bench sweep --chart sweep.html               # 10 -> 10,000 connections, every engine
      socklab bench sweep --engines epoll,asyncio --levels 10,1000 --duration 1
    """
    from socklab.tools.bench.procs import pick_cores, server_specs
    from socklab.tools.bench.report import sweep_table, to_json, write_chart
    from socklab.tools.bench.runner import Load, raise_nofile, run_sweep

    err = Console(stderr=True)
    try:
        steps = sorted({int(x) for x in levels.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--levels {levels!r}: expected numbers separated by commas")
    if not steps or steps[0] < 1:
        raise UsageError("--levels: give positive connection counts")
    engines = _engines(engines_opt, SWEEP_ENGINES, 2, err)
    if engines_opt is None:
        err.print(f"[dim]note: {POOL_WHY}[/dim]")
    nofile = raise_nofile()
    if steps[-1] + 64 > nofile:
        dropped = [s for s in steps if s + 64 > nofile]
        steps = [s for s in steps if s + 64 <= nofile]
        err.print(f"[yellow]file descriptor limit {nofile} (hard): skipping {dropped}; raise it with "
                  "`ulimit -Hn` as root[/yellow]")
        if not steps:
            raise UsageError("no sweep step fits under the file descriptor limit")
    specs = server_specs(engines, references=False, with_c=with_c, targets=[], max_connections=steps[-1] + 100,
                         pool_workers=max(16, active))
    server_cores, gen_cpu, pinning = pick_cores()
    err.print(f"[dim]{pinning}; steps {steps}, {active} active connections[/dim]")
    base = Load(connections=active, size=size, pipeline=pipeline, duration=duration, warmup=warmup, cold=cold)
    results = run_sweep(specs, steps, active=active, base=base, repeats=repeat, server_cores=server_cores,
                        gen_cpu=gen_cpu, progress=lambda m: err.print(f"[dim]{m}[/dim]"))
    meta = run_meta(base, repeat, pinning, command="sweep", levels=steps)
    save_figures(save, results, meta, err)
    if chart:
        write_chart(chart, results, sweep=True, meta=meta)
        err.print(f"chart written to {chart}")
    if as_json:
        click.echo(to_json(results, meta))
        return
    table_console().print(sweep_table(results, f"connection sweep, {active} active x {size:,} B ({pinning})"))


CALIBRATION = ((1024, 20, 1), (1024, 20, 8), (65536, 10, 1), (1024, 200, 1))


@bench.command()
@measurement_options(per="load", duration=5.0, warmup=1.0, repeat=1, chart=False)
@run_cli
def calibrate(duration: float, warmup: float, repeat: int, cold: bool, as_json: bool, save: str | None) -> None:
    """Show that the load generator is not the limit: it drives the C server to a full core.

    Runs the C epoll echo server under the benchmark's loads. When the server's core is busy
    (srv CPU near 100 %) the server is the bottleneck, so any slower server measured with the same
    generator is measured at its own limit. A row where only the generator is busy would mean the
    opposite, and is said so.

    \b
      socklab bench calibrate                              # four loads, 5 s each
      socklab bench calibrate --duration 1 --warmup 0.2
    """
    from rich.table import Table

    from socklab.tools.bench.procs import pick_cores, server_specs
    from socklab.tools.bench.report import GEN_BUSY, to_json
    from socklab.tools.bench.runner import Load, raise_nofile, run_echo

    err = Console(stderr=True)
    raise_nofile()
    server_cores, gen_cpu, pinning = pick_cores()
    err.print(f"[dim]{pinning}[/dim]")
    [spec] = server_specs([], references=False, with_c=True, targets=[])
    results = []
    for size, conns, pipeline in CALIBRATION:
        load = Load(connections=conns, size=size, pipeline=pipeline, duration=duration, warmup=warmup, cold=cold)
        results += run_echo([spec], load, repeats=repeat, server_cores=server_cores, gen_cpu=gen_cpu,
                            progress=lambda m: err.print(f"[dim]{m}[/dim]"))
    meta = run_meta(results[0].load, repeat, pinning, command="calibrate")
    save_figures(save, results, meta, err)
    if as_json:
        click.echo(to_json(results, meta))
        return
    t = Table(title=f"load generator vs the C epoll echo server ({pinning})", title_justify="left")
    for col in ("load", "req/s", "MB/s", "srv CPU %", "gen CPU %", "verdict"):
        t.add_column(col, justify="left" if col in ("load", "verdict") else "right", no_wrap=True)
    for r in results:
        ld = r.load
        what = f"{ld.size:,} B x {ld.connections} conns, pipeline {ld.pipeline}"
        if r.error is not None:
            t.add_row(what, "", "", "", "", f"[red]failed: {r.error[:60]}[/red]")
            continue
        srv = r.server_cpu or 0.0
        verdict = ("[green]server core saturated: the generator is not the limit[/green]" if srv >= GEN_BUSY
                   else "[yellow]generator-bound: figures are lower bounds[/yellow]" if r.loadgen_cpu >= GEN_BUSY
                   else "neither core full: a busy machine, or latency-bound")
        t.add_row(what, f"{r.rps:,.0f}", f"{r.mbps:,.1f}", f"{srv:.0f}", f"{r.loadgen_cpu:.0f}", verdict)
    table_console().print(t)


@bench.command()
@run_cli
def build() -> None:
    """Compile the C load generators and echo servers now and print where they are.

    They ship as C source and are compiled with gcc -O2 the first time a benchmark needs them,
    into the user's cache directory ($SOCKLAB_BENCH_CACHE, else $XDG_CACHE_HOME/socklab/bench or
    ~/.cache/socklab/bench); a changed source is compiled again.

    \b
      socklab bench build
    """
    from socklab.tools.bench.build import PROGRAMS, binary

    for name in PROGRAMS:
        click.echo(f"{name}: {binary(name)}")


# ---- the other apps' benchmarks ------------------------------------------------------------------
def _add_app_benches() -> None:
    from socklab.apps.rpc.cli import bench as rpc_bench  # `socklab bench rpc` is `socklab rpc bench`
    from socklab.tools.bench.chat import chat
    from socklab.tools.bench.http import http
    from socklab.tools.bench.tap import tap
    from socklab.tools.bench.transfer import transfer
    from socklab.tools.bench.ws import ws

    for command in (chat, http, tap, transfer, ws):
        bench.add_command(command)
    bench.add_command(rpc_bench, "rpc")


_add_app_benches()
