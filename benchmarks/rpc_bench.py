"""JSON-RPC calls/s and latency per engine beside xmlrpc.server (see socklab.apps.rpc.bench).

    .venv/bin/python benchmarks/rpc_bench.py --calls 6000        # == socklab rpc bench --calls 6000
"""

from socklab.apps.rpc.bench import main

if __name__ == "__main__":
    main()
