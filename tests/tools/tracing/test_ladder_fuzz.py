"""``trace view`` reads files people hand it: any JSON lines give a page or a one-line usage error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklab.core.errors import UsageError
from socklab.tools.tracing.ladder import build
from socklab.tools.tracing.svg import render_html

OPS = ["socket", "bind", "listen", "accept", "accept4", "connect", "send", "sendto", "write", "recv", "recvfrom",
       "read", "shutdown", "close", "error", "note", "exit", "getsockopt", "x"]
ADDRS = ["127.0.0.1:7007", "127.0.0.1:5000", "[::1]:7007", "0.0.0.0:7007", "junk", ":", ""]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.integers(), max_size=2))

EVENT = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS)},
    optional={"ts": st.one_of(st.floats(0, 2e9), VALUES), "fd": st.one_of(st.integers(3, 6), VALUES),
              "peer": st.one_of(st.sampled_from(ADDRS), VALUES), "local": st.one_of(st.sampled_from(ADDRS), VALUES),
              "nbytes": st.one_of(st.integers(0, 20), VALUES), "detail": st.one_of(st.sampled_from(
                  ["new fd from listening fd 3", "127.0.0.1:7007", "SHUT_WR: FIN sent", "AF_INET, SOCK_DGRAM"]),
                  VALUES), "notes": st.one_of(st.lists(st.text(max_size=30), max_size=2), VALUES),
              "source": st.sampled_from(["strace", "x"]), "pid": VALUES, "comm": VALUES, "proto": st.one_of(
                  st.sampled_from(["tcp", "udp"]), VALUES), "dur": VALUES, "errno": st.one_of(
                  st.sampled_from(["ECONNRESET", "EINPROGRESS"]), VALUES), "state": VALUES, "tid": VALUES})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.one_of(EVENT, VALUES), max_size=12), min_size=1, max_size=3))
def test_any_json_lines_give_a_page_or_a_usage_error(files: list[list[object]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, events in enumerate(files):
            p = Path(tmp) / f"{i}.jsonl"
            p.write_text("".join(json.dumps(e) + "\n" for e in events))
            paths.append(str(p))
        try:
            ladder = build(paths)
        except UsageError:
            return
        page = render_html(ladder)
        assert page.startswith("<!DOCTYPE html>") and "</svg>" in page


def test_a_trace_counting_from_its_own_start_is_put_on_the_shared_clock(tmp_path: Path) -> None:
    """An older socklab --trace-json (ts since its own start) beside a trace run file (epoch ts)."""
    t = 1_800_000_000.0
    server = [
        {"ts": 0.001, "op": "bind", "fd": 5, "engine": "epoll", "thread": "M", "detail": "127.0.0.1:7007"},
        {"ts": 0.002, "op": "listen", "fd": 5, "engine": "epoll", "thread": "M"},
        {"ts": 0.500, "op": "accept", "fd": 7, "engine": "epoll", "thread": "M", "peer": "127.0.0.1:5000",
         "detail": "new fd from listening fd 5"},
        {"ts": 0.501, "op": "recv", "fd": 7, "engine": "epoll", "thread": "M", "peer": "127.0.0.1:5000", "nbytes": 5},
        {"ts": 0.502, "op": "send", "fd": 7, "engine": "epoll", "thread": "M", "peer": "127.0.0.1:5000", "nbytes": 5},
    ]
    strace = {"source": "strace", "pid": 9, "tid": 9, "comm": "c", "local": "127.0.0.1:5000",
              "peer": "127.0.0.1:7007", "fd": 3}
    client = [
        {**strace, "ts": t + 0.010, "dur": 0.001, "op": "connect"},
        {**strace, "ts": t + 0.020, "dur": 0.0001, "op": "write", "nbytes": 5},
        {**strace, "ts": t + 0.030, "dur": 0.005, "op": "read", "nbytes": 5},
    ]
    paths = []
    for name, events in (("server.jsonl", server), ("client.jsonl", client)):
        (tmp_path / name).write_text("".join(json.dumps(e) + "\n" for e in events))
        paths.append(str(tmp_path / name))
    ladder = build(paths)
    kinds = sorted(a.kind for a in ladder.arrows)
    assert kinds == ["data", "data", "handshake"], kinds
    for a in ladder.arrows:
        assert a.dst is not None and a.dst.row > a.src.row, (a.kind, a.src.op, a.dst)
    assert ladder.warnings and "server.jsonl counts time from its own start" in ladder.warnings[0]


def test_two_sends_merged_in_one_recv_are_labelled(tmp_path: Path) -> None:
    t = 1_800_000_000.0

    def ev(pid: int, local: str, peer: str, dt: float, op: str, **kw: object) -> dict[str, object]:
        return {"source": "strace", "pid": pid, "tid": pid, "comm": "p", "fd": 3, "local": local, "peer": peer,
                "ts": t + dt, "dur": 0.0001, "op": op, **kw}

    c, s = "127.0.0.1:5000", "127.0.0.1:7007"
    client = [ev(1, c, s, 0.01, "connect"), ev(1, c, s, 0.02, "sendto", nbytes=3),
              ev(1, c, s, 0.03, "sendto", nbytes=4)]
    server = [ev(2, s, None, 0.001, "listen"), ev(2, s, c, 0.015, "accept4", detail="new fd from listening fd 3"),
              ev(2, s, c, 0.05, "recvfrom", nbytes=7)]
    server[0]["peer"] = None
    for e in server[1:]:
        e["fd"] = 4
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(e) + "\n" for e in client))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(e) + "\n" for e in server))
    ladder = build([str(tmp_path / "c.jsonl"), str(tmp_path / "s.jsonl")])
    data = [a for a in ladder.arrows if a.kind == "data"]
    assert sorted(a.nbytes or 0 for a in data) == [3, 4]
    assert {a.dst.op for a in data if a.dst is not None} == {"recvfrom"}
    assert sum("2 sends merged in 1 recv of 7 B" in a.label for a in data) == 1
