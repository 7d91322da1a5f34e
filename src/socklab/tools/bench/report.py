"""Show benchmark results: a rich table, JSON, and a self-contained SVG or HTML chart.

Why this exists: a figure is only useful next to what it is compared with. Every row shows the
server's own cost (CPU %, memory) and its ratio to the reference written on the same mechanism
and to the C server measured in the same run, plus the load generator's CPU: when that column
nears 100 %, the generator - not the server - was the limit. Charts are plain SVG written by
hand (no plotting library), so the HTML file opens anywhere and can be committed or mailed.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from socklab.core.errors import UsageError
from socklab.tools.bench.runner import Result

__all__ = ["bar_chart_svg", "echo_table", "generator_bound", "line_chart_svg", "paired_ratio", "ratios",
           "ratios_by_level", "round_ratios", "sweep_table", "to_json", "write_chart"]

KIND_COLOR = {"c": "#555555", "reference": "#9a9a9a", "socklab": "#2a7ab9", "target": "#c0504d"}
PALETTE = ("#2a7ab9", "#e07b39", "#3a9a5b", "#c0504d", "#8064a2", "#4bacc6", "#9a9a9a", "#555555")
GEN_BUSY = 90.0  # load-generator CPU % above which its row is flagged


def ratios(results: Sequence[Result]) -> dict[str, tuple[float | None, float | None]]:
    """``name -> (req/s vs its reference, req/s vs the C server)`` within one run and one load.

    An engine measured interleaved with the C server (``Result.c_pairs``) gets that ratio instead
    of the ratio to C's separate runs. For a sweep, call it once per connection count
    (:func:`ratios_by_level`).
    """
    by_name = {r.name: r for r in results if r.error is None and r.rps > 0}
    c = next((r for r in by_name.values() if r.kind == "c"), None)
    out: dict[str, tuple[float | None, float | None]] = {}
    for r in results:
        ref = by_name.get(r.reference or "")
        vs_ref = paired_ratio(r, ref) if ref is not None and r.error is None else None
        vs_c = paired_ratio(r, c) if c is not None and r.error is None else None
        if r.c_pairs:
            vs_c = r.vs_c_interleaved
        out[r.name] = (vs_ref, vs_c)
    return out


def round_ratios(r: Result, base: Result) -> list[float]:
    """req/s of ``r`` over ``base`` round by round (the runs of one round were minutes apart at most).

    An interleaved sample (``paired_rps``: its reference's req/s in the same generator run, when
    ``base`` is that reference) gives its ratio directly. A server with several samples in one
    round (a reference paired with several engines) counts with their median.
    """
    if r.reference == base.name and r.samples and all("paired_rps" in s for s in r.samples):
        return [float(s["rps"]) / float(s["paired_rps"]) for s in r.samples if float(s["paired_rps"]) > 0]

    def by_round(res: Result) -> dict[int, float]:
        rounds: dict[int, list[float]] = {}
        for s in res.samples:
            if s.get("round") is not None:
                rounds.setdefault(int(s["round"]), []).append(float(s["rps"]))
        return {k: statistics.median(v) for k, v in rounds.items()}

    mine, theirs = by_round(r), by_round(base)
    return [mine[k] / theirs[k] for k in sorted(mine) if theirs.get(k)]


def paired_ratio(r: Result, base: Result) -> float:
    """The median of the per-round ratios of ``r`` to ``base`` (the ratio of medians without rounds).

    On a shared VM a slow minute hits every server measured in it; dividing within each round
    first cancels that, where a ratio of the two medians would mix different minutes.
    """
    pairs = round_ratios(r, base)
    if pairs:
        return statistics.median(pairs)
    return r.rps / base.rps if base.rps else 0.0


def generator_bound(r: Result) -> bool:
    """The load generator, not the server, may have set this figure: it was busy, the server was not."""
    return r.loadgen_cpu >= GEN_BUSY and (r.server_cpu is None or r.server_cpu < GEN_BUSY)


def ratios_by_level(results: Sequence[Result]) -> dict[tuple[str, int], tuple[float | None, float | None]]:
    """``(name, total connections) -> (vs reference, vs C)``, each ratio taken within its own level."""
    out: dict[tuple[str, int], tuple[float | None, float | None]] = {}
    for level in {r.load.connections + r.load.idle for r in results}:
        group = [r for r in results if r.load.connections + r.load.idle == level]
        out.update({(name, level): v for name, v in ratios(group).items()})
    return out


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def human_bytes(v: float | None) -> str:
    """``420 B``, ``4.8 KiB``, ``12.3 MiB``."""
    if v is None:
        return "-"
    for unit, scale in (("MiB", 2**20), ("KiB", 1024)):
        if abs(v) >= scale:
            return f"{v / scale:,.1f} {unit}"
    return f"{v:,.0f} B"


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.1f}"


def echo_table(results: Sequence[Result], title: str) -> Table:
    """The ``bench echo`` table: throughput, latency, costs, ratios, and the generator's CPU."""
    t = Table(title=title, title_justify="left")
    for col in ("server", "req/s", "MB/s", "p50 µs", "p90 µs", "p99 µs", "srv CPU %", "CPU µs/req (user)",
                "RSS MiB", "vs ref", "vs C", "gen CPU %", "errors"):
        t.add_column(col, justify="left" if col == "server" else "right", no_wrap=True)
    rat = ratios(results)
    for r in results:
        if r.error is not None:
            t.add_row(r.name, f"[red]failed: {escape(r.error[:60])}[/red]", *[""] * 11)
            continue
        vs_ref, vs_c = rat[r.name]
        gen = _num(r.loadgen_cpu, "{:.0f}")
        if generator_bound(r):
            gen = f"[yellow]{gen}![/yellow]"
        style = "bold" if r.kind == "socklab" else ("dim" if r.kind == "reference" else "")
        cost = _num(r.cpu_us_per_request, "{:.2f}")
        if r.user_us_per_request is not None:
            cost += f" ({r.user_us_per_request:.2f})"
        vs_c_cell = _num(vs_c, "{:.2f}x") + ("*" if r.c_pairs else "")
        t.add_row(r.name, _num(r.rps), _num(r.mbps, "{:,.1f}"), _num(r.p50, "{:,.0f}"), _num(r.p90, "{:,.0f}"),
                  _num(r.p99, "{:,.0f}"), _num(r.server_cpu, "{:.0f}"), cost, _mib(r.rss), _num(vs_ref, "{:.2f}x"),
                  vs_c_cell, gen, str(r.errors), style=style)
    paired = [r for r in results if r.c_pairs]
    if paired:
        t.caption = (f"* {paired[0].name}: measured interleaved with the C server ({len(paired[0].c_pairs)} runs); "
                     "the other vs-C ratios compare separate runs. CPU µs/req: server CPU time per round trip, "
                     "(user) the part outside the kernel.")
    else:
        t.caption = "CPU µs/req: server CPU time per round trip, (user) the part outside the kernel."
    t.caption_justify = "left"
    return t


