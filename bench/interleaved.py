"""Same-run timing for the micro-benchmarks: cases measured interleaved, minimum over rounds, re-measured on a
busy machine before a budget fails; and the Twilio ``media`` messages the parser benchmarks feed."""

from __future__ import annotations

import base64
import gc
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
C = TypeVar("C")


def media_messages(n: int) -> list[str]:
    """``n`` Twilio ``media`` messages in Twilio's key order, each with its own counters and payload."""
    out = []
    for i in range(n):
        payload = base64.b64encode(bytes((i * 7 + k) & 0xFF for k in range(160))).decode()
        out.append(
            f'{{"event":"media","sequenceNumber":"{i + 2}","media":{{"track":"inbound","chunk":"{i + 1}",'
            f'"timestamp":"{i * 20}","payload":"{payload}"}},"streamSid":"MZ{"ab" * 16}"}}'
        )
    return out


def per_item(fn: Callable[[T], object], items: Sequence[T]) -> float:
    """Seconds per call of ``fn`` over ``items`` (one pass)."""
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items)


def per_call(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of the zero-argument ``fn`` over ``calls`` calls (one pass)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _interleaved(
    make_cases: Callable[[], dict[str, C]],
    measure: Callable[[C], float],
    *,
    rounds: int,
    attempts: int,
    good: Callable[[dict[str, float]], bool],
) -> dict[str, float]:
    best: dict[str, float] = {}
    for _attempt in range(attempts):
        cases = make_cases()
        for name in cases:
            best.setdefault(name, float("inf"))
        gc.collect()
        gc.disable()
        try:
            for _ in range(rounds):
                for name, fn in cases.items():
                    best[name] = min(best[name], measure(fn))
        finally:
            gc.enable()
        if good(best):
            break
    return best


def best_per_item(
    cases: dict[str, Callable[[T], object]],
    items: Sequence[T],
    *,
    rounds: int,
    attempts: int,
    good: Callable[[dict[str, float]], bool],
) -> dict[str, float]:
    """Minimum seconds per item of every case, the cases interleaved within each round. Up to ``attempts`` fresh
    sets of rounds until ``good(best)`` holds (a shared CI machine can be busy for a whole measurement). The
    collector is kept out of the timed loops: it runs at points that depend on allocation counts, which differ
    between the cases, so the ratio would compare where a collection landed rather than the code."""
    return _interleaved(
        lambda: cases, lambda fn: per_item(fn, items), rounds=rounds, attempts=attempts, good=good
    )


def best_per_call(
    make_cases: Callable[[], dict[str, Callable[[], object]]],
    calls: int,
    *,
    rounds: int,
    attempts: int,
    good: Callable[[dict[str, float]], bool],
) -> dict[str, float]:
    """:func:`best_per_item` for zero-argument cases, each timed over ``calls`` calls per round.
    ``make_cases`` is called again for every attempt, so that stateful cases (a call's ticks) start over."""
    return _interleaved(make_cases, lambda fn: per_call(fn, calls), rounds=rounds, attempts=attempts, good=good)
