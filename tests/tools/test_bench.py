"""socklab bench: the C programs build and measure, servers start and are watched, results render.

Quick runs only (well under a second of load each) and no performance assertions: these tests
check that the tooling measures *something sane*, not how fast anything is.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from socklab.core.errors import SocklabError, UsageError
from socklab.tools.bench import build, report
from socklab.tools.bench.procs import REFERENCE_FOR, ServerProcess, ServerSpec, pick_cores, server_specs
from socklab.tools.bench.runner import Load, Result, run_echo, run_loadgen, run_loadgen_pair, run_sweep
from tests.conftest import roundtrip

QUICK = Load(connections=4, size=1024, pipeline=1, duration=0.4, warmup=0.1)


@pytest.fixture(scope="module", autouse=True)
def bench_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Compile into a temporary cache, not the user's ~/.cache."""
    d = tmp_path_factory.mktemp("bench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOCKLAB_BENCH_CACHE", str(d))
        yield d


@pytest.fixture
def c_server() -> Iterator[ServerProcess]:
    spec = ServerSpec("C epoll", "c", (str(build.binary("echo_server")), "--port", "0"))
    with ServerProcess(spec) as srv:
        yield srv


def check_sane(res: dict[str, Any], load: Load) -> None:
    """The loadgen JSON: everything connected, round trips counted, percentiles ordered."""
    assert res["connections"] == load.connections and res["idle"] == load.idle
    assert res["held"] == load.connections + load.idle == res["alive"]
    assert res["errors"] == 0 and res["connect_errors"] == 0 and res["first_error"] == ""
    assert res["requests"] > 0 and res["rps"] > 0 and res["mbps"] > 0
    # never shorter than asked; longer only as much as a busy machine delays the loadgen's stop
    assert load.duration - 0.01 <= res["duration"] <= load.duration + 5.0
    in_flight = load.connections * load.pipeline * load.size
    assert abs(res["bytes"] - res["requests"] * load.size) <= in_flight
    lat = res["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"]
    assert lat["p999"] <= lat["max"] * 1.05  # bucket midpoints may sit a little above the max
    assert res["cpu"]["user"] >= 0 and res["cpu"]["sys"] >= 0 and 0 <= res["cpu"]["percent"] <= 200


# ---- building ------------------------------------------------------------------------------------
def test_build_compiles_once_into_the_cache(bench_cache: Path) -> None:
    first = build.binary("loadgen")
    assert first.parent == bench_cache and first.stat().st_mode & 0o111
    assert build.binary("loadgen") == first
    assert subprocess.run([str(first), "--bogus"], capture_output=True, check=False).returncode == 2


def test_build_recompiles_when_the_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "echo_server.c"
    shutil.copy(build.C_DIR / "echo_server.c", src)
    monkeypatch.setattr(build, "C_DIR", tmp_path)
    before = build.binary("echo_server")
    src.write_text(src.read_text() + "\n/* changed */\n")
    after = build.binary("echo_server")
    assert before != after and after.exists()


def test_build_reports_compile_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "loadgen.c").write_text("int main(void) { return nope; }\n")
    monkeypatch.setattr(build, "C_DIR", tmp_path)
    with pytest.raises(build.BuildError, match=r"compiling loadgen\.c failed"):
        build.binary("loadgen")
    with pytest.raises(build.BuildError, match="unknown benchmark program"):
        build.binary("wrk")


# ---- the load generator --------------------------------------------------------------------------
def test_loadgen_against_the_c_server(c_server: ServerProcess) -> None:
    res = run_loadgen(c_server.host, c_server.port, QUICK, server=c_server)
    check_sane(res, QUICK)
    assert res["size"] == 1024 and res["pipeline"] == 1
    assert res["server_cpu_percent"] >= 0 and res["server_rss_start"] > 0 and res["server_rss_end"] > 0


def test_loadgen_pipelines_64k_messages_and_holds_idle_connections(c_server: ServerProcess) -> None:
    load = Load(connections=3, size=65536, pipeline=4, duration=0.3, warmup=0.0, idle=40)
    check_sane(run_loadgen(c_server.host, c_server.port, load), load)


def test_loadgen_against_socklab_epoll(spawn: Callable[..., Any]) -> None:
    proc = spawn("echo", "serve", "--engine", "epoll", "--host", "127.0.0.1", "--port", "0")
    m = proc.wait_for(r"socklab echo listening on tcp://127\.0\.0\.1:(\d+) \(engine epoll\)")
    check_sane(run_loadgen("127.0.0.1", int(m[1]), QUICK), QUICK)


