"""rtvoice.agents.ticker: one timer per loop runs every vendor link's watchdog."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agents_vendor_testutil import wait_until
from rtvoice.agents.ticker import Ticker, ticker_for


async def test_runs_every_subscriber_until_removed() -> None:
    ticker = Ticker(asyncio.get_running_loop(), period_s=0.005)
    seen: dict[str, list[float]] = {"a": [], "b": []}

    def a(now: float) -> None:
        seen["a"].append(now)

    def b(now: float) -> None:
        seen["b"].append(now)

    ticker.add(a)
    ticker.add(a)  # idempotent
    ticker.add(b)
    assert len(ticker) == 2
    await wait_until(lambda: len(seen["b"]) >= 3)
    assert seen["a"] == seen["b"]  # one tick, both callbacks, the same loop time
    assert seen["a"] == sorted(seen["a"]) and len(set(seen["a"])) == len(seen["a"])
    ticker.remove(a)
    n_a, n_b = len(seen["a"]), len(seen["b"])
    await wait_until(lambda: len(seen["b"]) >= n_b + 2)
    assert len(seen["a"]) == n_a
    ticker.remove(b)
    ticker.remove(b)  # not subscribed: no error
    assert len(ticker) == 0 and ticker._handle is None  # the timer stops with the last subscriber


async def test_a_raising_or_self_removing_callback_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticker = Ticker(asyncio.get_running_loop(), period_s=0.005)
    counts = {"bad": 0, "once": 0, "good": 0}

    def bad(now: float) -> None:
        counts["bad"] += 1
        raise RuntimeError("broken link")

    def once(now: float) -> None:
        counts["once"] += 1
        ticker.remove(once)
        ticker.remove(bad)  # removing another subscriber during the tick skips it from then on

    def good(now: float) -> None:
        counts["good"] += 1

    with caplog.at_level(logging.ERROR, logger="rtvoice.agents"):
        ticker.add(bad)
        ticker.add(once)
        ticker.add(good)
        await wait_until(lambda: counts["good"] >= 3)
    assert counts == {"bad": 1, "once": 1, "good": counts["good"]}
    assert "watchdog callback" in caplog.text and "broken link" in caplog.text
    ticker.remove(good)


async def test_one_ticker_per_loop() -> None:
    t = ticker_for()
    assert ticker_for(asyncio.get_running_loop()) is t
    other = asyncio.new_event_loop()
    try:
        assert ticker_for(other) is not t
    finally:
        other.close()


def test_period_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="period_s"):
            Ticker(loop, 0.0)
    finally:
        loop.close()


def test_a_closed_loop_and_its_ticker_are_freed() -> None:
    import gc
    import weakref

    loop = asyncio.new_event_loop()
    ticker = weakref.ref(ticker_for(loop))
    loop_ref = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert loop_ref() is None and ticker() is None
