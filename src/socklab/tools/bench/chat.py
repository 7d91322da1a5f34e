"""``socklab bench chat``: chat fan-out - N clients in one room, M messages/s in, deliveries/s and latency out.

Why this exists: a chat's cost is the fan-out - every message goes to every member, so 1,000
members and 100 messages/s are 100,000 deliveries/s. This starts a chat node in its own process
(``socklab chat serve``, optionally with ``--broker`` and a private redis-server), connects N line
clients from this process with one epoll loop, lets some of them send M messages/s in total (each
carrying its send time, CLOCK_MONOTONIC, which both processes share), and measures on every member:

- deliveries/s: MSG lines received by all members per second of the window;
- delivery latency p50/p99: from the send time in the message to its arrival, sampled on a
  subset of members (``--sample``) so that parsing does not become the bottleneck of the
  generator itself.

The generator owns raw sockets (one epoll loop of plain sockets): a load generator measures the
server, so it must not run on the code it measures.
"""

from __future__ import annotations

import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from socklab.cli.options import run_cli
from socklab.core.errors import SocklabError, UsageError
from socklab.tools.bench.procs import process_cpu_times

__all__ = ["Result", "chat", "run_load", "start_node"]

READY_TIMEOUT = 30.0
LAZY_SLICES = 50  # lazily read members are drained in this many slices per period: a slice takes ~1 ms,
# so a sampled member's line never waits long behind them (10 slices of 1,000 sockets took ~5-10 ms)

MSG_RE = re.compile(rb"MSG #bench \d+ [0-9.]+ \S+ say :t=(\d+) ")


@dataclass
class Result:
    engine: str
    broker: bool
    clients: int
    rate: float
    seconds: float
    sent: int = 0
    deliveries: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    dropped_clients: int = 0
    server_cpu: float = 0.0
    server_sys: float = 0.0  # the part of server_cpu spent in the kernel (send() and friends)
    load_avg: tuple[float, float] = (0.0, 0.0)  # the 1-minute load average when the window began and ended
    generator_cpu: float = 0.0
    join_s: float = 0.0  # first connect -> every client has its SYNC
    settle_s: float = 0.0  # then until the node has been quiet for 0.5 s (the presence backlog drained)
    join_cpu: float = 0.0  # server CPU seconds spent on the joins and the settling
    join_bytes: int = 0  # bytes every client received, in total, until the node was quiet

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]

    def row(self) -> dict[str, object]:
        return {"engine": self.engine, "broker": "redis" if self.broker else "sqlite", "clients": self.clients,
                "msgs_in_per_s": round(self.sent / self.seconds, 1),
                "deliveries_per_s": round(self.deliveries / self.seconds),
                "expected_per_s": round(self.sent / self.seconds * self.clients),
                "p50_ms": round(self.pct(50), 2), "p99_ms": round(self.pct(99), 2),
                "samples": len(self.latencies_ms), "dropped_clients": self.dropped_clients,
                "server_cpu_pct": round(self.server_cpu * 100), "server_sys_pct": round(self.server_sys * 100), "generator_cpu_pct": round(self.generator_cpu * 100),
                "server_cpu_us_per_delivery": round(self.server_cpu * self.seconds / max(1, self.deliveries) * 1e6, 2),
                "server_user_us_per_delivery": round(max(0.0, self.server_cpu - self.server_sys) * self.seconds
                                                     / max(1, self.deliveries) * 1e6, 2),
                "server_sys_us_per_delivery": round(self.server_sys * self.seconds / max(1, self.deliveries) * 1e6, 2),
                "load_avg": [round(x, 2) for x in self.load_avg],
                "join_s": round(self.join_s, 2), "settle_s": round(self.settle_s, 2),
                "join_server_cpu_s": round(self.join_cpu, 2), "join_mb_received": round(self.join_bytes / 1e6, 1)}


def proc_cpu(pid: int, system_only: bool = False) -> float:
    """CPU seconds (user + system, all threads; or system only) used so far by process ``pid``."""
    user, system = process_cpu_times(pid) or (0.0, 0.0)
    return system if system_only else user + system


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(tmp / "redis.sock")
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--dir", str(tmp),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"ready to accept connections" in line.lower():
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, f"unix://{sock}"
    stop(proc)
    raise SocklabError("redis-server did not start")


