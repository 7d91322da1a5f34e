"""socklab tap: a relay that shows, records and breaks what passes between a client and a server.

Why this exists: tcpdump shows packets but needs root and cannot break anything; toxiproxy breaks
connections but shows nothing. The tap does both from user space: it relays TCP or UDP from a
listen address to a target, prints a hexdump or text view, writes a pcapng capture that
Wireshark/tshark decode (with each injected fault as a packet comment), injects faults per
direction with a seeded schedule, takes new faults at run time (reaching open connections too)
through a small control port or toxiproxy's HTTP API (:mod:`.api`: its clients and curl drive the
tap), and records sessions to replay against any server.

The library surface is stable::

    from socklab.tools.tap import Tap, Fault

    with Tap(listen=("127.0.0.1", 0), target=("127.0.0.1", 8080), udp=False,
             faults=[Fault("limit_data", direction="downstream", bytes=1000)], seed=1) as tap:
        ...  # connect to ("127.0.0.1", tap.port)

Those keywords are fields of :class:`TapSettings`, the one settings object ``socklab tap run`` builds
from its options too; ``Tap(settings, observers=..., tracer=...)`` takes it as it is.
"""

from __future__ import annotations

from typing import Any

from socklab.protocols.faults import FAULT_KINDS, Fault, FaultSchedule
from socklab.tools.tap.relay import ConnInfo, FaultEvent, Observer, Tap, TapSettings

__all__ = ["FAULT_KINDS", "ConnInfo", "Fault", "FaultEvent", "FaultSchedule", "Observer", "Tap", "TapSettings",
           "tap"]


def __getattr__(name: str) -> Any:
    if name == "tap":  # the click group, imported only when the CLI asks for it
        from socklab.tools.tap.cli import tap

        return tap
    raise AttributeError(name)
