"""Replay a recorded session against any server and compare the answers with the recording.

Why this exists: a bug seen once through the tap (``--record session.jsonl``) becomes a regression
test: replay the client's bytes against a fixed server, another engine, or another
implementation, and see whether it answers the same bytes. For each recorded connection the
replayer sends the client's chunks in order, and before each chunk waits until as many answer
bytes arrived as the recording had at that point - so request/response protocols replay in step.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import UsageError
from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.core.transport import DatagramTransport, TimerHandle, Transport
from socklab.runtime.client import BlockingClient

__all__ = ["ReplayResult", "load_recording", "replay"]


@dataclass
class _Conn:
    index: int
    udp: bool = False
    steps: list[tuple[str, bytes]] = field(default_factory=list)  # ("up"|"down", data) or ("fin", b"")


@dataclass
class ReplayResult:
    """The outcome for one recorded connection."""

    index: int
    expected: bytes
    received: bytes

    @property
    def matches(self) -> bool:
        return self.expected == self.received

    def describe(self) -> str:
        if self.matches:
            return f"#{self.index}: same {len(self.received)} response bytes as recorded"
        n = next((i for i, (a, b) in enumerate(zip(self.expected, self.received, strict=False)) if a != b),
                 min(len(self.expected), len(self.received)))
        return (f"#{self.index}: response differs at byte {n} (recorded {len(self.expected)} bytes, got "
                f"{len(self.received)}): expected {self.expected[n:n + 24]!r}, got {self.received[n:n + 24]!r}")


def load_recording(path: str) -> list[_Conn]:
    """Read a ``--record`` file. Raises UsageError when it is not one."""
    conns: dict[int, _Conn] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                obj: dict[str, Any] = json.loads(line)
                c = conns.setdefault(int(obj["conn"]), _Conn(int(obj["conn"])))
                if obj.get("event") == "open":
                    c.udp = bool(obj.get("udp"))
                elif "data" in obj:
                    c.steps.append((obj["dir"], base64.b64decode(obj["data"])))
                elif obj.get("event") == "fin" and obj.get("dir") == "up":
                    c.steps.append(("fin", b""))
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot read recording {path!r}: {exc}") from exc
    return [conns[k] for k in sorted(conns)]


class _StreamReplay(Protocol):
    """One recorded TCP connection, replayed: its client chunks in order, the answers kept.

    Before each client chunk it waits until as many answer bytes arrived as the recording had at
    that point - or until the server has been silent for ``timeout`` seconds, or sent EOF - so a
    request/response protocol replays in step. At the end it waits for the rest of the answer (for
    EOF when the recorded client half-closed), under the same silence limit.
    """

    def __init__(self, steps: list[tuple[str, bytes]], timeout: float) -> None:
        self.steps, self.timeout = steps, timeout
        self.at = 0
        self.expected, self.received = bytearray(), bytearray()
        self.until_eof = ("fin", b"") in steps
        self.peer_done = self.gave_up = self.done = False
        self.timer: TimerHandle | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self._advance()

    def _enough(self) -> bool:
        if self.peer_done or self.gave_up:
            return True
        if self.at == len(self.steps) and self.until_eof:
            return False
        return len(self.received) >= len(self.expected)

    def _advance(self) -> None:
        if self.done:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.at < len(self.steps):
            kind, data = self.steps[self.at]
            if kind == "down":
                self.expected += data
            elif kind == "fin":
                self.transport.write_eof()
            elif not self._enough():
                self.timer = self.transport.call_later(self.timeout, self._silent)
                return
            else:
                self.transport.write(data)
                self.gave_up = False  # the next chunk waits afresh
            self.at += 1
        if self._enough():
            self.done = True
            self.transport.close()
        else:
            self.timer = self.transport.call_later(self.timeout, self._silent)

    def _silent(self) -> None:
        self.timer = None
        self.gave_up = True
        self._advance()

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._advance()  # enough now, or the silence timer starts again

    def eof_received(self) -> bool:
        self.peer_done = True
        self._advance()
        return True  # the recorded client may still have chunks to send

    def connection_lost(self, exc: BaseException | None) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()


class _DatagramReplay(DatagramProtocol):
    """One recorded UDP flow: each client datagram, then up to as many answers as were recorded
    after it (each within ``timeout`` seconds). Answers are length-prefixed, so boundaries count."""

    def __init__(self, steps: list[tuple[str, bytes]], timeout: float) -> None:
        self.steps, self.timeout = steps, timeout
        self.at = self.waiting = 0
        self.expected, self.received = bytearray(), bytearray()
        self.timer: TimerHandle | None = None
        self.error: BaseException | None = None
        self.done = False

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.at < len(self.steps):
            kind, data = self.steps[self.at]
            self.at += 1
            if kind != "up":
                continue
            self.transport.sendto(data)
            for later_kind, later in self.steps[self.at:]:
                if later_kind == "up":
                    break
                if later_kind == "down":
                    self.waiting += 1
                    self.expected += len(later).to_bytes(4, "big") + later
            if self.waiting:
                self.timer = self.transport.call_later(self.timeout, self._silent)
                return
        self.done = True
        self.transport.close()

    def _silent(self) -> None:
        self.timer = None
        self.waiting = 0  # give up on this datagram's other answers
        self._next()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.done or not self.waiting:
            return
        self.received += len(data).to_bytes(4, "big") + data
        self.waiting -= 1
        if self.waiting:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.transport.call_later(self.timeout, self._silent)
        else:
            self._next()

    def error_received(self, exc: BaseException) -> None:  # ICMP: nothing listens there
        if not self.done:
            self.error = exc
            self.done = True
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()


def replay(path: str, target: Endpoint, *, timeout: float = 5.0) -> list[ReplayResult]:
    """Replay every connection (and UDP flow) of the recording at ``path`` against ``target``.

    A client on the runtime's contract (:mod:`socklab.runtime.client`): the engine connects and
    translates OS errors; each connection is one of the protocols above, run on this thread while
    it waits for the connection's end (``background=False``).

    Raises:
        UsageError: not a recording; ConnectionRefused and friends: the target cannot be reached.
    """
    results = []
    with BlockingClient(ClientSettings(connect_timeout=timeout), background=False) as client:
        for conn in load_recording(path):
            if conn.udp:
                flow = client.open_datagram(target, functools.partial(_DatagramReplay, conn.steps, timeout))
                udp = flow.wait_closed()
                if udp.error is not None:
                    raise udp.error
                results.append(ReplayResult(conn.index, bytes(udp.expected), bytes(udp.received)))
                continue
            tcp = client.connect(target, functools.partial(_StreamReplay, conn.steps, timeout)).wait_closed()
            results.append(ReplayResult(conn.index, bytes(tcp.expected), bytes(tcp.received)))
    return results