def start_node(engine: str, tmp: Path, clients: int, broker: str | None,
               store_sync: str = "full", pin: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    args = [sys.executable, "-m", "socklab", "chat", "serve", "--engine", engine, "--tcp-port", "0",
            "--http-port", "-1", "--store", ":memory:" if store_sync == "memory" else str(tmp / f"{engine}.db"), "--rate", "1000000", "--burst", "1000000",
            "--max-connections", str(clients + 100), "--max-per-address", "0",  # every client is 127.0.0.1
            "--default-room", "#bench", "--history-on-join", "0",
            "--backlog", "4096", "--workers", str(min(clients + 100, 2000)), "--store-sync", "normal" if store_sync == "memory" else store_sync]
    if broker:
        args += ["--broker", broker, "--node", f"bench-{engine}"]
    if pin:  # the node on core 0, this generator on core 1
        args = ["taskset", "-c", "0", *args]
        os.sched_setaffinity(0, {1})
    # the node's log (a line per client) goes to a file: a pipe nobody reads would fill and stall it
    with open(tmp / f"{engine}.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    assert proc.stdout is not None
    line = ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(READY_TIMEOUT):
            line = proc.stdout.readline().decode(errors="replace")
    m = re.search(r"tcp://127\.0\.0\.1:(\d+)", line)
    if not m:
        stop(proc)
        err = (tmp / f"{engine}.log").read_text(errors="replace")
        raise SocklabError(f"the chat node did not start within {READY_TIMEOUT:g} s: {line!r} {err[-2000:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its stdout pipe drained
    return proc, int(m.group(1))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def run_load(port: int, engine: str, clients: int, rate: float, seconds: float, senders: int, sample: int,
             broker: bool, server_pid: int, lazy_read: bool = True, join_timeout: float = 120.0) -> Result:
    """Connect ``clients`` members to the room, wait until all joined, then measure for ``seconds``."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    try:
        return _measure(sel, socks, port, engine, clients, rate, seconds, senders, sample, broker, server_pid,
                        lazy_read, join_timeout)
    finally:
        for s in socks:
            s.close()
        sel.close()


def _measure(sel: selectors.BaseSelector, socks: list[socket.socket], port: int, engine: str, clients: int,
             rate: float, seconds: float, senders: int, sample: int, broker: bool, server_pid: int, lazy_read: bool,
             join_timeout: float) -> Result:
    res = Result(engine, broker, clients, rate, seconds)
    join_cpu0 = proc_cpu(server_pid)
    t0 = time.monotonic()
    bufs: dict[int, bytearray] = {}
    ready = 0
    # 1. connect everybody and wait until each has joined (its SYNC line)
    for i in range(clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=join_timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"/nick {engine[:3]}{i}\n".encode())  # per engine: a shared broker remembers nicks
        s.setblocking(False)
        socks.append(s)
        bufs[s.fileno()] = bytearray()
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + join_timeout
    joined: set[int] = set()
    while len(joined) < clients and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            s = key.fileobj  # type: ignore[assignment]
            try:
                data = s.recv(262144)
            except BlockingIOError:
                continue
            except ConnectionError as exc:
                raise SocklabError(f"client {key.data} failed during setup: {exc}") from None
            if not data:
                raise SocklabError(f"client {key.data} closed during setup: {bytes(bufs[s.fileno()][-200:])!r}")
            res.join_bytes += len(data)
            if key.data in joined:
                continue
            b = bufs[s.fileno()]
            b += data
            if b"SYNC #bench" in b:
                joined.add(key.data)
                b.clear()
    ready = len(joined)
    res.join_s = time.monotonic() - t0
    if ready < clients:
        raise SocklabError(f"only {ready}/{clients} clients joined after {res.join_s:.1f} s "
                         f"(server CPU {proc_cpu(server_pid) - join_cpu0:.1f} s, {res.join_bytes / 1e6:.1f} MB received)")
    # drain the JOIN storm of the set-up (N joins x N members) until the node has been quiet for 0.5 s
    t1 = time.monotonic()
    give_up = t1 + 120
    while time.monotonic() < give_up:
        events = sel.select(0.5)
        if not events:
            break
        for key, _ in events:
            try:
                res.join_bytes += len(key.fileobj.recv(262144))  # type: ignore[union-attr]
            except BlockingIOError:
                pass
    res.settle_s = max(0.0, time.monotonic() - t1 - 0.5)
    res.join_cpu = proc_cpu(server_pid) - join_cpu0
    # 2. measure
    interval = 1.0 / rate
    for s in socks:  # room for ~50 ms of traffic between lazy reads
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
    cpu0, sys0, gen0 = proc_cpu(server_pid), proc_cpu(server_pid, True), self_cpu()
    load0 = os.getloadavg()[0]
    start = time.monotonic()
    end = start + seconds
    next_send = start
    sampled = set(range(0, clients, max(1, clients // sample))) if sample else set()
    # Members not sampled for latency are read lazily - a slice of them per turn, every one about
    # every 50 ms (at 100 messages/s; 0.5 s at 10/s: 10,000 members polled every 50 ms would be
    # 200,000 recv()s a second, mostly EAGAIN, taking the CPU the node needs) - so that the
    # generator spends its CPU on the clock, not on 100,000 recv()s a second.
    lazy_period = min(0.5, max(0.05, 5.0 / rate))
    lazy = [socks[i] for i in range(clients) if i not in sampled]
    if lazy_read:
        for s in lazy:
            sel.unregister(s)
    live_lazy = set(lazy)
    slice_len = max(1, -(-len(lazy) // LAZY_SLICES))
    turn = 0
    next_lazy = start
    k = 0
    pad = "x" * 40
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if lazy_read and now >= next_lazy:
            next_lazy = now + lazy_period / LAZY_SLICES
            for s in lazy[turn * slice_len:(turn + 1) * slice_len]:
                if s not in live_lazy:
                    continue
                while True:
                    try:
                        data = s.recv(262144)
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionError:
                        data = b""
                    if not data:
                        live_lazy.discard(s)
                        res.dropped_clients += 1
                        break
                    res.deliveries += data.count(b"MSG #bench")
            turn = turn + 1 if (turn + 1) * slice_len < len(lazy) else 0
        while next_send <= now and next_send < end:
            s = socks[k % senders]
            try:
                s.send(f"t={time.monotonic_ns()} {pad}\n".encode())
            except BlockingIOError:
                pass
            k += 1
            res.sent += 1
            next_send += interval
        wake = min(next_send, end, next_lazy) if lazy_read else min(next_send, end)
        for key, _ in sel.select(max(0.0, wake - time.monotonic())):
            s = key.fileobj  # type: ignore[assignment]
            try:
                data = s.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionError:
                data = b""
            if not data:
                sel.unregister(s)
                res.dropped_clients += 1
                continue
            if key.data in sampled:
                b = bufs[s.fileno()]
                b += data
                cut = b.rfind(b"\n") + 1
                if cut:
                    arrived = time.monotonic_ns()
                    chunk = bytes(b[:cut])
                    del b[:cut]
                    for m in MSG_RE.finditer(chunk):
                        res.latencies_ms.append((arrived - int(m.group(1))) / 1e6)
                    res.deliveries += chunk.count(b"MSG #bench")
            else:
                res.deliveries += data.count(b"MSG #bench")
    # Deliveries that arrive after the window are not counted (what did not make it in time, missed);
    # what already waits in a lazily read member's buffer arrived in time: counted.
    window = time.monotonic() - start
    if lazy_read:
        for s in live_lazy:
            try:
                while data := s.recv(262144):
                    res.deliveries += data.count(b"MSG #bench")
            except (BlockingIOError, InterruptedError, ConnectionError):
                pass
    res.server_cpu = (proc_cpu(server_pid) - cpu0) / window
    res.server_sys = (proc_cpu(server_pid, True) - sys0) / window
    res.load_avg = (load0, os.getloadavg()[0])
    res.generator_cpu = (self_cpu() - gen0) / window
    return res


@click.command("chat")
@click.option("--clients", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Members of the room, each one TCP connection.")
@click.option("--rate", type=click.FloatRange(0.1, 1e6), default=100.0, show_default=True,
              help="Messages per second into the room, in total.")
@click.option("--seconds", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Measured seconds per engine.")
@click.option("--senders", type=click.IntRange(1), default=10, show_default=True,
              help="How many of the clients send.")
@click.option("--sample", type=click.IntRange(0), default=50, show_default=True,
              help="Members whose delivery latencies are measured.")
@click.option("--engines", default="epoll", show_default=True, metavar="LIST",
              help="Comma-separated engines, one node each, one after the other.")
@click.option("--redis", is_flag=True, help="Run the node with a private redis-server as its broker.")
@click.option("--store-sync", type=click.Choice(["full", "normal", "memory"]), default="full", show_default=True,
              help="The node's SQLite synchronous mode (full: fsync per commit; memory: an in-memory store, "
                   "to see the cost of the disk).")
@click.option("--eager", is_flag=True,
              help="Read every member as soon as it is readable (costs the generator one recv per delivery).")
@click.option("--join-timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="Seconds every client has to join the room before the run gives up.")
@click.option("--pin", is_flag=True, help="Pin the node to core 0 and the load generator to core 1.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@run_cli
def chat(clients: int, rate: float, seconds: float, senders: int, sample: int, engines: str, redis: bool,
         store_sync: str, eager: bool, join_timeout: float, pin: bool, as_json: bool) -> None:
    """Chat fan-out: N members in one room, M messages/s in; deliveries/s and delivery latency out.

    Every message goes to every member, so 1,000 members and 100 messages/s are 100,000
    deliveries/s. Per engine a chat node runs in its own process; this process connects the
    members, lets --senders of them send --rate messages/s in total (each carrying its send time),
    and counts deliveries on every member; latency (send to arrival, p50/p99) is sampled on
    --sample members. Also shown: the node's CPU (and its kernel share) per delivery, the
    generator's own CPU, and how long the members took to join.

    \b
      socklab bench chat --clients 200 --rate 100 --seconds 3            # a short run
      socklab bench chat --clients 1000 --engines epoll,uvloop,threads --pin
      socklab bench chat --clients 200 --redis                           # through a Redis broker
    """
    from socklab.core.settings import ENGINE_NAMES

    engine_list = [e.strip() for e in engines.split(",") if e.strip()]
    for engine in engine_list:
        if engine not in ENGINE_NAMES:
            raise UsageError(f"--engines: unknown engine {engine!r}; choose from: {', '.join(ENGINE_NAMES)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if redis and not shutil.which("redis-server"):
        raise SocklabError("--redis needs redis-server on PATH")
    rows = []
    with tempfile.TemporaryDirectory(prefix="socklab-bench-chat-") as d:
        tmp = Path(d)
        redis_proc, url = start_redis(tmp) if redis else (None, None)
        try:
            for engine in engine_list:
                node, port = start_node(engine, tmp, clients, url, store_sync, pin)
                try:
                    res = run_load(port, engine, clients, rate, seconds, min(senders, clients), sample, redis,
                                   node.pid, not eager, join_timeout)
                finally:
                    stop(node)
                rows.append(res.row())
                if not as_json:
                    r = rows[-1]
                    click.echo(f"{r['engine']:>9} {r['broker']:>6}  clients={r['clients']}  in={r['msgs_in_per_s']}/s  "
                               f"deliveries={r['deliveries_per_s']}/s (of {r['expected_per_s']})  "
                               f"p50={r['p50_ms']} ms  p99={r['p99_ms']} ms  dropped={r['dropped_clients']}  "
                               f"server CPU {r['server_cpu_pct']}% (kernel {r['server_sys_pct']}%, "
                               f"{r['server_cpu_us_per_delivery']} us/delivery: {r['server_user_us_per_delivery']} "
                               f"user + {r['server_sys_us_per_delivery']} kernel)  "
                               f"generator CPU {r['generator_cpu_pct']}%  joined in {r['join_s']} s "
                               f"(+{r['settle_s']} s to settle, server CPU {r['join_server_cpu_s']} s, "
                               f"{r['join_mb_received']} MB received)  load average {res.load_avg[0]:.2f}-"
                               f"{res.load_avg[1]:.2f}")
        finally:
            if redis_proc is not None:
                stop(redis_proc)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
