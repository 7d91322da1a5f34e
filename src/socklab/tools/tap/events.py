"""What the tap tells its observers: a relayed connection, a fault, and the observer interface.

Why this exists: the relay (TCP and UDP) produces these and the views (:mod:`.observe`: hexdump,
pcapng, recording) consume them; both sides import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from socklab.protocols.faults import Plan

__all__ = ["DOWNSTREAM", "UPSTREAM", "ConnInfo", "FaultEvent", "Observer"]

UPSTREAM, DOWNSTREAM = "upstream", "downstream"


@dataclass
class ConnInfo:
    """One relayed connection (or UDP flow) as observers see it."""

    index: int
    client: Any
    server: Any
    udp: bool
    started: float
    plan: Plan
    listen: Any = None


@dataclass
class FaultEvent:
    """One injected fault, as logged and marked in the capture."""

    ts: float
    conn: int
    direction: str
    kind: str
    text: str


class Observer:
    """What the tap reports; subclasses override what they need. Runs on the engine thread.

    ``wants_data = False`` says the observer ignores :meth:`data`, so fault-free connections may
    take the zero-copy path (the bytes never reach Python).
    """

    wants_data: bool = True

    def opened(self, conn: ConnInfo) -> None:
        """A connection was accepted and its upstream connected (or a UDP flow began)."""

    def data(self, conn: ConnInfo, direction: str, data: bytes) -> None:
        """``data`` was delivered in ``direction`` (after faults)."""

    def fault(self, conn: ConnInfo, direction: str, kind: str, text: str) -> None:
        """A fault fired."""

    def closed(self, conn: ConnInfo, direction: str, how: str) -> None:
        """The sender of ``direction`` finished: ``how`` is ``"fin"`` or ``"rst"``."""

    def close(self) -> None:
        """The tap stopped: flush files."""