def test_loadgen_interleaves_two_servers_in_slices() -> None:
    """--vs-port: both servers get the load, in turns; each side counts only its own slices."""
    spec = ServerSpec("C epoll", "c", (str(build.binary("echo_server")), "--port", "0"))
    load = Load(connections=4, size=1024, duration=1.0, warmup=0.1)
    with ServerProcess(spec) as a, ServerProcess(spec) as b:
        ra, rb = run_loadgen_pair(a, b, load, slice_ms=50)
        # The server not holding the load is idle: its CPU over its own slices is a real figure.
        assert ra["server_cpu_percent"] > 0 and rb["server_cpu_percent"] > 0
    for res, srv in ((ra, a), (rb, b)):
        assert res["target"] == f"127.0.0.1:{srv.port}"
        assert res["held"] == res["alive"] == 4 and res["errors"] == 0
        assert res["requests"] > 0 and res["rps"] == pytest.approx(res["requests"] / res["active_seconds"], rel=0.01)
        # 1 s in 50 ms turns: about ten each on an idle machine; a busy one makes turns (and the
        # drain between them) longer, so only "several turns each" is certain
        assert res["slices"] >= 2
    # The turns share the measured time between them (the drains between turns count for
    # neither), and neither gets it all.
    shared = ra["active_seconds"] + rb["active_seconds"]
    assert 0 < shared <= max(ra["duration"], rb["duration"]) + 0.01
    assert 0.1 < ra["active_seconds"] / shared < 0.9


def test_loadgen_reports_refused_connections() -> None:
    with socket.socket() as bound_not_listening:  # its port refuses connections, and nobody else gets it
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        res = run_loadgen("127.0.0.1", port, Load(connections=3, duration=0.2, warmup=0))
    assert res["held"] == 0 and res["connect_errors"] == 3 and res["requests"] == 0
    assert "refused" in res["first_error"].lower()


# ---- servers under test --------------------------------------------------------------------------
def echo_once(host: str, port: int, payload: bytes = b"hello bench\n") -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        return roundtrip(s, payload)


@pytest.mark.parametrize("ref", sorted(set(REFERENCE_FOR.values())))
def test_reference_servers_echo(ref: str) -> None:
    spec = next(s for s in server_specs([e for e, r in REFERENCE_FOR.items() if r == ref][:1],
                                        references=True, with_c=False, targets=[]) if s.kind == "reference")
    with ServerProcess(spec) as srv:
        assert echo_once(srv.host, srv.port) == b"hello bench\n"
        assert srv.cpu_seconds() is not None and (srv.rss_bytes() or 0) > 0


def test_the_floor_server_echoes_and_survives_a_reset() -> None:
    floor = Path(__file__).resolve().parents[2] / "benchmarks" / "echo_floor.py"
    with ServerProcess(ServerSpec("floor", "reference", (sys.executable, str(floor), "--serve"))) as srv:
        assert echo_once(srv.host, srv.port) == b"hello bench\n"
        with socket.create_connection((srv.host, srv.port), timeout=5) as s:  # leave with an RST
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"x")
        assert echo_once(srv.host, srv.port, b"again\n") == b"again\n" and srv.alive()


def test_standin_prints_the_same_readiness_line() -> None:
    spec = ServerSpec("standin", "socklab", (sys.executable, "-m", "socklab.tools.bench.standin",
                                             "--engine", "epoll", "--port", "0"), engine="epoll")
    with ServerProcess(spec) as srv:
        assert re.search(r"socklab echo listening on tcp://127\.0\.0\.1:\d+ \(engine epoll\)", srv.output[0])
        assert echo_once(srv.host, srv.port) == b"hello bench\n"


def test_a_server_that_never_gets_ready_is_reported() -> None:
    spec = ServerSpec("broken", "socklab", (sys.executable, "-c", "import sys; print('nope'); "
                                                                 "sys.exit('bind failed: boom')"))
    with pytest.raises(SocklabError, match=r"exited before it was ready(.|\n)*bind failed: boom"):
        ServerProcess(spec).start()


def test_pinning_choice_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {2, 5})
    assert pick_cores() == ({2}, 5, "server pinned to core 2, load generator to core 5")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})
    server, gen, why = pick_cores()
    assert server is None and gen is None and "only 1 core" in why and "no pinning" in why