def sweep_table(results: Sequence[Result], title: str) -> Table:
    """The sweep table: per server and connection count, held connections, req/s and KiB per connection."""
    levels = sorted({r.load.connections + r.load.idle for r in results})
    names = list(dict.fromkeys(r.name for r in results))
    t = Table(title=title, title_justify="left")
    t.add_column("server", no_wrap=True)
    for lv in levels:
        t.add_column(f"{lv:,} conns\nheld / req/s / per conn", justify="right", no_wrap=True)
    cell = {(r.name, r.load.connections + r.load.idle): r for r in results}
    for name in names:
        row = [name]
        for lv in levels:
            r = cell.get((name, lv))
            if r is None:
                row.append("")
            elif r.error is not None:
                row.append(f"[red]failed:[/red] {escape(r.error[:48])}")
            else:
                per = r.bytes_per_connection
                held = f"{r.held:,}" if r.held >= lv else f"[red]{r.held:,}[/red]"
                row.append(f"{held} / {r.rps:,.0f} / {human_bytes(per)}")
        t.add_row(*row)
    return t


def to_json(results: Sequence[Result], meta: dict[str, Any]) -> str:
    """Everything measured, with the ratios and the run's settings, as one JSON document."""
    rat = ratios_by_level(results)
    rows = []
    for r in results:
        d = r.to_dict()
        d["vs_reference"], d["vs_c"] = rat.get((r.name, r.load.connections + r.load.idle), (None, None))
        ref = next((x for x in results if x.name == r.reference and x.load == r.load), None)
        d["vs_reference_rounds"] = round_ratios(r, ref) if ref is not None else []
        rows.append(d)
    return json.dumps({"meta": meta, "results": rows}, indent=2)


