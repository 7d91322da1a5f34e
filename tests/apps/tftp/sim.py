"""A deterministic lossy network for the sans-I/O TFTP machines: virtual clock, seeded faults.

Each datagram is dropped with probability ``loss``, duplicated with ``dup``, and delayed by
``latency`` plus a random jitter (jitter larger than the gap between packets reorders them).
Timers are events on the same virtual clock, so a 10 MiB transfer with thousands of timeouts
runs in a second of real time and replays identically from its seed.
"""

from __future__ import annotations

import heapq
import io
import random
from dataclasses import dataclass, field
from typing import Any

from socklab.protocols import tftp

CLIENT, SERVER, SERVER_TID = ("10.0.0.1", 5000), ("10.0.0.2", 69), ("10.0.0.2", 40000)


@dataclass
class Faults:
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0  # probability that a datagram is held back behind later ones
    latency: float = 0.001
    jitter: float = 0.0


@dataclass
class Result:
    data: bytes
    client: Any
    server: Any
    elapsed: float
    lost: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    reordered: dict[str, int] = field(default_factory=dict)


class Net:
    def __init__(self, seed: int, up: Faults, down: Faults) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.q: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.faults = {"up": up, "down": down}  # up: client -> server
        self.lost = {"up": 0, "down": 0}
        self.reordered = {"up": 0, "down": 0}
        self.sent = {"up": 0, "down": 0}
        self.timer_gen: dict[str, int] = {}

    def push(self, when: float, kind: str, item: Any) -> None:
        self.seq += 1
        heapq.heappush(self.q, (when, self.seq, kind, item))

    def send(self, direction: str, packets: list[tuple[bytes, Any]], src: Any) -> None:
        f = self.faults[direction]
        for data, dst in packets:
            self.sent[direction] += 1
            if self.rng.random() < f.loss:
                self.lost[direction] += 1
                continue
            copies = 2 if self.rng.random() < f.dup else 1
            for _ in range(copies):
                delay = f.latency + self.rng.random() * f.jitter
                if self.rng.random() < f.reorder:
                    self.reordered[direction] += 1
                    delay += 3 * f.latency
                self.push(self.now + delay, "dgram", (data, src, dst))


def run_transfer(payload: bytes, *, upload: bool, seed: int = 1, up: Faults | None = None,
                 down: Faults | None = None, options: dict[str, str] | None = None, timeout: float = 0.05,
                 max_retries: int = 50, server_max_window: int = 64, limit: float = 3600.0,
                 mode: str = "octet") -> Result:
    """Simulate one get (``upload=False``) or put of ``payload`` through the faulty network."""
    net = Net(seed, up or Faults(), down or Faults())
    options = dict(options or {})
    src = io.BytesIO(payload)
    sink = io.BytesIO()
    base = tftp.TransferOptions(timeout=timeout)
    request = tftp.Request("file", mode, options, write=upload)
    client: Any
    if upload:
        client = tftp.Sender(src.read, base, max_retries=max_retries)
    else:
        client = tftp.Receiver(sink.write, base, max_retries=max_retries)
    machines: dict[Any, Any] = {CLIENT: client}
    last_gen: dict[Any, int] = {}

    def after(addr: Any, out: list[tuple[bytes, Any]]) -> None:
        m = machines[addr]
        net.send("up" if addr == CLIENT else "down", out, addr)
        if m.timer_generation != last_gen.get(addr):
            last_gen[addr] = m.timer_generation
            if not m.finished:
                net.push(net.now + m.timeout, "timer", (addr, m.timer_generation))

    after(CLIENT, client.request(request, SERVER))
    while net.q:
        when, _, kind, item = heapq.heappop(net.q)
        net.now = when
        if when > limit:
            break
        if kind == "timer":
            addr, gen = item
            m = machines[addr]
            if gen == m.timer_generation and not m.finished:
                after(addr, m.timer_expired())
            continue
        data, src_addr, dst = item
        if dst == SERVER:
            if SERVER_TID in machines:
                continue  # a retransmitted request: the transfer already runs
            req = tftp.parse_packet(data)
            assert isinstance(req, tftp.Request)
            run, oack = tftp.negotiate(req, tsize=None if upload else len(payload), max_windowsize=server_max_window,
                                       default_timeout=timeout)
            run = tftp.TransferOptions(run.blksize, timeout, run.windowsize, run.tsize)
            if upload:
                srv: Any = tftp.Receiver(sink.write, run, peer=src_addr, max_retries=max_retries)
                machines[SERVER_TID] = srv
                after(SERVER_TID, srv.start(tftp.OAck(oack) if oack else None))
            else:
                srv = tftp.Sender(src.read, run, peer=src_addr, max_retries=max_retries)
                machines[SERVER_TID] = srv
                after(SERVER_TID, srv.start_after_oack(tftp.OAck(oack)) if oack else srv.start())
            continue
        m = machines.get(dst)
        if m is None:
            continue
        after(dst, m.datagram_received(data, src_addr))
        if all(x.finished for x in machines.values()) and len(machines) == 2:
            # keep delivering for a while (the receiver dallies) but stop once the queue drains
            pass
    server = machines.get(SERVER_TID)
    return Result(sink.getvalue(), client, server, net.now, net.lost, net.sent, net.reordered)
