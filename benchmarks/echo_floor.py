"""The floor for the echo benchmark: the least a Python epoll server can do per request.

Why this exists: the target "best engine >= 0.85x the C server" asks how close Python can come to
C. This file answers the prior question - how close can *any* Python code come? - with the
smallest correct echo loop we could write: `select.epoll` directly (no `selectors` layer), one
dict lookup per event, `recv_into` one reused buffer, `send` from it. No idle timeout, no limits,
no write buffer (a short send is simply lost - fine for ping-pong, wrong for a real server). It
then measures a socklab engine interleaved with it (the same `loadgen --vs-port` turns that
`bench echo` uses) and prints the median ratio. A ratio near 1.00 means the engine's per-request
cost is already the interpreter's own: what is left between it and C cannot be taken out in
Python.

    .venv/bin/python benchmarks/echo_floor.py                     # epoll, 1 KiB x 20, 8 runs of 3 s
    .venv/bin/python benchmarks/echo_floor.py --engine poll --runs 12
    .venv/bin/python benchmarks/echo_floor.py --serve             # just the floor server
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import sys


def serve() -> None:
    ls = socket.create_server(("127.0.0.1", 0), backlog=1024)
    ls.setblocking(False)
    lfd = ls.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    view = memoryview(bytearray(65536))
    poll = ep.poll
    print(f"floor listening on tcp://127.0.0.1:{ls.getsockname()[1]}", flush=True)
    while True:
        for fd, _ in poll(-1, 64):
            if fd == lfd:
                try:
                    conn, _addr = ls.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[conn.fileno()] = conn
                ep.register(conn.fileno(), select.EPOLLIN)
                continue
            sock = socks[fd]
            try:
                n = sock.recv_into(view)
                if n:
                    sock.send(view[:n])
                    continue
            except OSError:
                pass
            ep.unregister(fd)
            del socks[fd]
            sock.close()


def compare(engine: str, runs: int, load_size: int, connections: int, duration: float) -> None:
    from socklab.tools.bench.procs import ServerProcess, ServerSpec, pick_cores, socklab_command
    from socklab.tools.bench.runner import Load, run_loadgen_pair

    server_cores, gen_cpu, pinning = pick_cores()
    floor = ServerSpec("floor", "reference", (sys.executable, __file__, "--serve"))
    mine = ServerSpec(engine, "socklab", socklab_command(engine), engine=engine)
    load = Load(connections=connections, size=load_size, duration=duration, warmup=0.5)
    print(f"{engine} against the floor: {load_size:,} B x {connections} connections, {runs} runs of "
          f"{duration:g} s, interleaved in 200 ms turns ({pinning})")
    ratios = []
    for i in range(runs):
        with ServerProcess(floor, cores=server_cores) as fs, ServerProcess(mine, cores=server_cores) as ms:
            a, b = (fs, ms) if i % 2 == 0 else (ms, fs)
            ra, rb = run_loadgen_pair(a, b, load, cpu=gen_cpu)
        f_rps, m_rps = (ra["rps"], rb["rps"]) if a is fs else (rb["rps"], ra["rps"])
        ratios.append(m_rps / f_rps)
        print(f"  run {i + 1}: floor {f_rps:9,.0f} req/s   {engine} {m_rps:9,.0f} req/s   ratio {ratios[-1]:.3f}")
    print(f"{engine} / floor: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help="only run the floor server (prints its port)")
    p.add_argument("--engine", default="epoll", help="socklab engine to compare (default: epoll)")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args()
    if args.serve:
        serve()
    else:
        compare(args.engine, args.runs, args.size, args.connections, args.duration)


if __name__ == "__main__":
    main()
