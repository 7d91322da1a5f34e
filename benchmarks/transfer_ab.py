#!/usr/bin/env python3
"""Before/after of ``socklab send`` alone: two source trees' senders, one receiver, interleaved.

Why this exists: ``transfer_bench.py native`` compares socklab with netcat and a bare copy; a change
to the *sender* needs its own A/B, with everything else held still - the same receiver (the NEW
tree's ``receive --once``), the same page-cached file, the two senders alternating (A B, then B A)
so that a slow minute on a shared machine hits both. The old tree comes from ``git archive``::

    mkdir /tmp/old && git archive <rev> | tar -x -C /tmp/old
    python -m compileall -q /tmp/old/src src        # both trees byte-compiled (PYTHONDONTWRITEBYTECODE)
    .venv/bin/python benchmarks/transfer_ab.py /tmp/old/src src --size 1024 --rounds 10
    .venv/bin/python benchmarks/transfer_ab.py /tmp/old/src src --size 1024 --rounds 6 --disk

The rate is the sender's own (its JSON ``rate``: bytes over its session's time); the CPU is the
sender process's user + system time (``wait4``) minus the same tree's ``send --help`` start-up, in
seconds per GiB. "paired" is the median of the per-round new/old rate ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable


def _reap(proc: subprocess.Popen[str]) -> float:
    """Wait for ``proc`` (its pipes already read) and return its CPU seconds."""
    deadline = time.monotonic() + 300
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{proc.args!r} did not finish")
        time.sleep(0.005)


def _env(src: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(src).resolve()))


def _startup(src: str) -> float:
    proc = subprocess.Popen([PY, "-m", "socklab", "send", "--help"], stdout=subprocess.DEVNULL, text=True,
                            env=_env(src))
    return _reap(proc)


def _once(path: Path, dest: Path, sender: str, receiver: str, disk: bool) -> tuple[float, float]:
    """One transfer: (the sender's rate in bytes/s, the sender process's CPU seconds)."""
    args = [PY, "-m", "socklab", "receive", "--port", "0", "--once", "--quiet", "--dir", str(dest), "--overwrite"]
    rx = subprocess.Popen(args if disk else [*args, "--discard"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=_env(receiver))
    assert rx.stdout is not None and rx.stderr is not None
    ready = re.search(r":(\d+) \(engine", rx.stdout.readline())
    if ready is None:
        raise SystemExit(f"the receiver did not start: {rx.stderr.read()}")
    tx = subprocess.Popen([PY, "-m", "socklab", "send", str(path), "--to", f"127.0.0.1:{ready.group(1)}", "--json",
                           "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(sender))
    assert tx.stdout is not None and tx.stderr is not None
    out, err = tx.stdout.read(), tx.stderr.read()
    cpu = _reap(tx)
    rx.stdout.read()
    rx.stderr.read()
    _reap(rx)
    for stream in (tx.stdout, tx.stderr, rx.stdout, rx.stderr):
        stream.close()
    if tx.returncode != 0:
        raise SystemExit(f"send failed ({tx.returncode}): {err}")
    summary = json.loads(out)
    for f in dest.glob("*"):
        f.unlink()
    return float(summary["rate"]), cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", help="the old tree's src directory (PYTHONPATH for its sender)")
    p.add_argument("new", help="the new tree's src directory (its sender, and the receiver of both)")
    p.add_argument("--size", type=int, default=1024, help="MiB")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--disk", action="store_true", help="the receiver writes to disk (default: --discard)")
    p.add_argument("--tmp", default=None, help="directory for the test file")
    args = p.parse_args()
    trees = {"old": args.old, "new": args.new}
    startup = {who: _startup(src) for who, src in trees.items()}
    rates: dict[str, list[float]] = {"old": [], "new": []}
    cpus: dict[str, list[float]] = {"old": [], "new": []}
    gib = args.size / 1024
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path, dest = Path(tmp) / "f.bin", Path(tmp) / "dest"
        dest.mkdir()
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(args.size):
                f.write(block)
        with open(path, "rb") as f:  # page-cached: every sender reads it from memory
            while f.read(8 << 20):
                pass
        for src in trees.values():  # one unmeasured round each (first touch of the page cache, imports)
            _once(path, dest, src, args.new, args.disk)
        for r in range(args.rounds):
            for who in ("old", "new") if r % 2 == 0 else ("new", "old"):
                rate, cpu = _once(path, dest, trees[who], args.new, args.disk)
                rates[who].append(rate)
                cpus[who].append(max(0.0, cpu - startup[who]) / gib)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"send A/B, {args.size} MiB, receiver {'to disk' if args.disk else 'discarding'}, {args.rounds} "
          f"rounds, load average at the end {load}")
    for who in ("old", "new"):
        print(f"  {who}: {statistics.median(rates[who]) / 1e6:6.0f} MB/s (median), sender CPU "
              f"{statistics.median(cpus[who]):.2f} s/GiB; each: " + " ".join(f"{x / 1e6:.0f}" for x in rates[who]))
    pairs = [n / o for n, o in zip(rates["new"], rates["old"], strict=True)]
    print(f"  new/old: paired median {statistics.median(pairs):.2f} (each {' '.join(f'{x:.2f}' for x in pairs)}), "
          f"ratio of medians {statistics.median(rates['new']) / statistics.median(rates['old']):.2f}")


if __name__ == "__main__":
    main()