def test_run_echo_compares_engine_reference_and_c() -> None:
    specs = server_specs(["epoll"], references=True, with_c=True, targets=[])
    assert [s.name for s in specs] == ["C epoll", "ref:selectors_loop", "epoll"]
    results = run_echo(specs, QUICK, repeats=1)
    for r in results:
        assert r.error is None, r.error
        assert r.rps > 0 and r.held == QUICK.connections and r.errors == 0 and len(r.samples) == 1
        assert r.server_cpu is not None and r.rss is not None and r.rss_idle is not None
    ratios = report.ratios(results)
    assert ratios["epoll"][0] == pytest.approx(results[2].rps / results[1].rps)
    assert ratios["C epoll"][1] == pytest.approx(1.0)


def test_run_echo_interleaves_each_engine_with_its_reference() -> None:
    specs = server_specs(["select", "epoll"], references=True, with_c=True, targets=[])
    results = {r.name: r for r in run_echo(specs, QUICK, repeats=2, interleave=True, slice_ms=50)}
    assert all(r.error is None for r in results.values())
    ref, c = results["ref:selectors_loop"], results["C epoll"]
    assert len(ref.samples) == 4  # paired with select and with epoll, in each of two rounds
    assert sorted(s["paired_with"] for s in ref.samples) == ["epoll", "epoll", "select", "select"]
    assert len(c.samples) == 2 and "paired_with" not in c.samples[0]  # no partner: it runs alone
    for name in ("select", "epoll"):
        r = results[name]
        assert [s["round"] for s in r.samples] == [0, 1] and all(s["paired_rps"] > 0 for s in r.samples)
        # "vs ref" is taken within each interleaved run, not between the rows' medians.
        mine = sorted(s["rps"] / s["paired_rps"] for s in r.samples)
        assert sorted(report.round_ratios(r, ref)) == pytest.approx(mine)
        assert report.ratios(list(results.values()))[name][0] == pytest.approx(sum(mine) / 2)
    # Then the faster of the two takes turns with the C server, once per round; its "vs C" is
    # taken within those runs, the other engine's between separate runs.
    best = max(results["select"], results["epoll"], key=lambda r: r.rps)
    other = results["epoll" if best.name == "select" else "select"]
    assert len(best.c_pairs) == 2 and not other.c_pairs
    assert all(p["rps"] > 0 and p["c_rps"] > 0 and p["cpu_percent"] > 0 for p in best.c_pairs)
    within = sorted(p["rps"] / p["c_rps"] for p in best.c_pairs)
    ratios = report.ratios(list(results.values()))
    assert ratios[best.name][1] == pytest.approx(sum(within) / 2)
    assert ratios[other.name][1] == pytest.approx(report.paired_ratio(other, c))
    # CPU time is split: the Python servers spend some of it in user space, never more than all.
    assert best.server_user is not None and best.server_cpu is not None
    assert 0 < best.server_user <= best.server_cpu


def test_every_concurrent_engine_can_be_measured(concurrent_engine: str) -> None:
    spec = server_specs([concurrent_engine], references=False, with_c=False, targets=[])[0]
    [res] = run_echo([spec], Load(connections=4, duration=0.2, warmup=0.0), repeats=1)
    assert res.error is None and res.rps > 0 and res.held == 4


def test_sweep_holds_idle_connections_and_prices_them() -> None:
    spec = server_specs(["epoll"], references=False, with_c=False, targets=[], max_connections=500)[0]
    results = run_sweep([spec], [5, 200], active=2, base=Load(duration=0.3, warmup=0.0))
    assert [(r.load.connections, r.load.idle) for r in results] == [(2, 3), (2, 198)]
    for r in results:
        assert r.error is None and r.held == r.load.connections + r.load.idle
        assert r.bytes_per_connection is not None


def test_cli_echo_json(spawn: Callable[..., Any]) -> None:
    proc = spawn("bench", "echo", "--engines", "epoll", "--no-reference", "--with-c", "--connections", "2",
                 "--duration", "0.3", "--warmup", "0", "--repeat", "1", "--json")
    out, err = proc.popen.communicate(timeout=50)
    assert proc.popen.returncode == 0, err
    doc = json.loads(out)
    assert [r["name"] for r in doc["results"]] == ["C epoll", "epoll"]
    assert doc["results"][1]["vs_c"] > 0 and doc["meta"]["load"]["connections"] == 2


