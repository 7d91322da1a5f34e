"""``socklab engines``: the eight concurrency models, what each supports and when to choose it."""

from __future__ import annotations

import json
from typing import Any

import click

from socklab.cli.options import run_cli
from socklab.engines import ENGINE_NAMES, engine_class

_FEATURES = ("tcp", "udp", "unix", "tls", "client")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@run_cli
def engines(as_json: bool) -> None:
    """List the engines: how each serves many clients, what it supports, when to choose it.

    Every server takes --engine NAME; an app written once runs on all of them. Compare them with
    `socklab bench echo`.
    """
    rows: list[dict[str, Any]] = []
    for name in ENGINE_NAMES:
        try:
            info = engine_class(name).info
        except Exception as exc:  # an engine that cannot load here is listed with the reason
            rows.append({"name": name, "model": f"unavailable: {exc}", "supports": [], "choose_when": "",
                         "limits": "", "concurrent": False})
            continue
        rows.append({"name": info.name, "model": info.model, "concurrent": info.concurrent,
                     "supports": [f for f in _FEATURES if f in info.supports],
                     "choose_when": info.choose_when, "limits": info.limits})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from socklab.cli.output import print_rich

    table = Table(title="socklab engines (choose with --engine)", show_lines=True)
    table.add_column("engine", style="bold cyan")
    table.add_column("how it serves many clients")
    table.add_column("supports")
    table.add_column("choose it when")
    table.add_column("limits", style="yellow")
    for r in rows:
        table.add_row(r["name"], r["model"], " ".join(r["supports"]), r["choose_when"], r["limits"])
    print_rich(table)
