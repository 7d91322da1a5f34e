"""Turn the JSON files ``socklab bench ... --save`` wrote into the Markdown tables of docs/benchmarks.md.

Why this exists: the figures in the docs should be pasted, not retyped. This reads each saved
file and prints one table in the same columns as the docs' results section.

Usage: ``python benchmarks/to_markdown.py benchmarks/results/<run>/*.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def fmt(v: Any, spec: str = "{:,.0f}") -> str:
    return "-" if v is None else spec.format(v)


def human(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("MiB", 2**20), ("KiB", 1024)):
        if abs(v) >= scale:
            return f"{v / scale:,.1f} {unit}"
    return f"{v:,.0f} B"


def echo_table(doc: dict[str, Any]) -> list[str]:
    load = doc["meta"]["load"]
    out = [f"**{load['size']:,} B x {load['connections']} connections, pipeline {load['pipeline']}** "
           f"(median of {doc['meta']['repeats']} x {load['duration']:g} s; {doc['meta']['pinning']})", "",
           "| server | req/s | p50 µs | p99 µs | srv CPU % | CPU µs/req (user) | RSS MiB | vs ref [per run] | vs C "
           "| gen CPU % |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in doc["results"]:
        if r["error"]:
            out.append(f"| {r['name']} | failed: {r['error']} |" + " |" * 8)
            continue
        cost = fmt(r["cpu_us_per_request"], "{:.2f}")
        if r.get("user_us_per_request") is not None:
            cost += f" ({r['user_us_per_request']:.2f})"
        rounds = r.get("vs_reference_rounds") or []
        vs_ref = fmt(r["vs_reference"], "{:.2f}x") + (f" [{min(rounds):.2f}-{max(rounds):.2f}]" if rounds else "")
        pairs = [p["rps"] / p["c_rps"] for p in r.get("c_pairs") or [] if p["c_rps"]]
        vs_c = fmt(r["vs_c"], "{:.2f}x") + (f"* [{min(pairs):.2f}-{max(pairs):.2f}]" if pairs else "")
        if pairs:
            notes.append(f"\\* {r['name']}: measured interleaved with the C server ({len(pairs)} runs, "
                         "range in brackets); the other vs-C ratios compare separate runs.")
        out.append(f"| {r['name']} | {fmt(r['rps'])} | {fmt(r['p50'])} | {fmt(r['p99'])} | "
                   f"{fmt(r['server_cpu'])} | {cost} | "
                   f"{fmt(None if r['rss'] is None else r['rss'] / 2**20, '{:.1f}')} | {vs_ref} | {vs_c} | "
                   f"{fmt(r['loadgen_cpu'])} |")
    return out + (["", *notes] if notes else [])


def calibrate_table(doc: dict[str, Any]) -> list[str]:
    out = [f"**Load generator vs the C epoll echo server** ({doc['meta']['pinning']})", "",
           "| load | req/s | MB/s | srv CPU % | gen CPU % |", "|---|---|---|---|---|"]
    for r in doc["results"]:
        ld = r["load"]
        what = f"{ld['size']:,} B x {ld['connections']} conns, pipeline {ld['pipeline']}"
        out.append(f"| {what} | {fmt(r['rps'])} | {fmt(r['mbps'], '{:,.1f}')} | {fmt(r['server_cpu'])} | "
                   f"{fmt(r['loadgen_cpu'])} |")
    return out


def sweep_table(doc: dict[str, Any]) -> list[str]:
    levels = doc["meta"]["levels"]
    out = [f"**Connection sweep**, {doc['meta']['load']['connections']} active connections "
           f"({doc['meta']['pinning']}); each cell: held / req/s / server memory per connection", "",
           "| server | " + " | ".join(f"{lv:,}" for lv in levels) + " |", "|---" * (len(levels) + 1) + "|"]
    names = list(dict.fromkeys(r["name"] for r in doc["results"]))
    for name in names:
        cells = []
        for lv in levels:
            r = next((x for x in doc["results"] if x["name"] == name
                      and x["load"]["connections"] + x["load"]["idle"] == lv), None)
            if r is None:
                cells.append("")
            elif r["error"]:
                cells.append(f"failed: {r['error']}")
            else:
                cells.append(f"{r['held']:,} / {fmt(r['rps'])} / {human(r['bytes_per_connection'])}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def main(paths: list[str]) -> None:
    for path in paths:
        doc = json.loads(Path(path).read_text())
        render = {"sweep": sweep_table, "calibrate": calibrate_table}.get(doc["meta"].get("command"), echo_table)
        lines = render(doc)
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