def test_cli_refuses_iterative_with_several_connections(spawn: Callable[..., Any]) -> None:
    proc = spawn("bench", "echo", "--engines", "iterative", "--duration", "0.2")
    _, err = proc.popen.communicate(timeout=30)
    assert proc.popen.returncode == 2 and b"one connection at a time" in err


# ---- rendering canned results --------------------------------------------------------------------
def canned(name: str, kind: str, rps: float, *, engine: str | None = None, gen: float = 40.0,
           load: Load = QUICK, error: str | None = None, rss: int | None = 30 << 20,
           srv: float | None = 99.0) -> Result:
    return Result(name, kind, engine, load, rps=rps, mbps=rps * load.size / 1e6, p50=50, p90=80, p99=150,
                  max_us=900, server_cpu=srv, rss=rss, rss_idle=20 << 20, loadgen_cpu=gen, held=4, error=error)


CANNED = [canned("C epoll", "c", 100_000, gen=97.0), canned("ref:selectors_loop", "reference", 80_000),
          canned("epoll", "socklab", 88_000, engine="epoll"),
          canned("asyncio", "socklab", 0, engine="asyncio", error="server died during the run: [boom]"),
          canned("127.0.0.1:9000", "target", 120_000, gen=96.0, srv=None, rss=None)]


def test_echo_table_shows_ratios_failures_and_a_busy_generator() -> None:
    console = Console(record=True, width=220)
    console.print(report.echo_table(CANNED, "canned"))
    text = console.export_text()
    assert "1.10x" in text and "0.88x" in text and "1.00x" in text
    assert "96!" in text and "97!" not in text  # flagged only when the generator, not the server, was busy
    assert "9.9" in text  # server CPU µs per request: 0.99 s / 100,000
    assert "failed: server died during the run: [boom]" in text  # markup in errors is escaped


def test_table_marks_the_ratio_measured_against_c_and_splits_cpu() -> None:
    epoll = canned("epoll", "socklab", 88_000, engine="epoll")
    epoll.server_user = 22.0  # of 99 %
    epoll.c_pairs = [{"rps": 80.0, "c_rps": 100.0}, {"rps": 81.0, "c_rps": 100.0}, {"rps": 90.0, "c_rps": 100.0}]
    results = [CANNED[0], CANNED[1], epoll]
    assert epoll.vs_c_interleaved == pytest.approx(0.81)  # the median of its own runs, not 88,000 / 100,000
    console = Console(record=True, width=240)
    console.print(report.echo_table(results, "canned"))
    text = console.export_text()
    assert "0.81x*" in text and "0.88x" not in text and "measured interleaved with the C server (3 runs)" in text
    assert "11.25 (2.50)" in text  # 0.99 s / 88,000 per request, 0.22 s / 88,000 of it in user space
    doc = json.loads(report.to_json(results, {}))
    assert doc["results"][2]["vs_c"] == pytest.approx(0.81) and doc["results"][2]["user_us_per_request"] == 2.5


def test_json_carries_ratios() -> None:
    doc = json.loads(report.to_json(CANNED, {"repeats": 1}))
    epoll = next(r for r in doc["results"] if r["name"] == "epoll")
    assert epoll["vs_reference"] == pytest.approx(1.1) and epoll["vs_c"] == pytest.approx(0.88)
    assert epoll["reference"] == "ref:selectors_loop" and epoll["bytes_per_connection"] > 0


def test_charts_are_self_contained_svg_and_html(tmp_path: Path) -> None:
    svg, page = tmp_path / "echo.svg", tmp_path / "echo.html"
    report.write_chart(str(svg), CANNED, sweep=False, meta={"repeats": 1})
    root = ET.parse(svg).getroot()  # well-formed XML
    assert root.tag.endswith("svg") and "88,000 req/s" in svg.read_text()
    report.write_chart(str(page), CANNED, sweep=False, meta={"repeats": 1})
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "<script" not in html
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from anywhere
    with pytest.raises(UsageError, match=r"\.svg or \.html"):
        report.write_chart(str(tmp_path / "echo.png"), CANNED, sweep=False, meta={})


def test_the_echo_chart_has_a_legend_and_says_which_way_is_better(tmp_path: Path) -> None:
    # issue 17: no legend (grey reference, blue socklab) and no word that lower latency is better
    svg = tmp_path / "echo.svg"
    report.write_chart(str(svg), CANNED, sweep=False, meta={})
    text = svg.read_text()
    assert "higher is better" in text and "lower is better" in text
    assert "plain reference server" in text and "socklab engine" in text


