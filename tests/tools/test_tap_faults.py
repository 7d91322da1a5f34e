"""The seeded fault schedule, at full size and without sockets: toxicity, UDP loss, determinism."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socklab.core.errors import UsageError
from socklab.protocols.faults import DatagramFaults, Fault, FaultSchedule, GilbertElliott


def binomial_interval(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """The central ``level`` interval of Binomial(n, p), computed exactly from the pmf."""
    def logpmf(k: int) -> float:
        return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                + k * math.log(p) + (n - k) * math.log1p(-p))
    tail = (1 - level) / 2
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    lo_k, hi_k = max(0, int(mean - 8 * sd)), min(n, int(mean + 8 * sd) + 1)
    cdf, lo, hi = 0.0, lo_k, hi_k
    found_lo = False
    for k in range(lo_k, hi_k + 1):
        cdf += math.exp(logpmf(k))
        if not found_lo and cdf >= tail:
            lo, found_lo = k, True
        if cdf >= 1 - tail:
            hi = k
            break
    return lo, hi


def test_binomial_interval_helper_matches_normal_approximation() -> None:
    lo, hi = binomial_interval(1000, 0.3)
    assert 260 <= lo <= 265 and 335 <= hi <= 340


def test_toxicity_over_1000_connections_is_inside_its_99_percent_interval() -> None:
    sched = FaultSchedule([Fault("reset_peer", toxicity=0.3)], seed=12345)
    hits = sum(sched.plan(i).has("reset_peer") for i in range(1000))
    lo, hi = binomial_interval(1000, 0.3)
    assert lo <= hits <= hi


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_udp_loss_over_100000_datagrams_is_inside_its_99_percent_interval(seed: int) -> None:
    plan = FaultSchedule([Fault("loss", direction="upstream", probability=0.2)], seed=seed).plan(0)
    faults = DatagramFaults(plan.faults("upstream"))
    lost = sum(faults.decide(b"x").dropped for _ in range(100_000))
    lo, hi = binomial_interval(100_000, 0.2)
    assert lo <= lost <= hi


def test_gilbert_elliott_loss_is_bursty_with_the_stationary_rate() -> None:
    fault = Fault("loss", direction="upstream", p=0.05, r=0.25)
    faults = DatagramFaults(FaultSchedule([fault], seed=9).plan(0).faults("upstream"))
    drops = [faults.decide(b"x").dropped for _ in range(100_000)]
    rate = sum(drops) / len(drops)
    expected = GilbertElliott(0.05, 0.25).stationary_loss
    assert abs(rate - expected) < 0.02
    bursts = sum(1 for a, b in itertools.pairwise(drops) if b and not a)
    assert sum(drops) / bursts > 2.5  # mean burst 1/r = 4, far above independent loss's ~1.2


def test_same_seed_same_schedule_and_order_does_not_matter() -> None:
    faults = [Fault("latency", toxicity=0.5, latency=10, jitter=5), Fault("reset_peer", "upstream", 0.3)]
    a, b = FaultSchedule(faults, seed=7), FaultSchedule(faults, seed=7)
    forward = [a.plan(i).describe() for i in range(200)]
    backward = {i: b.plan(i).describe() for i in reversed(range(200))}
    assert forward == [backward[i] for i in range(200)]
    other = [FaultSchedule(faults, seed=8).plan(i).describe() for i in range(200)]
    assert other != forward
    da = DatagramFaults(FaultSchedule([Fault("loss", probability=0.3)], seed=5).plan(3).faults("downstream"))
    db = DatagramFaults(FaultSchedule([Fault("loss", probability=0.3)], seed=5).plan(3).faults("downstream"))
    assert [da.decide(b"x").dropped for _ in range(500)] == [db.decide(b"x").dropped for _ in range(500)]


def test_toxicity_zero_is_a_true_no_op() -> None:
    sched = FaultSchedule([Fault("loss", toxicity=0.0, probability=1.0), Fault("reset_peer", toxicity=0)], seed=1)
    for i in range(100):
        plan = sched.plan(i)
        assert not plan.active
        assert DatagramFaults(plan.faults("upstream")).decide(b"abc").copies == ((0.0, b"abc"),)


def test_direction_both_applies_each_way() -> None:
    plan = FaultSchedule([Fault("latency", "both", latency=5)], seed=1).plan(0)
    assert plan.has("latency", "upstream") and plan.has("latency", "downstream")


def test_datagram_faults_duplicate_corrupt_reorder_delay() -> None:
    def one(fault: Fault) -> DatagramFaults:
        return DatagramFaults(FaultSchedule([fault], seed=3).plan(0).faults("downstream"))
    assert len(one(Fault("duplicate", probability=1.0)).decide(b"a").copies) == 2
    corrupted = one(Fault("corrupt", probability=1.0)).decide(b"\x00" * 8).copies[0][1]
    assert sum(bin(b).count("1") for b in corrupted) == 1
    assert one(Fault("reorder", probability=1.0, delay=20)).decide(b"a").copies[0][0] == pytest.approx(0.02)
    assert one(Fault("delay", delay=30)).decide(b"a").copies[0][0] == pytest.approx(0.03)
    assert one(Fault("down")).decide(b"a").dropped


def test_fault_parsing_and_validation() -> None:
    f = Fault.parse("latency:upstream,latency=100,jitter=10,toxicity=0.5")
    assert (f.kind, f.direction, f.toxicity, f["latency"], f["jitter"]) == ("latency", "upstream", 0.5, 100, 10)
    assert Fault.from_dict(f.to_dict()) == f
    for bad in ("nosuch", "latency:sideways", "latency,speed=3", "latency,latency", "loss,probability=2",
                "bandwidth,rate=0", "latency,toxicity=1.5"):
        with pytest.raises(UsageError):
            Fault.parse(bad)


@pytest.mark.parametrize("spec", ["latency,latency=nan", "latency,jitter=inf", "latency,latency=1e12",
                                  "timeout,timeout=1e300", "reset_peer,timeout=3e9", "slow_close,delay=-inf",
                                  "slicer,delay=1e17", "delay,delay=nan", "bandwidth,rate=inf"])
def test_times_are_finite_and_bounded(spec: str) -> None:
    """NaN passed ``value < 0``, and a timer past 24.8 days overflows the poll timeout: the relay's
    loop died (OverflowError) on the old code, which accepted all of these."""
    with pytest.raises(UsageError):
        Fault.parse(spec)


@given(st.text(max_size=60))
def test_fault_parse_raises_only_usage_errors(text: str) -> None:
    try:
        Fault.parse(text)
    except UsageError:
        pass
