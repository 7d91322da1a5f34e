"""``socklab bench ws``: WebSocket echo on socklab's HTTP layer against aiohttp, picows and websockets.

Why this exists: every web chat client and every ``ws://`` RPC call takes this path, and its bar
is the best Python peers on the same event loop. The method is ``bench echo``'s: the
C load generator (``loadgen --ws /ws``: an RFC 6455 upgrade per connection, then masked text
frames of --size bytes, ping-pong), each socklab engine interleaved with its reference in turns,
fresh processes per round, medians; every contender warmed alike (one connection opened and
closed without data) unless --cold.

\b
  socklab bench ws                                  # 256 B text x 20 clients
  socklab bench ws --size 65536 --connections 10    # 64 KiB messages
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from socklab.cli.options import run_cli
from socklab.core.errors import UsageError
from socklab.tools.bench.options import (
    measurement_options,
    run_meta,
    save_figures,
    slice_option,
    table_console,
)
from socklab.tools.bench.procs import SERVERS_DIR, ServerSpec

__all__ = ["SERVERS_DIR", "WS_REFERENCE_FOR", "ws", "ws_dir", "ws_server_specs"]

#: engine -> its bar: aiohttp on the same event loop; the readiness-loop and thread engines have
#: no loop of their own, so they are held to the faster of the two (aiohttp on uvloop).
WS_REFERENCE_FOR = {"asyncio": "aiohttp_asyncio", "uvloop": "aiohttp_uvloop", "epoll": "aiohttp_uvloop",
                    "select": "aiohttp_uvloop", "poll": "aiohttp_uvloop", "threads": "aiohttp_uvloop",
                    "pool": "aiohttp_uvloop"}
_SCRIPTS = {"aiohttp_asyncio": ("aiohttp_ws.py",), "aiohttp_uvloop": ("aiohttp_ws.py", "--uvloop"),
            "picows": ("picows_ws.py",), "websockets": ("websockets_ws.py",)}


def ws_dir() -> Path:
    """The servers of this benchmark, shipped with the package (scripts run by path)."""
    return SERVERS_DIR


def _peer_available(name: str) -> bool:
    import importlib.util

    module = {"picows": "picows", "websockets": "websockets"}.get(name, "aiohttp")
    return importlib.util.find_spec(module) is not None


def ws_server_specs(engines: list[str], *, references: bool, peers: bool = True,
                    against: str = "aiohttp") -> list[ServerSpec]:
    """Per engine its reference and itself; then picows and websockets (``peers``) if installed and
    not already a reference. ``against``: "aiohttp" (on the engine's own loop, the target) or
    "picows" (every engine takes turns with picows, the stretch)."""
    d = ws_dir()

    def spec(name: str) -> ServerSpec:
        script, *args = _SCRIPTS[name]
        return ServerSpec(f"ref:{name}", "reference", (sys.executable, str(d / script), *args, "--port", "0"))

    out: list[ServerSpec] = []
    seen: set[str] = set()
    for engine in engines:
        ref = WS_REFERENCE_FOR.get(engine) if against == "aiohttp" else against
        if references and ref is not None and ref not in seen and _peer_available(ref):
            seen.add(ref)
            out.append(spec(ref))
        out.append(ServerSpec(engine, "socklab", (sys.executable, str(d / "socklab_ws.py"), "--engine", engine,
                                                  "--port", "0"),
                              engine=engine, reference=f"ref:{ref}" if ref in seen else None))
    if references and peers:
        out += [spec(p) for p in ("picows", "websockets") if p not in seen and _peer_available(p)]
    return out


@click.command("ws")
@click.option("--engines", "engines_opt", metavar="LIST", default="asyncio,uvloop,epoll,threads",
              show_default=True, help="Comma-separated socklab engines serving the /ws echo.")
@click.option("--size", type=click.IntRange(1, 200_000), default=256, show_default=True,
              help="Text message size, bytes (one frame each).")
@click.option("--connections", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Clients, each with one message in flight.")
@measurement_options(repeat_help="Runs per server (fresh processes each); the table shows medians.")
@slice_option()
@click.option("--no-reference", is_flag=True, help="Only socklab's servers (no aiohttp, picows, websockets).")
@click.option("--against", type=click.Choice(["aiohttp", "picows"]), default="aiohttp", show_default=True,
              help="Whom each engine takes turns with: aiohttp on the engine's own loop, or picows "
                   "(the fastest Python peer; otherwise it runs on its own).")
@run_cli
def ws(engines_opt: str, size: int, connections: int, duration: float, warmup: float, repeat: int,
       slice_ms: float, no_reference: bool, against: str, cold: bool, as_json: bool, save: str | None,
       chart: str | None) -> None:
    """WebSocket echo: socklab's /ws route on each engine vs aiohttp (same loop), picows, websockets.

    One C generator process on its own core holds --connections clients; a message is one masked
    text frame and is done when the echo frame is back. "vs ref" is each engine against aiohttp on
    its own event loop (epoll and threads: aiohttp on uvloop), taken in interleaved turns; picows
    and websockets run on their own (--against picows: every engine takes turns with picows). "gen CPU %" near 100 would mean the generator is the limit.
    No C WebSocket server is measured: the generator's own CPU share is the evidence.

    \b
      socklab bench ws                                   # 256 B text x 20 clients, 3 x 10 s
      socklab bench ws --size 65536 --connections 10     # 64 KiB messages
      socklab bench ws --engines epoll --repeat 1 --duration 3
      socklab bench ws --engines epoll,uvloop --against picows   # interleaved with picows
    """
    from socklab.core.settings import ENGINE_NAMES
    from socklab.tools.bench.procs import pick_cores
    from socklab.tools.bench.report import echo_table, to_json, write_chart
    from socklab.tools.bench.runner import Load, raise_nofile, run_echo

    err = Console(stderr=True)
    engines = [e.strip() for e in engines_opt.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINE_NAMES or e == "iterative":
            raise UsageError(f"--engines: {e!r} is not an engine that serves several clients; choose from: "
                             + ", ".join(n for n in ENGINE_NAMES if n != "iterative"))
    raise_nofile()
    specs = ws_server_specs(engines, references=not no_reference, against=against)
    server_cores, gen_cpu, pinning = pick_cores()
    load = Load(connections=connections, size=size, duration=duration, warmup=warmup, cold=cold, proto="ws")
    err.print(f"[dim]{pinning}; {len(specs)} servers x {repeat} runs[/dim]")
    results = run_echo(specs, load, repeats=repeat, server_cores=server_cores, gen_cpu=gen_cpu,
                       progress=lambda m: err.print(f"[dim]{m}[/dim]"), interleave=True, slice_ms=slice_ms)
    meta = run_meta(load, repeat, pinning, command="ws", interleave=True, slice_ms=slice_ms)
    save_figures(save, results, meta, err)
    if chart:
        write_chart(chart, results, sweep=False, meta=meta)
        err.print(f"chart written to {chart}")
    if as_json:
        click.echo(to_json(results, meta))
        return
    title = (f"WebSocket echo, {size:,} B text x {connections} clients, median of {repeat} x {duration:g} s, "
             f"{'COLD' if cold else 'warm'} ({pinning})")
    table_console().print(echo_table(results, title))
