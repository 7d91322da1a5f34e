"""``socklab bench http``: static files over HTTP/1.1 - socklab beside http.server, aiohttp and nginx.

Why paired rounds: on a shared machine the throughput of the SAME server swings by up to 2x
between consecutive 3-s runs, and the swings are correlated in time (host noise, other work).
nginx alone on the 1 MiB file gave 1.21-1.97 GB/s over six identical 3-s runs, so a sequential
one-shot comparison (every server measured once, one after the other) mostly measures *when*
each server ran; 8 alternating 2-s rounds of nginx/socklab gave a mean ratio of 0.97.

So this starts every server once, up front, then runs the rounds; in each round every server
gets one wrk run per file, back to back, in an order rotated by one each round (no server always
goes first). Each server's run is divided by nginx's run of the SAME round and file, and the table
shows the median of those per-round ratios with their min-max. Beside wall-clock figures it records
the server's CPU time per request (utime+stime from /proc/PID/stat; for nginx, its worker), which
hardly moves with load. Servers are pinned to one core and wrk (one thread) to another; the files
are a 1 KiB and a 1 MiB random file in a temporary directory.

One raw socket finds a free port for nginx, which cannot report a port-0 bind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click

from socklab.cli.options import run_cli
from socklab.core.errors import SocklabError, UsageError
from socklab.tools.bench.procs import SERVERS_DIR

__all__ = ["PEERS", "WrkLoad", "http", "parse_wrk", "run_http_bench", "table"]

PEERS = ("http.server", "aiohttp", "nginx")

TICK = os.sysconf("SC_CLK_TCK")
FILES = ("1k.bin", "1m.bin")
READY_TIMEOUT = 15.0
NGINX = "nginx (1 worker)"

NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/logs/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    default_type application/octet-stream;
    server {{ listen 127.0.0.1:{port}; root {site}; }}
}}
"""


@dataclass
class Server:
    """One running server under test: its process, its port, and whose CPU time counts."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    nginx: bool = False
    logs: list[IO[bytes]] = field(default_factory=list)
    seen_workers: set[int] = field(default_factory=set)

    def cpu_pids(self) -> list[int]:
        """The processes whose CPU time is the server's: nginx's workers, else the process and its children."""
        kids = descendants(self.proc.pid)
        if self.nginx:
            self.seen_workers.update(kids)
            return kids
        return [self.proc.pid, *kids]


# --- /proc -------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the parenthesised comm, which may hold spaces), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid (scans /proc: this kernel has no /proc/PID/task/TID/children)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                parent[int(entry)] = int(stat[1])  # field 4, ppid
    found: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found.extend(kids)
        frontier.extend(kids)
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime (fields 14+15; the process line already sums all its threads) over pids, in seconds."""
    total = 0
    for pid in pids:
        stat = proc_stat(pid)
        if stat is not None:
            total += int(stat[11]) + int(stat[12])
    return total / TICK


# --- starting and stopping servers -----------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"\W+", "_", name)


def drain(stream: IO[bytes], sink: IO[bytes]) -> None:
    """Copy what a server still prints on stdout after its readiness line, so its pipe never fills."""
    try:
        while chunk := os.read(stream.fileno(), 65536):
            sink.write(chunk)
    except (OSError, ValueError):
        pass


def start_process(name: str, cmd: list[str], work: Path, cpu: str, servers: list[Server],
                  stdout_pipe: bool) -> Server:
    """Start cmd pinned to cpu (taskset execs it: the pid is the server's) and register it for cleanup."""
    err = open(work / f"{slug(name)}.err", "wb")  # noqa: SIM115 - closed in stop()
    out = open(work / f"{slug(name)}.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["taskset", "-c", cpu, *cmd], stdout=subprocess.PIPE if stdout_pipe else out,
                            stderr=err, stdin=subprocess.DEVNULL, bufsize=0)
    server = Server(name, proc, logs=[out, err])
    servers.append(server)
    return server


def wait_line(server: Server, pattern: str, work: Path) -> int:
    """Read the server's stdout until its readiness line matches pattern (one port group); return the port."""
    stream = server.proc.stdout
    assert stream is not None
    deadline = time.monotonic() + READY_TIMEOUT
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while (m := re.search(pattern, seen.decode(errors="replace"))) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SocklabError(f"no readiness line from {server.name} in {READY_TIMEOUT:.0f} s")
            if not sel.select(left):
                continue
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                server.proc.wait(5)
                err = (work / f"{slug(server.name)}.err").read_text(errors="replace")
                raise SocklabError(f"{server.name} exited ({server.proc.returncode}) before ready:\n{err}")
            seen += chunk
    server.logs[0].write(seen)
    threading.Thread(target=drain, args=(stream, server.logs[0]), daemon=True).start()
    return int(m.group(1))


