#!/usr/bin/env python3
"""Chat fan-out benchmark: N clients in one room, M messages/s in, deliveries/s and latency out.

The same as ``socklab bench chat`` (the code lives in ``socklab.tools.bench.chat``), kept as a
script so the commands in the docs run from a checkout:

    benchmarks/chat_bench.py --clients 1000 --rate 100 --seconds 10 --engines epoll,uvloop,threads
    benchmarks/chat_bench.py --clients 200 --rate 100 --seconds 3 --redis      # through Redis
"""

from socklab.tools.bench.chat import chat

if __name__ == "__main__":
    chat.main(prog_name="benchmarks/chat_bench.py")
