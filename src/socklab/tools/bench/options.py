"""What the ``socklab bench`` commands share: their measurement options, and how figures are printed and saved.

Why this exists: ``bench echo``, ``sweep``, ``calibrate`` and ``ws`` measure the same way (a warm-up,
timed runs repeated, medians, figures as a table, JSON or a chart), so they take the same options
with the same meaning. Declaring them once keeps their ranges, defaults and help from drifting apart.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from socklab.cli.params import WritablePath

__all__ = ["COLD_HELP", "measurement_options", "run_meta", "save_figures", "slice_option", "table_console"]

F = TypeVar("F", bound=Callable[..., Any])

COLD_HELP = ("Skip the warm-up every server gets before its load (one connection opened and closed without "
             "data): shows the figure of a server that never met an EOF.")


def measurement_options(*, per: str = "run", duration: float = 10.0, warmup: float = 1.0, repeat: int = 3,
                        repeat_help: str | None = None, chart: bool = True) -> Callable[[F], F]:
    """``--duration --warmup --repeat --cold --json --save`` (and ``--chart``), in that order.

    Args:
        per: what one measurement is ("run", "step", "load"), for the help text.
        duration, warmup, repeat: the command's defaults.
        repeat_help: help for --repeat (default: "Runs per PER.").
        chart: add ``--chart FILE.html|FILE.svg``.

    The command receives ``duration``, ``warmup``, ``repeat``, ``cold``, ``as_json``, ``save`` and
    (with ``chart``) ``chart``.
    """
    options = [
        click.option("--duration", type=click.FloatRange(0.1, 3600), default=duration, show_default=True,
                     help=f"Measured seconds per {per}."),
        click.option("--warmup", type=click.FloatRange(0, 600), default=warmup, show_default=True,
                     help="Seconds of load before measuring."),
        click.option("--repeat", type=click.IntRange(1, 100), default=repeat, show_default=True,
                     help=repeat_help or f"Runs per {per}."),
        click.option("--cold", is_flag=True, help=COLD_HELP),
        click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON instead of the table."),
        click.option("--save", metavar="FILE", default=None, type=WritablePath(),
                     help="Also write every figure as JSON to FILE."),
    ]
    if chart:
        options.append(click.option("--chart", metavar="FILE", default=None, type=WritablePath(),
                                    help="Write a chart: FILE.html or FILE.svg."))

    def decorate(func: F) -> F:
        for option in reversed(options):  # the first listed is the first shown
            func = option(func)
        return func

    return decorate


def slice_option(help_text: str = "Turn length when an engine and its reference take turns, milliseconds."
                 ) -> Callable[[F], F]:
    """``--slice-ms``: how long each server's turn lasts when servers take turns in one generator run."""
    return click.option("--slice-ms", type=click.FloatRange(10, 10_000), default=200.0, show_default=True,
                        help=help_text)


def table_console() -> Console:
    """stdout; when it is not a terminal (a file, a pipe) wide enough for the whole table."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def save_figures(path: str | None, results: Any, meta: dict[str, Any], err: Console) -> None:
    """Write every figure as JSON to ``path`` (nothing when it is None) and say so on ``err``."""
    if path:
        from socklab.tools.bench.report import to_json

        with open(path, "w", encoding="utf-8") as f:
            f.write(to_json(results, meta) + "\n")
        err.print(f"figures saved to {path}")


def run_meta(load: Any, repeats: int, pinning: str, **more: Any) -> dict[str, Any]:
    """What a saved figure needs beside it: date, load, machine, kernel, Python and generator."""
    from dataclasses import asdict

    from socklab.tools.bench.build import binary

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "load": asdict(load),
            "repeats": repeats, "pinning": pinning, "cpus": os.cpu_count(), "cpu_model": model,
            "kernel": platform.release(), "python": sys.version.split()[0], "loadgen": str(binary("loadgen")),
            **more}
