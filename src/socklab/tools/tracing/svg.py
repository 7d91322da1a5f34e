"""The ladder diagram as one self-contained HTML page with an inline SVG (no script, no fetch).

Why this exists: the picture textbooks draw, from a real run, in a file a learner can open on a
laptop or a phone or hand in. Time goes down the page (one row per event, the shared clock
written on the left); each lane is an endpoint; arrows are the handshake (green), data (blue,
with the byte count and where a message was split or merged), FIN (orange) and RST (red); the
TCP state is written along each lane where it changes, and notes stand on the right, on the row
of the event they explain (a numbered marker on the event points to each).

Every element carries ``class`` and ``data-*`` attributes (lane, kind, bytes, row) so a test in a
real browser can check that what is drawn is where the trace says.
"""

from __future__ import annotations

import html
import math
import textwrap

from socklab.core.trace import time_of_day
from socklab.protocols.text import escape_peer_text
from socklab.tools.tracing.ladder import EPOCH, Arrow, Ev, Ladder

__all__ = ["render_html"]

LEFT = 78  # the time column
LABEL_ROOM = 70  # more room left of the first lane when its labels stand there
LANE_W = 190
TOP = 70
ROW_H = 30
LINE_H = 14
NOTE_W = 440
NOTE_CHARS = 64
HALO = 'paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round"'
COLORS = {"handshake": "#1b8a3a", "data": "#1f5fbf", "fin": "#d9731a", "rst": "#c62828"}


def _e(text: object) -> str:
    return html.escape(escape_peer_text(str(text)), quote=True)


def _short(ev: Ev) -> str:
    """What stands beside the event's dot: ``recv 5 B``, ``accept fd 4``."""
    if ev.kind in ("send", "recv") and ev.nbytes is not None:
        return f"{ev.op} {ev.nbytes} B" + (f" {ev.errno}" if ev.errno else "")
    if ev.kind == "accept":
        return f"accept -> fd {ev.fd}"
    if ev.errno:
        return f"{ev.op} {ev.errno}"
    if ev.kind in ("setsockopt", "getsockopt") and ev.detail:
        return f"{ev.op} {ev.detail.split(':')[0]}"
    if ev.kind == "bind" and ev.detail:
        return f"bind {ev.detail.split()[0]}"
    if ev.kind == "shutdown" and ev.detail:
        return f"shutdown {ev.detail.split(':')[0]}"
    return ev.op if ev.fd is None else f"{ev.op} fd {ev.fd}"


_STATE_FROM = {"kernel": "TCP state reported by the kernel",
               "calls": "TCP state worked out from the calls (strace sees no packets)"}


def _state_from(ev: Ev) -> str:
    """``kernel`` or ``calls``: socklab's own --trace asks the kernel (TCP_INFO); trace run says which."""
    said = ev.raw.get("state_from")
    if said in _STATE_FROM:
        return str(said)
    return "calls" if ev.raw.get("source") == "strace" else "kernel"


def _note_lines(ev: Ev) -> list[str]:
    lines: list[str] = []
    for note in ev.notes:
        lines.extend(textwrap.wrap(note, NOTE_CHARS) or [""])
    if ev.kind == "note" and ev.detail:
        lines.extend(textwrap.wrap(ev.detail, NOTE_CHARS))
    return lines


