"""Fault descriptions and their seeded schedule: what the tap breaks, decided without any I/O.

Why this exists: a fault-injecting proxy is only useful when its faults are *reproducible* and
*accurate*. Everything random the tap does is decided here, from one seed, so the decision can be
tested at full size (1,000 connections, 100,000 datagrams) without sockets, and a run with the same
seed makes the same decisions whatever order the connections interleave in: every connection and
every datagram flow gets its own random stream derived from ``(seed, index, fault)``.

The fault set follows toxiproxy's (latency, bandwidth, slicer, limit_data, reset_peer, timeout,
slow_close, down) and adds datagram faults (loss - independent or bursty Gilbert-Elliott -,
duplicate, reorder, corrupt, delay). Each fault applies to one direction - ``upstream`` (client to
server), ``downstream`` (server to client) or ``both`` - and has a *toxicity*: the probability that
it applies to a given connection (or UDP flow). Toxicity 0 is exactly no fault: the fault is not
even consulted.

Units are toxiproxy's wherever a name is shared, so a toxic means the same here and there: times in
milliseconds except the slicer's ``delay`` (microseconds, as toxiproxy's), sizes in bytes, the
bandwidth ``rate`` in KB/s (1 KB = 1000 bytes; before issue 17 it was bytes per second),
probabilities in 0..1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import UsageError

__all__ = ["DIRECTIONS", "FAULT_KINDS", "DatagramDecision", "DatagramFaults", "Fault", "FaultSchedule",
           "GilbertElliott", "Plan"]

DIRECTIONS = ("upstream", "downstream", "both")
# Timers longer than a day serve no test, and past 24.8 days a poll timeout overflows (the
# relay's loop would die): times are bounded. The slicer's delay is in microseconds.
MAX_TIME_MS = 86_400_000.0
_TIMES = ("latency", "jitter", "timeout", "delay")

# kind -> (transport, {param: default}, one-line meaning)
FAULT_KINDS: dict[str, tuple[str, dict[str, float], str]] = {
    "latency": ("tcp", {"latency": 0.0, "jitter": 0.0}, "delay every chunk by latency +- jitter ms"),
    "bandwidth": ("tcp", {"rate": 1000.0}, "limit throughput to rate KB/s (1 KB = 1000 bytes, as toxiproxy)"),
    "slicer": ("tcp", {"average_size": 64.0, "size_variation": 0.0, "delay": 0.0},
               "cut writes into ~average_size-byte pieces, delay MICROseconds apart (as toxiproxy)"),
    "limit_data": ("tcp", {"bytes": 0.0}, "forward exactly bytes bytes, then close the connection"),
    "reset_peer": ("tcp", {"timeout": 0.0}, "after timeout ms, reset (RST) the connection"),
    "timeout": ("tcp", {"timeout": 0.0}, "stop all data; close after timeout ms (0 = hang forever)"),
    "slow_close": ("tcp", {"delay": 0.0}, "delay the close (FIN) by delay ms"),
    "down": ("any", {}, "refuse connections (RST at once) / drop every datagram"),
    "loss": ("udp", {"probability": 0.0, "p": 0.0, "r": 1.0, "loss_good": 0.0, "loss_bad": 1.0},
             "drop datagrams: independently with probability, or bursty (Gilbert-Elliott) when p > 0"),
    "duplicate": ("udp", {"probability": 0.0}, "send a datagram twice"),
    "reorder": ("udp", {"probability": 0.0, "delay": 10.0}, "hold a datagram back delay ms so later ones pass it"),
    "corrupt": ("udp", {"probability": 0.0}, "flip one random bit of a datagram"),
    "delay": ("udp", {"delay": 0.0, "jitter": 0.0}, "delay every datagram by delay +- jitter ms"),
}


class Fault:
    """One fault: what, which direction, how often, with which parameters.

    Args:
        kind: one of :data:`FAULT_KINDS` (``"latency"``, ``"limit_data"``, ``"loss"``...).
        direction: ``"upstream"`` (client to server), ``"downstream"`` (server to client) or ``"both"``.
        toxicity: probability that a connection (or UDP flow) gets this fault, 0..1.
        name: a unique name for the control API (default ``kind_direction``).
        **params: the kind's parameters (see :data:`FAULT_KINDS`); missing ones take their defaults.

    Raises:
        UsageError: unknown kind, direction or parameter, or a value out of range.
    """

    def __init__(self, kind: str, direction: str = "downstream", toxicity: float = 1.0,
                 name: str | None = None, **params: float) -> None:
        if kind not in FAULT_KINDS:
            raise UsageError(f"unknown fault {kind!r}; choose one of: {', '.join(FAULT_KINDS)}")
        if direction not in DIRECTIONS:
            raise UsageError(f"fault direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        if not 0.0 <= float(toxicity) <= 1.0:
            raise UsageError(f"toxicity must be within 0..1, not {toxicity}")
        defaults = FAULT_KINDS[kind][1]
        unknown = set(params) - set(defaults)
        if unknown:
            raise UsageError(f"fault {kind} has no parameter {', '.join(sorted(unknown))}; "
                             f"it takes: {', '.join(defaults) or 'none'}")
        values = {k: float(params.get(k, v)) for k, v in defaults.items()}
        for key, value in values.items():
            if not math.isfinite(value):
                raise UsageError(f"fault {kind}: {key} must be a finite number, not {value}")
            limit = MAX_TIME_MS * (1000 if (kind, key) == ("slicer", "delay") else 1)
            if key in _TIMES and value > limit:
                raise UsageError(f"fault {kind}: {key} is at most {limit:.0f} "
                                 f"({'microseconds' if limit > MAX_TIME_MS else 'ms'}: one day)")
            if value < 0:
                raise UsageError(f"fault {kind}: {key} cannot be negative")
            if key in ("probability", "p", "r", "loss_good", "loss_bad") and value > 1:
                raise UsageError(f"fault {kind}: {key} is a probability (0..1)")
        if kind == "bandwidth" and values["rate"] <= 0:
            raise UsageError("fault bandwidth: rate must be positive (KB/s, 1 KB = 1000 bytes)")
        if kind == "slicer" and values["average_size"] < 1:
            raise UsageError("fault slicer: average_size must be at least 1 byte")
        self.kind = kind
        self.direction = direction
        self.toxicity = float(toxicity)
        self.name = name or f"{kind}_{direction}"
        self.params: dict[str, float] = values

    @property
    def transport(self) -> str:
        """``"tcp"``, ``"udp"`` or ``"any"``: where this fault makes sense."""
        return FAULT_KINDS[self.kind][0]

    def applies_to(self, direction: str) -> bool:
        return self.direction in (direction, "both")

    def __getitem__(self, key: str) -> float:
        return self.params[key]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (the control API speaks it)."""
        return {"kind": self.kind, "direction": self.direction, "toxicity": self.toxicity,
                "name": self.name, **self.params}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """The inverse of :meth:`to_dict`. Raises UsageError on bad input."""
        d = dict(data)
        try:
            kind = str(d.pop("kind"))
        except KeyError:
            raise UsageError("a fault needs a 'kind'")
        direction = str(d.pop("direction", "downstream"))
        toxicity = float(d.pop("toxicity", 1.0))
        name = d.pop("name", None)
        try:
            params = {str(k): float(v) for k, v in d.items()}
        except (TypeError, ValueError) as exc:
            raise UsageError(f"fault {kind}: parameters must be numbers ({exc})")
        return cls(kind, direction, toxicity, None if name is None else str(name), **params)

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse the CLI form ``KIND[:DIRECTION][,key=value...]``, e.g. ``latency:downstream,latency=100``.

        ``toxicity=`` and ``name=`` are accepted among the keys.

        Raises:
            UsageError: the text does not describe a fault.
        """
        head, _, rest = text.partition(",")
        kind, _, direction = head.partition(":")
        values: dict[str, Any] = {"kind": kind.strip(), "direction": direction.strip() or "downstream"}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise UsageError(f"bad fault parameter {item!r} in {text!r}: write key=value")
            values[key.strip()] = value.strip()
        return cls.from_dict(values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fault) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"Fault({self.kind!r}, direction={self.direction!r}, toxicity={self.toxicity:g}" + \
               (f", {params})" if params else ")")


@dataclass
class Plan:
    """The faults one connection (or UDP flow) got, per direction, each with its own random stream."""

    index: int
    active: dict[str, list[tuple[Fault, random.Random]]] = field(default_factory=dict)

    def faults(self, direction: str) -> list[tuple[Fault, random.Random]]:
        return self.active.get(direction, [])

    def has(self, kind: str, direction: str | None = None) -> bool:
        dirs = (direction,) if direction else ("upstream", "downstream")
        return any(f.kind == kind for d in dirs for f, _ in self.faults(d))

    def get(self, kind: str, direction: str) -> Fault | None:
        for f, _ in self.faults(direction):
            if f.kind == kind:
                return f
        return None

    def describe(self) -> list[str]:
        return [f"{f.kind} {d}" for d in ("upstream", "downstream") for f, _ in self.faults(d)]


class FaultSchedule:
    """Decides, from one seed, which connection gets which fault.

    Args:
        faults: the faults in force (changed later with :meth:`set_faults`).
        seed: the seed; ``None`` draws one at random (see :attr:`seed` to replay the run).

    A connection's plan depends only on ``(seed, index, fault name)``: the same seed gives the same
    schedule however connections interleave.
    """

    def __init__(self, faults: Iterable[Fault] = (), seed: int | None = None) -> None:
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.faults: list[Fault] = []
        self.set_faults(faults)

    def set_faults(self, faults: Iterable[Fault]) -> None:
        """Replace the faults in force; names must be unique. Raises UsageError."""
        new = list(faults)
        names = [f.name for f in new]
        if len(set(names)) != len(names):
            raise UsageError(f"fault names must be unique: {names}")
        self.faults = new

    def rng(self, *key: object) -> random.Random:
        """A random stream for ``key`` under this seed (string seeding is stable across runs)."""
        return random.Random("/".join(str(k) for k in (self.seed, *key)))

    def plan(self, index: int) -> Plan:
        """The faults connection (or flow) number ``index`` gets."""
        plan = Plan(index)
        for fault in self.faults:
            if fault.toxicity <= 0.0:
                continue  # toxicity 0: a true no-op, not even a random draw
            rng = self.rng(index, fault.name)
            if fault.toxicity < 1.0 and rng.random() >= fault.toxicity:
                continue
            for direction in ("upstream", "downstream"):
                if fault.applies_to(direction):
                    plan.active.setdefault(direction, []).append((fault, self.rng(index, fault.name, direction)))
        return plan


class GilbertElliott:
    """The two-state bursty-loss channel (Gilbert 1960, Elliott 1963).

    In state *good* a datagram is lost with probability ``loss_good``, in *bad* with ``loss_bad``;
    after each datagram the channel moves good -> bad with probability ``p`` and bad -> good with
    ``r``. Mean burst length is ``1/r``; the stationary loss rate is
    ``(r*loss_good + p*loss_bad) / (p + r)``.
    """

    def __init__(self, p: float, r: float, loss_good: float = 0.0, loss_bad: float = 1.0) -> None:
        self.p, self.r, self.loss_good, self.loss_bad = p, r, loss_good, loss_bad
        self.bad = False

    def lose(self, rng: random.Random) -> bool:
        lost = rng.random() < (self.loss_bad if self.bad else self.loss_good)
        if self.bad:
            self.bad = rng.random() >= self.r
        else:
            self.bad = rng.random() < self.p
        return lost

    @property
    def stationary_loss(self) -> float:
        if self.p + self.r == 0:
            return self.loss_good
        return (self.r * self.loss_good + self.p * self.loss_bad) / (self.p + self.r)


@dataclass(frozen=True)
class DatagramDecision:
    """What to do with one datagram: send ``copies`` (each ``(delay_seconds, bytes)``), and why."""

    copies: tuple[tuple[float, bytes], ...]
    notes: tuple[str, ...] = ()

    @property
    def dropped(self) -> bool:
        return not self.copies


class DatagramFaults:
    """Applies one direction's datagram faults of one flow, datagram by datagram (pure logic).

    Args:
        faults: the ``(fault, rng)`` pairs of :meth:`Plan.faults` for this direction.
    """

    def __init__(self, faults: list[tuple[Fault, random.Random]]) -> None:
        self.faults = faults
        self._ge: dict[str, GilbertElliott] = {}
        for f, _ in faults:
            if f.kind == "loss" and f["p"] > 0:
                self._ge[f.name] = GilbertElliott(f["p"], f["r"], f["loss_good"], f["loss_bad"])

    def decide(self, data: bytes) -> DatagramDecision:
        """Decide the fate of one datagram."""
        if not self.faults:
            return DatagramDecision(((0.0, data),))
        delay, copies, notes = 0.0, 1, []
        for fault, rng in self.faults:
            kind = fault.kind
            if kind == "down":
                return DatagramDecision((), ("down: dropped",))
            if kind == "loss":
                ge = self._ge.get(fault.name)
                lost = ge.lose(rng) if ge is not None else rng.random() < fault["probability"]
                if lost:
                    return DatagramDecision((), ("loss: dropped" + (" (burst)" if ge else ""),))
            elif kind == "corrupt":
                if data and rng.random() < fault["probability"]:
                    bit = rng.randrange(len(data) * 8)
                    buf = bytearray(data)
                    buf[bit // 8] ^= 1 << (bit % 8)
                    data = bytes(buf)
                    notes.append(f"corrupt: flipped bit {bit}")
            elif kind == "duplicate":
                if rng.random() < fault["probability"]:
                    copies += 1
                    notes.append("duplicate: sent twice")
            elif kind == "reorder":
                if rng.random() < fault["probability"]:
                    delay += fault["delay"] / 1000.0
                    notes.append(f"reorder: held back {fault['delay']:g} ms")
            elif kind == "delay":
                jitter = fault["jitter"]
                ms = fault["delay"] + (rng.uniform(-jitter, jitter) if jitter else 0.0)
                delay += max(0.0, ms) / 1000.0
        return DatagramDecision(tuple((delay, data) for _ in range(copies)), tuple(notes))
