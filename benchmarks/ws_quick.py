"""Before/after for socklab's WebSocket echo: an old source tree against the current one, interleaved.

Why this exists: issue 19 asks for the WebSocket change to be measured before and after in the
same run. `socklab bench ws` compares engines with aiohttp; this script reuses its C generator
(``loadgen --ws``) and runner, but pairs each engine of the current tree with the same engine
started from OLD_SRC (a copy of ``src`` with the old files put back), taking turns of --slice-ms
inside one generator run, fresh processes per round, medians. Every server is warmed alike.

    cp -r src /tmp/ws_old/ && git show HEAD~1:src/socklab/apps/http/websocket.py \\
        > /tmp/ws_old/src/socklab/apps/http/websocket.py
    python benchmarks/ws_quick.py --old-src /tmp/ws_old/src --size 256 --connections 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from socklab.tools.bench.procs import ServerSpec, pick_cores
from socklab.tools.bench.runner import Load, raise_nofile, run_echo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-src", required=True, help="the old tree's src directory (PYTHONPATH for 'old:' rows)")
    ap.add_argument("--engines", default="asyncio,uvloop,epoll")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slice-ms", type=float, default=200.0)
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    script = str(Path(__file__).resolve().parent / "ws" / "socklab_ws.py")
    specs: list[ServerSpec] = []
    for engine in args.engines.split(","):
        old = ServerSpec(f"old:{engine}", "reference",
                         ("env", f"PYTHONPATH={os.path.abspath(args.old_src)}", sys.executable, script,
                          "--engine", engine, "--port", "0"))
        specs += [old, ServerSpec(engine, "socklab", (sys.executable, script, "--engine", engine, "--port", "0"),
                                  engine=engine, reference=old.name)]
    raise_nofile()
    cores, gen_cpu, pinning = pick_cores()
    load = Load(connections=args.connections, size=args.size, duration=args.duration, warmup=1.0, proto="ws")
    print(f"{pinning}; load average {os.getloadavg()}", file=sys.stderr)
    results = run_echo(specs, load, repeats=args.repeat, server_cores=cores, gen_cpu=gen_cpu,
                       progress=lambda m: print(m, file=sys.stderr), interleave=True, slice_ms=args.slice_ms)
    rows = {r.name: r for r in results}
    out = []
    for engine in args.engines.split(","):
        new, old = rows[engine], rows[f"old:{engine}"]
        ratio = new.rps / old.rps if old.rps else 0.0
        out.append({"engine": engine, "old": round(old.rps), "new": round(new.rps), "ratio": round(ratio, 2),
                    "old_user_us": old.server_user, "new_user_us": new.server_user,
                    "gen_cpu": new.loadgen_cpu, "error": new.error or old.error})
        print(f"{engine:8} old {old.rps:>10,.0f}  new {new.rps:>10,.0f} msg/s  x{ratio:.2f}  "
              f"gen CPU {new.loadgen_cpu:.0f}%  {new.error or old.error or ''}")
    print(f"load average after: {os.getloadavg()}")
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