def test_sweep_table_and_chart(tmp_path: Path) -> None:
    rows = []
    for total in (10, 1000):
        load = Load(connections=2, idle=total - 2)
        rows.append(canned("epoll", "socklab", 50_000, engine="epoll", load=load, rss=(20 << 20) + total * 2048))
        rows.append(canned("select", "socklab", 40_000, engine="select", load=load,
                           error="server died during the run: fd 1024" if total > 1000 else None))
    rows[-1].held = 600
    console = Console(record=True, width=220)
    console.print(report.sweep_table(rows, "sweep"))
    text = console.export_text()
    assert "1,000 conns" in text and "2.0 KiB" in text and "600 / 40,000" in text
    report.write_chart(str(tmp_path / "sweep.svg"), rows, sweep=True, meta={})
    assert ET.parse(tmp_path / "sweep.svg").getroot().tag.endswith("svg")


def test_cli_measures_any_target(c_server: ServerProcess, spawn: Callable[..., Any]) -> None:
    proc = spawn("bench", "echo", "--target", f"127.0.0.1:{c_server.port}", "--connections", "2",
                 "--duration", "0.3", "--warmup", "0", "--repeat", "1", "--json")
    out, err = proc.popen.communicate(timeout=50)
    assert proc.popen.returncode == 0, err
    [row] = json.loads(out)["results"]
    assert row["kind"] == "target" and row["rps"] > 0 and row["server_cpu"] is None  # no process to watch


def test_app_benchmarks_are_reachable_from_bench() -> None:
    from socklab.tools.bench.cli import bench

    for name in ("chat", "transfer", "tap", "http", "rpc"):
        assert name in bench.commands
    out = subprocess.run([sys.executable, "-m", "socklab", "bench", "tap", "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "usage" in out.stdout.lower()  # the script's own help


def test_ratio_to_the_reference_is_paired_round_by_round() -> None:
    # Round 2 was a slow minute for both servers: the engine is 1.10x its reference in every round,
    # while the ratio of the two medians (100 / 100) would call them equal.
    def result(name: str, kind: str, engine: str | None, rps: list[float]) -> Result:
        samples = [{"round": i, "rps": v} for i, v in enumerate(rps)]
        return Result(name, kind, engine, QUICK, rps=sorted(rps)[1], samples=samples)

    ref = result("ref:selectors_loop", "reference", None, [100.0, 50.0, 200.0])
    eng = result("epoll", "socklab", "epoll", [110.0, 55.0, 220.0])
    eng.rps = 100.0  # pretend the median landed elsewhere: the paired figure must not use it
    assert report.round_ratios(eng, ref) == pytest.approx([1.1, 1.1, 1.1])
    assert report.ratios([ref, eng])["epoll"][0] == pytest.approx(1.1)
    doc = json.loads(report.to_json([ref, eng], {}))
    assert doc["results"][1]["vs_reference_rounds"] == pytest.approx([1.1, 1.1, 1.1])


def test_a_target_run_says_what_applies_to_a_target(c_server: ServerProcess, spawn: Callable[..., Any]) -> None:
    """Issue 15: `bench echo --target` said the server was pinned and compared with a reference;
    socklab did not start a target, so neither applies - the text says what does."""
    proc = spawn("bench", "echo", "--target", f"127.0.0.1:{c_server.port}", "--connections", "2",
                 "--duration", "0.3", "--warmup", "0", "--repeat", "1", env={"COLUMNS": "400"})
    out, err = proc.popen.communicate(timeout=50)
    assert proc.popen.returncode == 0, err
    text = " ".join((out + err).decode().split())
    assert "server pinned" not in text and "interleaved with its reference" not in text
    assert "the --target server runs outside socklab: not pinned, its CPU and memory not measured" in text
    assert "no reference" in text


def test_setup_words_for_engines_with_and_without_targets() -> None:
    from socklab.tools.bench.cli import describe_setup

    pin = "server pinned to core 0, load generator to core 1"
    assert describe_setup(["reference", "socklab"], pin, 1, True, 200) == (
        pin, "each engine interleaved with its reference in 200 ms turns")
    pinning, how = describe_setup(["reference", "socklab", "target"], pin, 1, True, 200)
    assert pinning == pin + "; --target servers: not pinned, CPU and memory not measured"
    assert how.startswith("each engine interleaved with its reference") and "each --target in runs of its own" in how
    assert describe_setup(["c", "target"], pin, 1, True, 200)[1].startswith("separate runs")