LEGEND = {"socklab": "socklab engine", "reference": "plain reference server", "c": "C server", "target": "target"}


def bar_chart_svg(title: str, bars: Sequence[tuple[str, float, str]], unit: str, width: int = 760,
                  better: str = "", legend: Sequence[tuple[str, str]] = ()) -> str:
    """A horizontal bar chart. ``bars`` are ``(label, value, colour)``; returns an ``<svg>`` element.

    ``better`` ("higher" or "lower") is said under the title; ``legend`` is ``(colour, meaning)`` pairs.
    """
    row, top, left = 26, 40 + (18 if better or legend else 0), 190
    height = top + row * max(1, len(bars)) + 20
    vmax = max((v for _, v, _ in bars), default=0.0) or 1.0
    span = width - left - 110
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
             f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    x = 10
    if better:
        parts.append(f'<text x="{x}" y="44" fill="#444">{html.escape(better)} is better</text>')
        x += 130
    for colour, meaning in legend:
        parts.append(f'<rect x="{x}" y="34" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="44">{html.escape(meaning)}</text>')
        x += 24 + 7 * len(meaning)
    for i, (label, value, colour) in enumerate(bars):
        y = top + i * row
        w = max(1.0, value / vmax * span)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{colour}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{value:,.0f} {html.escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart_svg(title: str, xs: Sequence[int], series: dict[str, list[float | None]], unit: str,
                   width: int = 760, height: int = 320, y_log: bool = False) -> str:
    """Lines over categorical x positions (the sweep's 10, 100, 1000, 10000 are evenly spaced on a log axis).

    ``y_log`` draws the y axis in powers of ten (values <= 0 are left out).
    """
    left, right, top, bottom = 80, 150, 40, 40
    values = [v for vals in series.values() for v in vals if v is not None and (v > 0 or not y_log)]
    vmax = max(values, default=0.0) or 1.0
    lo_exp = math.floor(math.log10(min(values))) if y_log and values else 0
    hi_exp = max(lo_exp + 1, math.ceil(math.log10(vmax))) if y_log and values else 0
    pw, ph = width - left - right, height - top - bottom

    def px(i: int) -> float:
        return left + (pw * i / (len(xs) - 1) if len(xs) > 1 else pw / 2)

    def py(v: float) -> float:
        if y_log:
            return top + ph - (math.log10(v) - lo_exp) / (hi_exp - lo_exp) * ph
        return top + ph - v / vmax * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#444"/>',
             f'<text x="10" y="{top + ph / 2}">{html.escape(unit)}</text>']
    ticks = [10.0**e for e in range(lo_exp, hi_exp + 1)] if y_log else [0.0, vmax]
    for v in ticks:
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:,.{2 if 0 < v < 1 else 0}f}</text>')
        parts.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{left + pw}" y2="{py(v):.1f}" stroke="#ddd"/>')
    for i, x in enumerate(xs):
        parts.append(f'<text x="{px(i):.1f}" y="{top + ph + 18}" text-anchor="middle">{x:,}</text>')
    for k, (name, vals) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        pts = [(px(i), py(v)) for i, v in enumerate(vals) if v is not None and (v > 0 or not y_log)]
        if pts:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        ly = top + 14 + 18 * k
        parts.append(f'<rect x="{width - right + 12}" y="{ly - 9}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 30}" y="{ly + 1}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _echo_svgs(results: Sequence[Result]) -> list[str]:
    ok = [r for r in results if r.error is None]
    load = results[0].load if results else None
    what = f"{load.size:,} B x {load.connections} conns, pipeline {load.pipeline}" if load else ""
    kinds = list(dict.fromkeys(r.kind for r in ok))
    legend = [(KIND_COLOR.get(k, "#2a7ab9"), LEGEND.get(k, k)) for k in kinds]
    return [bar_chart_svg(f"Echo round trips per second ({what})",
                          [(r.name, r.rps, KIND_COLOR.get(r.kind, "#2a7ab9")) for r in ok], "req/s",
                          better="higher", legend=legend),
            bar_chart_svg("p99 latency", [(r.name, r.p99, KIND_COLOR.get(r.kind, "#2a7ab9")) for r in ok], "µs",
                          better="lower", legend=legend)]


def _sweep_svgs(results: Sequence[Result]) -> list[str]:
    xs = sorted({r.load.connections + r.load.idle for r in results})
    names = list(dict.fromkeys(r.name for r in results))
    cell = {(r.name, r.load.connections + r.load.idle): r for r in results if r.error is None}
    rps = {n: [cell[(n, x)].rps if (n, x) in cell else None for x in xs] for n in names}
    mem: dict[str, list[float | None]] = {}
    for n in names:
        vals: list[float | None] = []
        for x in xs:
            per = cell[(n, x)].bytes_per_connection if (n, x) in cell else None
            vals.append(None if per is None else per / 1024)
        mem[n] = vals
    return [line_chart_svg("Req/s of the active connections vs open connections", xs, rps, "req/s"),
            line_chart_svg("Server memory per connection (log scale)", xs, mem, "KiB", y_log=True)]


def write_chart(path: str, results: Sequence[Result], *, sweep: bool, meta: dict[str, Any]) -> None:
    """Write ``path`` (``.svg``: the charts stacked; ``.html``: charts, settings and a data table).

    Raises:
        UsageError: the file name ends neither in .svg nor in .html.
    """
    svgs = _sweep_svgs(results) if sweep else _echo_svgs(results)
    if path.endswith(".svg"):
        heights = [int(s.split('height="', 1)[1].split('"', 1)[0]) for s in svgs]
        total, y, inner = sum(heights), 0, []
        for s, h in zip(svgs, heights, strict=True):
            inner.append(f'<g transform="translate(0,{y})">{s}</g>')
            y += h
        doc = (f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{total}" '
               f'viewBox="0 0 760 {total}">\n' + "\n".join(inner) + "\n</svg>\n")
    elif path.endswith((".html", ".htm")):
        rat = ratios_by_level(results)

        def lv(r: Result) -> tuple[str, int]:
            return r.name, r.load.connections + r.load.idle

        rows = "\n".join(
            f"<tr><td>{html.escape(r.name)}</td><td>{r.load.connections + r.load.idle:,}</td>"
            f"<td>{r.rps:,.0f}</td><td>{r.mbps:,.1f}</td><td>{r.p50:,.0f}</td><td>{r.p90:,.0f}</td>"
            f"<td>{r.p99:,.0f}</td><td>{_num(r.server_cpu, '{:.0f}')}</td>"
            f"<td>{_num(r.cpu_us_per_request, '{:.2f}')}</td><td>{_num(r.user_us_per_request, '{:.2f}')}</td>"
            f"<td>{_mib(r.rss)}</td>"
            f"<td>{_num(rat[lv(r)][0], '{:.2f}x')}</td><td>{_num(rat[lv(r)][1], '{:.2f}x')}</td>"
            f"<td>{r.loadgen_cpu:.0f}</td><td>{html.escape(r.error or '')}</td></tr>" for r in results)
        settings = html.escape(json.dumps(meta, indent=2))
        doc = ("<!doctype html>\n<html><head><meta charset='utf-8'><title>socklab bench</title>"
               "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
               "</style></head><body>\n<h1>socklab bench</h1>\n" + "\n".join(svgs) +
               "\n<table><tr><th>server</th><th>conns</th><th>req/s</th><th>MB/s</th><th>p50 µs</th>"
               "<th>p90 µs</th><th>p99 µs</th><th>srv CPU %</th><th>CPU µs/req</th><th>user µs/req</th>"
               "<th>RSS MiB</th><th>vs ref</th><th>vs C</th>"
               f"<th>gen CPU %</th><th>error</th></tr>\n{rows}\n</table>\n<h2>Settings</h2><pre>{settings}</pre>"
               "\n</body></html>\n")
    else:
        raise UsageError(f"--chart {path!r}: name the file .svg or .html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
