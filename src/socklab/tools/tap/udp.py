"""The tap's UDP relay: one upstream socket per client address, so replies find their way back.

Why this exists: UDP has no connections, so the tap makes "flows": a datagram from a new client
address opens an upstream socket connected to the target (a client endpoint of
:func:`socklab.runtime.client.open_datagram`), and the target's answers on it go back to that client. Each flow draws its faults from the seeded schedule, like a TCP connection.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from socklab.core.protocol import DatagramProtocol
from socklab.core.sockets import Endpoint
from socklab.core.transport import DatagramTransport
from socklab.protocols.faults import DatagramFaults
from socklab.runtime.client import open_datagram
from socklab.tools.tap.events import DOWNSTREAM, UPSTREAM, ConnInfo

if TYPE_CHECKING:
    from socklab.tools.tap.relay import Tap

__all__ = ["_UdpFront"]


class _UdpFlow(DatagramProtocol):
    """One client address: its own upstream socket (so replies find their way back) and faults."""

    def __init__(self, front: _UdpFront, addr: Any, index: int) -> None:
        tap = front.tap
        self.front, self.tap, self.addr = front, tap, addr
        plan = tap.schedule.plan(index)
        self.up = DatagramFaults(plan.faults(UPSTREAM))
        self.down = DatagramFaults(plan.faults(DOWNSTREAM))
        self.info = ConnInfo(index, addr, tap.target_address, True, time.time(), plan)
        self.last = time.monotonic()
        # a UDP client like any other (socklab.runtime.client): a socket connected to the target
        handle = open_datagram(Endpoint(tap.target.host, tap.target.port), lambda: self, engine=tap.engine,
                               tracer=tap.tracer)
        self.info.server = handle.remote
        self.endpoint: DatagramTransport = handle.transport  # the reactor ran connection_made already
        for obs in tap.observers:
            obs.opened(self.info)

    def replan(self) -> None:
        """The tap's faults changed: this flow meets the new set from its next datagram on."""
        plan = self.tap.schedule.plan(self.info.index)
        self.up = DatagramFaults(plan.faults(UPSTREAM))
        self.down = DatagramFaults(plan.faults(DOWNSTREAM))
        self.info.plan = plan

    def datagram_received(self, data: bytes, addr: Any) -> None:  # from the target
        self.last = time.monotonic()
        self.tap.stats["datagrams_down"] += 1
        self._forward(self.down, DOWNSTREAM, data)

    def from_client(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.tap.stats["datagrams_up"] += 1
        self._forward(self.up, UPSTREAM, data)

    def _forward(self, faults: DatagramFaults, direction: str, data: bytes) -> None:
        decision = faults.decide(data)
        for note in decision.notes:
            self.tap.log_fault(self.info, direction, note.partition(":")[0], note)
        for delay, payload in decision.copies:
            if delay <= 0:
                self._send(direction, payload)
            else:
                self.tap.engine.call_later(delay, lambda p=payload: self._send(direction, p))

    def _send(self, direction: str, data: bytes) -> None:
        if direction == UPSTREAM:
            self.endpoint.sendto(data)
        elif self.front.out is not None:
            self.front.out.sendto(data, self.addr)
        for obs in self.tap.observers:
            obs.data(self.info, direction, data)

    def error_received(self, exc: BaseException) -> None:
        self.tap.log_fault(self.info, UPSTREAM, "error", f"target: {exc}")

    def close(self) -> None:
        self.endpoint.close()


class _UdpFront(DatagramProtocol):
    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.out: DatagramTransport | None = None
        self.flows: dict[Any, _UdpFlow] = {}

    def connection_made(self, transport: DatagramTransport) -> None:
        self.out = transport
        if self.tap.settings.udp_flow_timeout > 0:
            self.tap.engine.call_later(min(5.0, self.tap.settings.udp_flow_timeout), self._sweep)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self.flows[addr] = _UdpFlow(self, addr, next(self.tap._counter))
            self.tap.stats["connections"] += 1
        flow.from_client(data)

    def _sweep(self) -> None:
        limit = self.tap.settings.udp_flow_timeout
        old = time.monotonic() - limit
        for addr, flow in list(self.flows.items()):
            if flow.last < old:
                flow.close()
                del self.flows[addr]
        self.tap.engine.call_later(min(5.0, limit), self._sweep)

    def connection_lost(self, exc: BaseException | None) -> None:
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()
