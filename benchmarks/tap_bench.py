#!/usr/bin/env python3
"""How much does the tap cost? Bulk throughput and small-message latency, direct vs through the tap.

The same as ``socklab bench tap`` (the code lives in ``socklab.tools.bench.tap``), kept as a
script so the commands in the docs run from a checkout:

    python benchmarks/tap_bench.py                      # full run: 1 GiB bulk, 20,000 round trips
    python benchmarks/tap_bench.py --smoke              # a few seconds
"""

from socklab.tools.bench.tap import tap

if __name__ == "__main__":
    tap.main(prog_name="benchmarks/tap_bench.py")