def free_port() -> int:
    """A port the kernel just handed out (nginx cannot report a port-0 bind; a clash is retried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(site: Path, work: Path, cpu: str, servers: list[Server]) -> Server:
    """nginx with one worker on a chosen port; ready once curl fetches a file and the master still lives."""
    root = work / "nginx"
    (root / "logs").mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(work=root, port=port, site=site))
        server = start_process(NGINX, ["nginx", "-p", str(root), "-c", str(root / "nginx.conf")], work, cpu,
                               servers, stdout_pipe=False)
        server.nginx = True
        server.port = port
        ok = subprocess.run(["curl", "-s", "-o", "/dev/null", "--retry", "30", "--retry-connrefused",
                             "--retry-delay", "0", "--retry-max-time", "10", f"http://127.0.0.1:{port}/1k.bin"],
                            check=False).returncode == 0
        if ok and server.proc.poll() is None and server.cpu_pids():
            return server
        stop(server)
        servers.remove(server)
    raise SocklabError("nginx did not start (3 attempts): see its error.log")


def start_all(engines: list[str], peers: list[str], site: Path, work: Path, cpu: str,
              servers: list[Server]) -> None:
    """Start every server once, in the order of the table, each waited for until it serves."""
    py = sys.executable
    for engine in engines:
        s = start_process(f"socklab {engine}", [py, "-m", "socklab", "http", "serve", str(site), "--port", "0",
                                                "--engine", engine, "--log-format", "none",
                                                "--max-connections", "10000", "--max-connections-per-ip", "0"],
                              work, cpu, servers, True)
        s.port = wait_line(s, r"127\.0\.0\.1:(\d+)", work)
        click.echo(f"   started {s.name} (pid {s.proc.pid}, port {s.port})")
    for peer in peers:
        if peer == "http.server":
            s = start_process("python -m http.server", [py, "-u", "-m", "http.server", "0", "--bind",
                                                        "127.0.0.1", "--directory", str(site)],
                              work, cpu, servers, True)
            s.port = wait_line(s, r"port (\d+)", work)
        elif peer == "aiohttp":
            s = start_process("aiohttp static", [py, str(SERVERS_DIR / "aiohttp_static.py"),
                                                 str(site)], work, cpu, servers, True)
            s.port = wait_line(s, r"ready (\d+)", work)
        elif peer == "nginx":
            start_nginx(site, work, cpu, servers)
        else:
            raise UsageError(f"--peers: unknown server {peer!r}; choose from: {', '.join(PEERS)}")
        click.echo(f"   started {servers[-1].name} (pid {servers[-1].proc.pid}, port {servers[-1].port})")


def stop(server: Server) -> None:
    """SIGTERM by pid, wait (SIGKILL after 5 s); for nginx also end any worker left behind its master."""
    proc = server.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in server.seen_workers:  # normally gone with the master; only if it died without them
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"nginx" in f.read():
                    os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass
    for log in server.logs:
        log.close()


# --- measuring -------------------------------------------------------------------------------------


def to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """req/s, MiB/s (wrk's units are binary), p99 ms, completed requests, socket errors, non-2xx."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    reqs = re.search(r"(\d+) requests in", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s|m|h)\b", text)
    xfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", text)
    scale = {"B": 1 / 1048576, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1048576.0}
    sock_err = re.search(r"Socket errors: (.*)", text)
    errors = {k: int(v) for k, v in re.findall(r"(connect|read|write|timeout) (\d+)",
                                               sock_err.group(1) if sock_err else "")}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(rps.group(1)) if rps else 0.0, "requests": int(reqs.group(1)) if reqs else 0,
            "mb_s": float(xfer.group(1)) * scale[xfer.group(2)] if xfer else 0.0,
            "p99_ms": to_ms(*p99.groups()) if p99 else None, "errors": errors,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def run_wrk(server: Server, file: str, load: WrkLoad, rnd: int, out: Path) -> dict[str, Any]:
    """One wrk run against server, with the server's CPU time read just before and just after."""
    if server.proc.poll() is not None:
        raise SocklabError(f"{server.name} died (exit {server.proc.returncode})")
    pids = server.cpu_pids()
    cpu0 = cpu_seconds(pids)
    res = subprocess.run(["taskset", "-c", load.client_cpu, "wrk", "-t1", f"-c{load.conns}",
                          f"-d{load.duration}s", "--latency", f"http://127.0.0.1:{server.port}/{file}"],
                         capture_output=True, text=True, timeout=load.duration + 60, check=False)
    cpu = cpu_seconds(pids) - cpu0
    (out / "wrk" / f"r{rnd}-{slug(server.name)}-{file}.txt").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise SocklabError(f"wrk failed on {server.name} {file}: {res.stderr.strip()}")
    rec = {"round": rnd, "server": server.name, "file": file, **parse_wrk(res.stdout), "cpu_s": cpu}
    # per request for 1 KiB (µs); a 1 MiB response is one MiB, so per request = per MiB (ms)
    rec["cpu_per"] = cpu / rec["requests"] * (1e6 if file == "1k.bin" else 1e3) if rec["requests"] else None
    return rec


# --- the table -------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    if digits == 0 or x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def table(runs: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Medians per server and file, and the median (min-max) of per-round ratios to nginx."""
    by = {(r["server"], r["file"], r["round"]): r for r in runs}
    lines = ["| server | 1 KiB req/s | vs nginx | 1 KiB p99 ms | CPU µs/req | 1 MiB MiB/s | vs nginx | "
             "1 MiB p99 ms | CPU ms/MiB | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        cells = [name]
        errs: dict[str, int] = {}
        for file, metric in (("1k.bin", "rps"), ("1m.bin", "mb_s")):
            mine = [r for r in runs if r["server"] == name and r["file"] == file]
            if not mine:
                cells += ["-"] * 4
                continue
            ratios = [r[metric] / ref[metric] for r in mine
                      if (ref := by.get((NGINX, file, r["round"]))) and ref[metric]]
            ratio = (f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
                     if ratios and name != NGINX else ("1.00" if ratios else "-"))
            p99s = [r["p99_ms"] for r in mine if r["p99_ms"] is not None]
            cpus = [r["cpu_per"] for r in mine if r["cpu_per"] is not None]
            cells += [fmt(statistics.median(r[metric] for r in mine)), ratio,
                      fmt(statistics.median(p99s), 2) if p99s else "-",
                      fmt(statistics.median(cpus), 1 if file == "1k.bin" else 3) if cpus else "-"]
            for r in mine:
                for k, v in r["errors"].items():
                    errs[k] = errs.get(k, 0) + v
                errs["non-2xx"] = errs.get("non-2xx", 0) + r["non2xx"]
        cells.append(", ".join(f"{k} {v}" for k, v in errs.items() if v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# --- main ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkLoad:
    """How wrk drives each server: seconds per run, connections, and the cores of servers and wrk."""

    duration: int = 10
    conns: int = 50
    server_cpu: str = "0"
    client_cpu: str = "1"


def _missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here, or None if it can."""
    if peer == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
        return "the aiohttp package is not installed"
    if peer == "nginx":
        for program in ("nginx", "curl"):
            if shutil.which(program) is None:
                return f"{program} is not installed"
    return None


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every server


def run_http_bench(engines: list[str], peers: list[str], rounds: int, load: WrkLoad, out: Path | None) -> str:
    """Start every server, run the paired rounds, stop them; print progress and return the Markdown table.

    ``out``: where ``table.md``, ``runs.jsonl`` and wrk's own output go (None: a temporary
    directory, removed at the end).
    """
    load_avg = Path("/proc/loadavg").read_text().split()[:3]
    head = (f"== machine: {os.cpu_count()} cores, load {' '.join(load_avg)} at start; {rounds} rounds x "
            f"{load.duration} s x {load.conns} connections per server and file")
    click.echo(head)
    servers: list[Server] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="socklab-bench-http.") as tmp:
        work = Path(tmp)
        results = out if out is not None else work / "results"
        (results / "wrk").mkdir(parents=True, exist_ok=True)
        site = work / "site"
        site.mkdir()
        (site / "1k.bin").write_bytes(os.urandom(1024))
        (site / "1m.bin").write_bytes(os.urandom(1048576))
        try:
            start_all(engines, peers, site, work, load.server_cpu, servers)
            from socklab.tools.bench.warm import warm_tcp  # every server meets one EOF before it is measured

            for srv in servers:
                click.echo(f"warm-up {srv.name}: {warm_tcp('127.0.0.1', srv.port)}", err=True)
            with open(results / "runs.jsonl", "w", encoding="utf-8") as jsonl:
                for rnd in range(1, rounds + 1):
                    shift = (rnd - 1) % len(servers)
                    order = servers[shift:] + servers[:shift]
                    for file in FILES:
                        for server in order:
                            rec = run_wrk(server, file, load, rnd, results)
                            runs.append(rec)
                            jsonl.write(json.dumps(rec) + "\n")
                            jsonl.flush()
                            unit = "µs/req" if file == "1k.bin" else "ms/MiB"
                            click.echo(f"  r{rnd} {file:7} {server.name:22} {rec['rps']:>9,.0f} req/s "
                                       f"{rec['mb_s']:>8,.1f} MiB/s  p99 {fmt(rec['p99_ms'], 2):>6} ms  "
                                       f"cpu {fmt(rec['cpu_per'], 1 if file == '1k.bin' else 3)} {unit}")
        finally:
            for server in reversed(servers):
                stop(server)
        names = [s.name for s in servers]
        note = ("vs nginx: median over rounds of (server's run / nginx's run of the same round and file), "
                "[min-max]; each round runs every server back to back in a rotated order, so host noise that "
                "is correlated in time hits both sides of a ratio.")
        text = "\n".join([head, "", *table(runs, names), "", note]) + "\n"
        (results / "table.md").write_text(text, encoding="utf-8")
    return text


def _words(value: str) -> list[str]:
    return [w for w in re.split(r"[,\s]+", value) if w]


@click.command("http")
@click.option("--engines", default="epoll,uvloop", show_default=True, metavar="LIST",
              help="socklab engines serving the files (comma- or space-separated).")
@click.option("--peers", default=",".join(PEERS), show_default=True, metavar="LIST",
              help="Other servers beside socklab: http.server, aiohttp, nginx (one worker). By default one "
                   "that is not installed is skipped with a note; named here, it is an error.")
@click.option("--duration", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="Seconds per wrk run.")
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Paired rounds: every server runs once per file in each, in a rotated order.")
@click.option("--conns", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="wrk connections.")
@click.option("--server-cpu", default="0", show_default=True, metavar="CPU", help="Core for the servers.")
@click.option("--client-cpu", default="1", show_default=True, metavar="CPU", help="Core for wrk.")
@click.option("--out", metavar="DIR", default=None, type=click.Path(file_okay=False),
              help="Keep the results in DIR: table.md, runs.jsonl and each wrk output.")
@click.pass_context
@run_cli
def http(ctx: click.Context, engines: str, peers: str, duration: int, rounds: int, conns: int, server_cpu: str,
         client_cpu: str, out: str | None) -> None:
    """Static files over HTTP/1.1 with wrk: socklab beside python -m http.server, aiohttp and nginx.

    Every server serves a 1 KiB and a 1 MiB file; wrk (one thread, --conns connections, on its own
    core) measures each in paired rounds. Columns: requests/s and p99 latency for 1 KiB, MiB/s for
    1 MiB, each as the median of the rounds and as a ratio to nginx's run of the SAME round (the
    machine's noise hits both sides of a ratio), and the server's CPU per request (µs) or per MiB
    (ms), which hardly moves with the machine's load. Needs wrk; nginx and aiohttp when compared.

    \b
      socklab bench http                                          # 5 rounds x 10 s, epoll and uvloop
      socklab bench http --engines epoll --duration 2 --rounds 2  # a short run
      socklab bench http --peers nginx --out http-results         # socklab vs nginx, results kept
    """
    for program in ("wrk", "taskset"):
        if shutil.which(program) is None:
            raise SocklabError(f"{program} is not installed: socklab bench http drives the servers with wrk, "
                               "pinned with taskset")
    engine_list, peer_list = _words(engines), _words(peers)
    from socklab.core.settings import ENGINE_NAMES

    for engine in engine_list:
        if engine not in ENGINE_NAMES:
            raise UsageError(f"--engines: unknown engine {engine!r}; choose from: {', '.join(ENGINE_NAMES)}")
    for peer in peer_list:
        if peer not in PEERS:
            raise UsageError(f"--peers: unknown server {peer!r}; choose from: {', '.join(PEERS)}")
    explicit = ctx.get_parameter_source("peers") is not click.core.ParameterSource.DEFAULT
    chosen = []
    for peer in peer_list:
        why = _missing(peer)
        if why is None:
            chosen.append(peer)
        elif explicit:
            raise SocklabError(f"--peers {peer}: {why}")
        else:
            click.echo(f"note: {peer} skipped ({why})", err=True)
    if not engine_list and not chosen:
        raise UsageError("nothing to measure: name --engines or --peers")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    text = run_http_bench(engine_list, chosen, rounds, WrkLoad(duration, conns, server_cpu, client_cpu),
                          Path(out) if out else None)
    click.echo("\n" + text, nl=False)
    if out:
        click.echo(f"== results in {out}")
