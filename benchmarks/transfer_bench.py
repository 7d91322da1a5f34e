#!/usr/bin/env python3
"""File-transfer benchmarks: native vs netcat vs a bare sendfile copy; TFTP lock-step vs windowed.

The same as ``socklab bench transfer`` (the code lives in ``socklab.tools.bench.transfer``), kept
as a script so the commands in the docs run from a checkout:

    .venv/bin/python benchmarks/transfer_bench.py native --size 256 --repeat 1
    .venv/bin/python benchmarks/transfer_bench.py tftp --size 4 --latency 0,1,5
    .venv/bin/python benchmarks/transfer_bench.py tftp-faults --size 10     # the 10 MiB loss matrix
"""

from socklab.tools.bench.transfer import transfer

if __name__ == "__main__":
    transfer.main(prog_name="benchmarks/transfer_bench.py")
