"""rtvoice.call.admission: the capacity and overload decisions, fed plain numbers (no loop, no sockets)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtvoice.call.admission import LAG_PERIOD_S, LAG_TIME_CONSTANT_S, Admission, LagAverage, Verdict


def test_no_limits_admits_everything() -> None:
    adm = Admission()
    assert all(adm.verdict(n, n) is Verdict.ADMIT for n in (0, 1, 10_000))
    for _ in range(100):
        adm.loop_lag(10.0)  # no lag limit: lag is averaged but never refuses
    assert adm.lag_s > 5.0
    assert adm.verdict(0) is Verdict.ADMIT


def test_capacity_counts_active_and_pending_calls() -> None:
    adm = Admission(max_calls=3)
    assert adm.verdict(2, 0) is Verdict.ADMIT
    assert adm.verdict(1, 1) is Verdict.ADMIT
    assert adm.verdict(3, 0) is Verdict.FULL
    assert adm.verdict(2, 1) is Verdict.FULL  # answered calls whose stream has not started yet count too
    assert adm.verdict(0, 3) is Verdict.FULL
    assert adm.verdict(2, 0) is Verdict.ADMIT  # a call ended: room again


@given(st.integers(0, 50), st.integers(0, 50), st.integers(1, 60))
def test_capacity_property(active: int, pending: int, cap: int) -> None:
    verdict = Admission(max_calls=cap).verdict(active, pending)
    assert (verdict is Verdict.ADMIT) == (active + pending < cap)


def test_one_long_pause_does_not_refuse_calls() -> None:
    """A single 200 ms stall (one GC, one slow handler) among healthy samples stays far below a 50 ms limit."""
    adm = Admission(lag_limit_s=0.050)
    for _ in range(40):
        adm.loop_lag(0.001)
    adm.loop_lag(0.200)
    assert not adm.overloaded
    assert adm.lag_s < 0.020
    assert adm.verdict(0) is Verdict.ADMIT


def test_sustained_lag_refuses_then_clears_with_hysteresis() -> None:
    adm = Admission(max_calls=100, lag_limit_s=0.050)
    samples_per_s = round(1 / LAG_PERIOD_S)
    # the loop stays 80 ms late: refused within about a second (after ~0.95 s the average passes 50 ms)
    n = 0
    while not adm.overloaded and n < 2 * samples_per_s:
        adm.loop_lag(0.080)
        n += 1
    assert adm.overloaded
    assert n < 1.5 * samples_per_s
    assert adm.verdict(1) is Verdict.OVERLOADED
    # lag falls to 30 ms: under the limit but above half of it, still refusing (no flapping at the edge)
    for _ in range(5 * samples_per_s):
        adm.loop_lag(0.030)
    assert adm.overloaded
    # healthy again: clears once the average is under 25 ms
    while adm.lag_s >= 0.025:
        assert adm.overloaded
        adm.loop_lag(0.0)
    assert not adm.overloaded
    assert adm.verdict(1) is Verdict.ADMIT


def test_overload_is_reported_before_capacity() -> None:
    adm = Admission(max_calls=1, lag_limit_s=0.010)
    for _ in range(200):
        adm.loop_lag(1.0)
    assert adm.verdict(5) is Verdict.OVERLOADED


def test_lag_average_weights() -> None:
    avg = LagAverage()
    assert avg.alpha == pytest.approx(1 - math.exp(-LAG_PERIOD_S / LAG_TIME_CONSTANT_S))
    assert avg.add(-0.5) == 0.0  # a timer that fired early is not negative lag
    for _ in range(1000):
        avg.add(0.040)
    assert avg.value_s == pytest.approx(0.040)


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=200))
def test_lag_average_stays_within_the_samples(samples: list[float]) -> None:
    avg = LagAverage()
    for s in samples:
        avg.add(s)
    assert 0.0 <= avg.value_s <= max(samples) + 1e-12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_calls": -1}, "max_calls"),
        ({"lag_limit_s": -0.001}, "lag_limit_s"),
        ({"lag_limit_s": float("nan")}, "lag_limit_s"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Admission(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("period", "tau"), [(0.0, 1.0), (0.05, 0.0), (-1.0, 1.0), (0.05, float("nan"))])
def test_bad_lag_average_settings_are_refused(period: float, tau: float) -> None:
    with pytest.raises(ValueError):
        LagAverage(period, tau)


def test_calls_dialled_count_while_they_ring_then_as_answered() -> None:
    """``POST /calls`` reserves capacity for the call it placed; its answer webhook prepares it (still one
    call); an unanswered one stops counting after ``DIALLING_TTL_S``."""
    import asyncio
    import time

    from rtvoice.agents.echo import EchoAgent
    from rtvoice.call.registry import DIALLING_TTL_S, CallRegistry, refusal
    from rtvoice.config import Settings

    reg = CallRegistry(Settings(max_calls=2, agent="echo"), agent_factory=EchoAgent)
    sid_a, sid_b = "CA" + "a" * 32, "CA" + "b" * 32
    reg.dialled(sid_a)
    assert reg.accepting is Verdict.ADMIT
    reg.dialled(sid_b, now=time.monotonic() - DIALLING_TTL_S - 1)  # rang out long ago: expired
    assert reg.accepting is Verdict.ADMIT
    reg.dialled(sid_b)
    assert reg.accepting is Verdict.FULL
    assert refusal(reg) is Verdict.FULL
    assert refusal(reg, answered_outbound=True) is None  # the callee picked up: never hung up for capacity

    async def answer() -> None:
        reg.prepare(sid_a, "+15550100001", "+15550100002", "outbound-api")
        assert reg.prepared_count == 1 and reg.accepting is Verdict.FULL  # one call, counted once
        await reg.shutdown()
        assert reg.accepting is Verdict.DRAINING
        assert refusal(reg, answered_outbound=True) is Verdict.DRAINING

    asyncio.run(answer())

