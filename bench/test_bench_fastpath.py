"""Fast-path micro-benchmark: the fast ``media`` parser against ``json.loads`` and the full parser, measured
interleaved in the same run (min over rounds), so the ratios hold on a busy machine.

Budgets: the whole fast parse (split, checks, strict base64 decode, the Media event) costs at most 0.8x the
full parser (``json.loads`` + field checks + decode + the event) and at most 2x a bare ``json.loads`` of the
same text (which alone decodes no base64, checks nothing and builds no event).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from interleaved import best_per_item, media_messages
from rtvoice.twilio import fastmedia, media

N = 2000
ROUNDS = 25
#: A shared CI machine can be busy for a whole measurement: re-measure (a fresh set of rounds) before failing.
ATTEMPTS = 3


def test_fast_media_parser_vs_json_loads() -> None:
    msgs = media_messages(N)
    assert all(fastmedia.parse_media_fast(m) == media.parse(m) for m in msgs[:50])
    cases: dict[str, Callable[[str], object]] = {
        "fast": fastmedia.parse,
        "full": media.parse,
        "json.loads": json.loads,
    }
    best = best_per_item(
        cases,
        msgs,
        rounds=ROUNDS,
        attempts=ATTEMPTS,
        good=lambda b: b["fast"] <= 0.8 * b["full"] and b["fast"] <= 2.0 * b["json.loads"],
    )
    us = {k: v * 1e6 for k, v in best.items()}
    print(
        f"\nper media message: fast {us['fast']:.2f} us, full {us['full']:.2f} us, "
        f"json.loads {us['json.loads']:.2f} us; full/fast = {best['full'] / best['fast']:.2f}x, "
        f"fast/json.loads = {best['fast'] / best['json.loads']:.2f}x"
    )
    assert best["fast"] <= 0.8 * best["full"], us
    assert best["fast"] <= 2.0 * best["json.loads"], us
