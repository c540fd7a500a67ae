"""Conversation-quality benchmark (issue 6), reduced matrix for CI, and the echo canceller's per-frame cost.

The reduced matrix (24 scenarios: echo delay 20/300 ms x ERL 0/6/30 dB x no noise / white noise at 20 dB SNR
x caller silent / barging in 1.5 s into an 8 s answer) runs through the real Call, the simulated Twilio's
playout emulator and the line model on a simulated clock, under the three policies. The targets of the
issue are asserted for rtvoice's echo-aware gate; the comparison asserts that it beats the plain VAD. The full
matrix (babble noise, more delays, ERLs and barge-in times) is ``python -m rtvoice bench quality``.
"""

from __future__ import annotations

from pathlib import Path

from rtvoice.bench import quality as bq


def test_quality_targets_on_the_reduced_matrix(tmp_path: Path) -> None:
    scenarios = bq.matrix(reduced=True)
    outcomes = bq.run_all(scenarios)
    summary = bq.summarize(outcomes)
    # no cost line: the canceller's timing is measured and asserted by its own test below
    table = bq.format_markdown(summary, len(scenarios), None, bq.false_by_noise(outcomes))
    print("\n" + table)
    bq.plot(outcomes, summary, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").stat().st_size > 10_000
    ea, vad = summary["echo-aware"], summary["vad"]
    # the comparison: the plain VAD interrupts itself on the echo, the echo-aware gate does not
    assert vad["false_per_100"] is not None and vad["false_per_100"] >= 50
    # issue 6 targets for rtvoice's gate
    assert ea["false_per_100"] == 0.0, table  # ERL >= 6 dB, delays 20-300 ms
    assert ea["caught_pct"] is not None and ea["caught_pct"] >= 99.0, table
    assert ea["reaction_p95_ms"] is not None and ea["reaction_p95_ms"] <= 120.0, table
    assert ea["truncation_max_ms"] is not None and ea["truncation_max_ms"] <= 20.0, table
    assert ea["erle_db"] is not None and ea["erle_db"] >= 15.0, table


def test_canceller_cost_per_frame() -> None:
    # min over rounds, interleaved with a numpy block-NLMS reference doing comparable work in the same run
    cost = min((bq.canceller_cost(n_frames=400, rounds=5) for _ in range(3)), key=lambda c: c["canceller_us"])
    print(
        f"\necho canceller {cost['canceller_us']:.2f} µs/frame, whole gate {cost['gate_us']:.2f} µs/frame, "
        f"numpy {cost['reference_us']:.1f} µs/frame"
    )
    # the measurement is of the adapting path (no double talk froze the filter)
    assert cost["double_talk_frames"] == 0
    assert cost["reference_us"] / cost["canceller_us"] >= 2.0
    # the gate adds the ledger position, the reference ring and the history bits: a small fraction on top
    assert cost["gate_us"] <= 2.0 * cost["canceller_us"] + 1.0
    assert cost["gate_us"] <= 25.0  # generous ceiling for a shared machine; the budget is 10 µs
