"""Every ``socklab bench`` command works from a plain ``pip install``, not only from a checkout.

The wheel is built from this tree once per module (what ``pip install socklab`` would install),
installed into a fresh virtual environment, and each command runs a tiny measurement from a
directory outside the repository: echo with its reference servers, tap, transfer, http (with
aiohttp's static server), chat and ws. The environment takes socklab's dependencies from the
test's own interpreter (a ``.pth`` line: no network), never socklab itself. The C load generator
compiles into the user's cache directory, and nothing is written into the installed package.

Every command runs in its own session and is bounded in time; on a timeout it and every process
it started (the servers under test) are killed by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Installed:
    socklab: Path  # the console script of the fresh environment
    package: Path  # where the wheel put the socklab package
    env: dict[str, str]
    cwd: Path  # outside the repository
    cache: Path  # XDG_CACHE_HOME of the runs


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("installed")
    tree = base / "tree"  # a copy: building in the work tree would leave build/ and egg-info behind
    shutil.copytree(REPO / "src" / "socklab", tree / "src" / "socklab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(tree)],
                   check=True, timeout=240, capture_output=True)
    [wheel] = dist.glob("socklab-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, timeout=30).stdout.strip())
    # the dependencies (click, rich, uvloop, aiohttp...) from this interpreter's environment, after
    # the fresh one's own site-packages; a plain path line, so that environment's editable
    # socklab (a .pth file there) is not processed
    (site / "zz_socklab_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=120, capture_output=True)
    cwd = base / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", XDG_CACHE_HOME=str(base / "cache"),
               NO_COLOR="1", COLUMNS="200")
    env.pop("SOCKLAB_BENCH_CACHE", None)
    env.pop("SOCKLAB_BENCH_REFERENCE_DIR", None)
    where = subprocess.run([str(python), "-c", "import socklab; print(socklab.__file__)"], cwd=cwd, env=env,
                           check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    package = Path(where).parent
    assert package.is_relative_to(venv), f"socklab imported from {where}, not from the installed wheel"
    yield Installed(venv / "bin" / "socklab", package, env, cwd, base / "cache")
    shutil.rmtree(base, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parent.items() if p == frontier.pop()]
        found += kids
        frontier += kids
    return found


def run(inst: Installed, *args: str, timeout: float = 90) -> tuple[str, str]:
    """Run ``socklab ARGS`` from outside the repository; its output, after asserting it succeeded."""
    proc = subprocess.Popen([str(inst.socklab), *args], cwd=inst.cwd, env=inst.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:  # the servers it started run in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"socklab {' '.join(args)} did not finish within {timeout:g} s\n{out[-2000:]}\n{err[-2000:]}")
    assert proc.returncode == 0, f"socklab {' '.join(args)} exited {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return out, err


def test_bench_echo_measures_engine_and_reference_and_compiles_into_the_user_cache(installed: Installed) -> None:
    before = _files(installed.package)
    out, _ = run(installed, "bench", "echo", "--engines", "epoll", "--connections", "2", "--duration", "0.3",
                 "--warmup", "0", "--repeat", "1", "--json")
    rows = {r["kind"]: r for r in json.loads(out)["results"]}
    assert rows["reference"]["name"] == "ref:selectors_loop" and rows["reference"]["rps"] > 0
    assert rows["socklab"]["name"] == "epoll" and rows["socklab"]["rps"] > 0
    assert list((installed.cache / "socklab" / "bench").glob("loadgen-*")), "the load generator is not in the cache"
    assert _files(installed.package) == before  # nothing compiled or written into the installed package


def test_bench_tap(installed: Installed) -> None:
    out, _ = run(installed, "bench", "tap", "--bytes", str(1 << 20), "--count", "20", "--runs", "1")
    assert re.search(r"bulk 1 MiB: direct [\d.]+ GB/s, tap [\d.]+ GB/s", out), out
    assert re.search(r"64-byte round trips x20: p50 direct [\d.]+ ms, tap [\d.]+ ms", out), out


def test_bench_transfer(installed: Installed) -> None:
    out, _ = run(installed, "bench", "transfer", "native", "--size", "1", "--json")
    rates = json.loads(out.strip().splitlines()[-1])
    assert set(rates) == {"native-discard", "bare-discard", "nc", "native-disk", "bare-disk"}
    assert all(r["rate"] > 0 for r in rates.values())


def test_bench_http_with_the_shipped_aiohttp_server(installed: Installed) -> None:
    out, _ = run(installed, "bench", "http", "--engines", "epoll", "--peers", "aiohttp", "--duration", "1",
                 "--rounds", "1")
    for name in ("socklab epoll", "aiohttp static"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert int(row.split("|")[2].replace(",", "")) > 0, row  # 1 KiB requests/s


def test_bench_chat(installed: Installed) -> None:
    out, _ = run(installed, "bench", "chat", "--clients", "4", "--rate", "20", "--seconds", "0.3",
                 "--store-sync", "memory", "--json")
    [row] = json.loads(out)
    assert row["engine"] == "epoll" and row["deliveries_per_s"] > 0 and row["dropped_clients"] == 0


def test_bench_ws_with_the_shipped_servers(installed: Installed) -> None:
    out, _ = run(installed, "bench", "ws", "--engines", "epoll", "--connections", "2", "--duration", "0.3",
                 "--warmup", "0", "--repeat", "1", "--json")
    names = {r["name"]: r for r in json.loads(out)["results"]}
    assert names["epoll"]["rps"] > 0 and names["ref:aiohttp_uvloop"]["rps"] > 0


@pytest.mark.parametrize("command", ["", "echo", "sweep", "calibrate", "build", "tap", "transfer", "transfer native",
                                     "transfer tftp", "transfer tftp-faults", "http", "chat", "ws"])
def test_help_teaches_without_naming_the_repository(installed: Installed, command: str) -> None:
    out, _ = run(installed, "bench", *command.split(), "--help", timeout=30)
    for internal in ("benchmarks/", "docs/", "source tree", "checkout", "issue", "src/", ".py"):
        assert internal not in out, f"`socklab bench {command} --help` mentions {internal!r}"
    group = command.split()[0] if command else ""
    assert re.search(rf"^ +socklab bench {group}\b", out, re.M), f"no example in `socklab bench {command} --help`"
