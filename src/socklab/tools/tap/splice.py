"""The tap's zero-copy path: a fault-free, unobserved connection's bytes moved by the kernel.

Why this exists: a relay with nothing to show or break should cost almost nothing. The moving
itself is the engine's capability ``Transport.splice_to`` (``splice(2)``: socket -> pipe ->
socket, see ``socklab/engines/_splice.py``); this module is the tap's side of it: one pump per
direction, telling the relay and its observers when a direction ends. Where the engine cannot
splice (not a reactor engine), the relay goes back to copying through Python.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socklab.core.transport import SpliceHandle, Transport
    from socklab.tools.tap.tcp import _TcpRelay

__all__ = ["_SplicePump"]


class _SplicePump:
    """One direction of a fault-free, unobserved connection, moved by ``src.splice_to(dst)``."""

    def __init__(self, relay: _TcpRelay, direction: str, src: Transport, dst: Transport) -> None:
        self.relay, self.direction, self.src, self.dst = relay, direction, src, dst
        self.handle: SpliceHandle | None = None
        self.eof = False
        self.done = False

    @property
    def bytes(self) -> int:
        return self.handle.moved if self.handle is not None else 0

    def start(self) -> None:
        if self not in self.relay.pumps:  # the relay left the zero-copy path already (see below)
            return
        self.handle = self.src.splice_to(self.dst, self._done, self._failed)
        if self.handle is None:  # this engine cannot: copy through Python, as with a fault
            self.relay._leave_splice()

    def _done(self) -> None:
        self.eof = self.done = True  # the engine passed the FIN on
        for obs in self.relay.tap.observers:
            obs.closed(self.relay.info, self.direction, "fin")
        self.relay.splice_done()

    def _failed(self, exc: BaseException) -> None:
        self.relay.splice_failed(self, exc)  # type: ignore[arg-type]

    def take_over(self) -> builtins.bytes:
        """Leave the zero-copy path: stop, and return the bytes still in flight (to be sent on)."""
        if self.handle is None:
            return b""
        left = self.handle.take_over()
        self.eof = self.eof or getattr(self.handle, "eof", False)
        return left

    def close(self) -> None:
        self.done = True
        if self.handle is not None:
            self.handle.close()
