"""rtvoice.server.looplag on a real event loop: samples arrive, a blocked loop shows up as lag."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents_vendor_testutil import wait_until
from rtvoice.server.looplag import LoopLagMonitor


async def test_samples_and_blocked_loop_lag() -> None:
    samples: list[float] = []
    monitor = LoopLagMonitor(samples.append, period_s=0.01)
    monitor.start()
    monitor.start()  # idempotent: one timer
    assert monitor.running
    await wait_until(lambda: monitor.samples >= 3)
    # block the loop for 200 ms: the next sample is at least that late (a busy machine only adds to it)
    before = monitor.samples
    time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop is the point
    await wait_until(lambda: monitor.samples > before)
    assert max(samples[before:]) >= 0.15
    monitor.stop()
    monitor.stop()
    assert not monitor.running
    n = monitor.samples
    await asyncio.sleep(0.05)
    assert monitor.samples == n  # stopped: no more samples


async def test_a_failing_sink_does_not_stop_sampling() -> None:
    calls = 0

    def sink(lag: float) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("sink broke")

    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx.get("exception")))
    monitor = LoopLagMonitor(sink, period_s=0.005)
    monitor.start()
    await wait_until(lambda: calls >= 3)
    monitor.stop()
    loop.set_exception_handler(None)
    assert calls >= 3
    assert errors and isinstance(errors[0], RuntimeError)


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period_s"):
        LoopLagMonitor(lambda lag: None, period_s=0)
