"""Server CPU per HTTP request: the load-independent figure behind the req/s of http_bench.sh.

Why this exists: on a shared, busy machine wall-clock requests/s swing 3x between runs, but the
CPU time the server spends per request hardly moves. This starts ``socklab http serve`` pinned to
one core, drives it with wrk (one thread, keep-alive) pinned to the other, and divides the server
process's user+system time (from /proc/PID/stat) over the run by the requests wrk completed.

    .venv/bin/python benchmarks/http_cpu.py                       # floor, epoll and uvloop, 1 KiB, 5 s
    .venv/bin/python benchmarks/http_cpu.py --engines epoll --file 1m.bin --seconds 3
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def measure(engine: str, site: str, file: str, seconds: int, conns: int, extra: list[str]) -> dict[str, float]:
    if engine == "floor":  # the plain selectors loop: what any Python server pays (http_floor.py)
        cmd = ["taskset", "-c", "0", sys.executable, os.path.join(os.path.dirname(__file__), "http_floor.py")]
    else:
        cmd = ["taskset", "-c", "0", sys.executable, "-m", "socklab", "http", "serve", site, "--port", "0",
               "--engine", engine, "--log-format", "none", "--max-connections", "10000", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the readiness line
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/{file}"
        subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c", str(conns), "-d1s", url],
                       check=True, capture_output=True)  # warm-up (imports, caches)
        u0, s0 = cpu_seconds(proc.pid)
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c", str(conns), f"-d{seconds}s", "--latency",
                              url], check=True, capture_output=True, text=True).stdout
        u1, s1 = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    m = re.search(r"(\d+) requests in", out)
    reqs = int(m.group(1)) if m else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out)
    return {"requests": reqs, "rps": rps, "user_us": (u1 - u0) / max(reqs, 1) * 1e6,
            "sys_us": (s1 - s0) / max(reqs, 1) * 1e6, "p99": p99.group(1) if p99 else "-"}  # type: ignore[dict-item]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="floor epoll uvloop",
                    help="socklab engines; 'floor' is benchmarks/http_floor.py, the plain selectors loop")
    ap.add_argument("--file", default="1k.bin")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="more options for socklab http serve (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as site:
        with open(os.path.join(site, "1k.bin"), "wb") as f:
            f.write(os.urandom(1024))
        with open(os.path.join(site, "1m.bin"), "wb") as f:
            f.write(os.urandom(1 << 20))
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        print(f"load {load}; wrk -t1 -c{args.connections} -d{args.seconds}s "
              f"/{args.file}")
        for engine in args.engines.split():
            for _ in range(args.repeat):
                r = measure(engine, site, args.file, args.seconds, args.connections, args.extra)
                print(f"  {engine:8} {r['rps']:>9,.0f} req/s  p99 {r['p99']:>8}  CPU/request: "
                      f"{r['user_us']:5.1f} us user + {r['sys_us']:5.1f} us sys = {r['user_us'] + r['sys_us']:5.1f} us"
                      f"  ({int(r['requests'])} requests)", flush=True)


if __name__ == "__main__":
    main()