def render_html(ladder: Ladder, title: str = "socklab ladder") -> str:
    """The whole page."""
    n_lanes = max(1, len(ladder.lanes))
    left_side = _label_sides(ladder, n_lanes)
    left = LEFT + (LABEL_ROOM if left_side[0] else 0)  # room for the first lane's labels on its left
    width = left + n_lanes * LANE_W + NOTE_W
    lane_x = [left + LANE_W * i + LANE_W // 2 for i in range(n_lanes)]
    notes_x = left + n_lanes * LANE_W + 16
    # row heights grow to hold their notes
    y = TOP + 20
    row_y: list[float] = []
    for ev in ladder.events:
        row_y.append(y)
        y += max(ROW_H, LINE_H * len(_note_lines(ev)) + 10)
    height = y + 30
    parts: list[str] = []
    add = parts.append
    add(f'<svg xmlns="http://www.w3.org/2000/svg" id="ladder" viewBox="0 0 {width} {height:.0f}" '
        f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{_e(title)}" '
        f'data-lanes="{len(ladder.lanes)}" data-rows="{len(ladder.events)}">')
    add("<defs>" + "".join(
        f'<marker id="head-{k}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
        for k, c in COLORS.items()) + "</defs>")
    add(f'<rect x="0" y="0" width="{width}" height="{height:.0f}" fill="#ffffff"/>')
    for i, lane in enumerate(ladder.lanes):
        x = lane_x[i]
        dash = ' stroke-dasharray="6 5"' if lane.ghost else ""
        name, _, role = lane.title.partition(" ")
        add(f'<g class="lane" data-lane="{i}" data-title="{_e(lane.title)}">'
            f'<line class="lane-line" x1="{x}" y1="{TOP}" x2="{x}" y2="{height - 20:.0f}" stroke="#9aa3ad" '
            f'stroke-width="2"{dash}/>'
            f'<text x="{x}" y="18" text-anchor="middle" font-size="13" font-weight="bold">'
            f'{_e(_fit(name, 24))}</text>'
            f'<text x="{x}" y="34" text-anchor="middle" font-size="12">{_e(_fit(role, 28))}</text>'
            f'<text x="{x}" y="50" text-anchor="middle" font-size="11" fill="#555">'
            f'{_e(_fit(lane.subtitle, 30))}</text></g>')
    start = ladder.events[0].t if ladder.events else 0.0
    since = f" after {time_of_day(start)}" if start > EPOCH else ""
    add(f'<text x="8" y="{TOP - 8}" font-size="11" fill="#555">time (s){since}</text>')
    if ladder.lanes:
        add(f'<text x="{notes_x}" y="{TOP - 8}" font-size="11" fill="#555">notes</text>')
    labels: list[str] = []
    for arrow in ladder.arrows:
        path, label = _arrow(arrow, lane_x, row_y)
        add(path)
        labels.append(label)
    t0 = ladder.events[0].t if ladder.events else 0.0
    last_state: dict[int, str] = {}
    note_no = 0
    for ev, ry in zip(ladder.events, row_y, strict=True):
        x = lane_x[ev.lane] if 0 <= ev.lane < n_lanes else LEFT
        add(f'<text class="time" x="8" y="{ry + 4:.0f}" font-size="11" fill="#555">+{ev.t - t0:.6f}</text>')
        fill = "#c62828" if ev.errno and ev.errno not in ("EINPROGRESS", "EAGAIN") else "#222"
        on_left = 0 <= ev.lane < n_lanes and left_side[ev.lane]
        short = _fit(_short(ev), 22 if on_left else 40)
        # the label stands on the side of the lane that arrows do not come from; a note's number after it
        lx, anchor = (x - 8, ' text-anchor="end"') if on_left else (x + 8, "")
        mark_x = max(LEFT - 2, x - 8 - len(short) * 6.3 - 12) if on_left else x + 8 + len(short) * 6.3 + 12
        add(f'<g class="event" data-lane="{ev.lane}" data-row="{ev.row}" data-op="{_e(ev.op)}" '
            f'data-kind="{_e(ev.kind)}" data-fd="{ev.fd if ev.fd is not None else ""}" '
            f'data-bytes="{ev.nbytes if ev.nbytes is not None else ""}">'
            f'<title>{_e(_tooltip(ev))}</title>'
            f'<circle cx="{x}" cy="{ry:.0f}" r="4.5" fill="{fill}"/>'
            f'{_backdrop(lx, ry - 16, short, 6.3, on_left)}'
            f'<text x="{lx}" y="{ry - 5:.0f}"{anchor} font-size="11" fill="{fill}" {HALO}>{_e(short)}</text></g>')
        key = id(ev.sock) if ev.sock is not None else -1
        if ev.state and last_state.get(key) != ev.state and ev.sock is not None and ev.sock.proto.startswith("tcp"):
            last_state[key] = ev.state
            add(_backdrop(lx, ry + 1, f"[{ev.state}]", 6.1, on_left))
            known = _state_from(ev)
            bold = ' font-weight="bold"' if known == "kernel" else ""
            add(f'<g><title>{_STATE_FROM[known]}</title><text class="state" data-lane="{ev.lane}" '
                f'data-row="{ev.row}" data-from="{known}" x="{lx}" y="{ry + 10:.0f}"{anchor} font-size="10" '
                f'fill="#6a1b9a" font-family="monospace"{bold} {HALO}>[{_e(ev.state)}]</text></g>')
        lines = _note_lines(ev)
        if lines:
            note_no += 1
            add(f'<g class="note" data-row="{ev.row}" data-lane="{ev.lane}">'
                f'<line x1="{x + 8 if on_left else mark_x + 8:.0f}" y1="{ry:.0f}" x2="{notes_x - 4}" y2="{ry:.0f}" stroke="#e0c060" '
                f'stroke-dasharray="2 3"/>'
                f'<circle cx="{mark_x:.0f}" cy="{ry - 9:.0f}" r="7" fill="#fff3c4" stroke="#b08800"/>'
                f'<text x="{mark_x:.0f}" y="{ry - 5.5:.0f}" text-anchor="middle" font-size="9">{note_no}</text>'
                f'<text x="{notes_x}" y="{ry + 4:.0f}" font-size="11" fill="#5d4500">'
                + "".join(f'<tspan x="{notes_x}" dy="{0 if k == 0 else LINE_H}">'
                          f'{_e((str(note_no) + ". ") if k == 0 else "   ")}{_e(line)}</tspan>'
                          for k, line in enumerate(lines))
                + "</text></g>")
    parts.extend(labels)  # last: no line crosses a label
    add("</svg>")
    return _page(title, ladder, "".join(parts), width)


def _arrow(a: Arrow, lane_x: list[int], row_y: list[float]) -> tuple[str, str]:
    """The arrow's line (a ``g.arrow``) and, apart, its label (drawn over everything else)."""
    x1 = lane_x[a.src.lane]
    y1 = row_y[a.src.row]
    if a.dst is not None:
        x2, y2 = lane_x[a.dst.lane], row_y[a.dst.row]
    elif a.reverse:  # from a peer that was not traced, into the call that received it
        x1, y1, x2, y2 = (lane_x[a.dst_lane] if 0 <= a.dst_lane < len(lane_x) else x1 + 60), y1 - ROW_H * 0.6, \
            x1, y1
    else:
        x2, y2 = lane_x[a.dst_lane] if 0 <= a.dst_lane < len(lane_x) else x1 + 60, y1 + ROW_H * 0.6
    if x1 == x2:  # both ends on one lane (one process talking to itself): bow out to the right
        path = f"M{x1},{y1:.0f} C{x1 + 70},{y1:.0f} {x2 + 70},{y2:.0f} {x2 + 6},{y2:.0f}"
    else:
        shrink = 6 if x2 > x1 else -6
        path = f"M{x1},{y1:.0f} L{x2 - shrink},{y2:.0f}"
    color = COLORS[a.kind]
    mx, my = (x1 + x2) / 2 + (40 if x1 == x2 else 0), (y1 + y2) / 2
    dash = ' stroke-dasharray="5 3"' if a.kind in ("fin", "rst") else ""
    line = (f'<g class="arrow" data-kind="{a.kind}" data-from="{a.src.lane}" data-to="{a.dst_lane}" '
            f'data-from-row="{a.src.row}" data-to-row="{a.dst.row if a.dst is not None else ""}" '
            f'data-bytes="{a.nbytes if a.nbytes is not None else ""}" data-label="{_e(a.label)}">'
            f'<title>{_e(a.label)}</title>'
            f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"{dash} '
            f'marker-end="url(#head-{a.kind})"/></g>')
    # the label runs along the arrow, just above it, as textbooks letter their ladders
    angle = math.degrees(math.atan2(y2 - y1, x2 - x1)) if x1 != x2 else 0.0
    if angle > 90 or angle < -90:
        angle -= 180 if angle > 0 else -180
    label = (f'<text class="arrow-label" x="{mx:.0f}" y="{my - 4:.0f}" text-anchor="middle" font-size="10.5" '
             f'transform="rotate({angle:.1f} {mx:.0f} {my:.0f})" fill="{color}" {HALO}>{_e(a.label)}</text>')
    return line, label


def _backdrop(x: float, y: float, text: str, char_w: float, right_aligned: bool = False) -> str:
    """A white box under a label, so that an arrow passing behind it does not cross its letters."""
    w = len(text) * char_w + 4
    x0 = x - w + 2 if right_aligned else x - 2
    return f'<rect class="backdrop" x="{x0:.0f}" y="{y:.0f}" width="{w:.0f}" height="14" fill="#fff" opacity="0.9"/>'


def _label_sides(ladder: Ladder, n_lanes: int) -> list[bool]:
    """For each lane, whether its labels go on its left: where fewer arrows arrive and leave."""
    right = [0] * n_lanes
    leftward = [0] * n_lanes
    for a in ladder.arrows:
        ends = (a.src.lane, a.dst.lane if a.dst is not None else a.dst_lane)
        for me, other in (ends, ends[::-1]):
            if 0 <= me < n_lanes and 0 <= other < n_lanes and me != other:
                if other > me:
                    right[me] += 1
                else:
                    leftward[me] += 1
    return [right[i] > leftward[i] for i in range(n_lanes)]


def _tooltip(ev: Ev) -> str:
    bits = [ev.op, f"fd={ev.fd}" if ev.fd is not None else ""]
    if ev.nbytes is not None:
        bits.append(f"{ev.nbytes} bytes")
    for label, v in (("local", ev.local), ("peer", ev.peer), ("", ev.detail)):
        if v:
            bits.append(f"{label}={v}" if label else v)
    if ev.state:
        bits.append(f"[{ev.state}]")
    return " ".join(b for b in bits if b)


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _page(title: str, ladder: Ladder, svg: str, width: int) -> str:
    legend = " ".join(f'<span style="color:{c}">&#9472;&#9654; {k.upper() if k in ("fin", "rst") else k}</span>'
                      for k, c in COLORS.items())
    files = "".join(f"<li>{_e(p)}</li>" for p in ladder.files)
    warns = "".join(f"<p class=warn>{_e(w)}</p>" for w in ladder.warnings)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0.8em; color: #222; }}
h1 {{ font-size: 1.2em; margin: 0.2em 0; }}
.legend {{ font-size: 0.9em; margin: 0.3em 0 0.6em; }}
.legend span {{ margin-right: 1em; white-space: nowrap; }}
.scroll {{ overflow-x: auto; -webkit-overflow-scrolling: touch; border: 1px solid #ddd; }}
.scroll svg {{ display: block; width: 100%; min-width: {int(width * 0.85)}px; height: auto; }}
.warn {{ color: #8a5a00; font-size: 0.9em; }}
ul {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>{_e(title)}</h1>
<div class="legend">{legend} <span>&#9679; a call</span> <span style="color:#6a1b9a">[STATE] from the calls</span>
<span style="color:#6a1b9a"><b>[STATE]</b> from the kernel</span>
<span>time goes down; one lane per endpoint</span></div>
{warns}
<div class="scroll">{svg}</div>
<p>Files:</p><ul>{files}</ul>
</body></html>
"""
