"""The bench command's plumbing (timing budgets themselves are asserted in bench/, not here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtvoice.bench import dsp as benchmarks
from rtvoice.cli import main


def test_speech_like_frames_are_distinct_and_loud_enough() -> None:
    x = benchmarks.speech_like(2.0, 8000)
    frames = benchmarks.frames_of(x, 160)
    assert len(frames) == 100
    assert len({f.tobytes() for f in frames}) == len(frames)
    assert 1000 < float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < 20000


def test_rows_and_table_shape() -> None:
    best = dict.fromkeys(benchmarks.dsp_cases(10)[0], 100.0)
    rows = benchmarks.dsp_rows(best)
    assert {r.name for r in rows if r.reference == "ceiling"} == {"decode", "8k->24k", "24k->8k"}
    table = benchmarks.format_table(rows)
    assert "ratio" in table.splitlines()[0]
    assert len(table.splitlines()) == len(rows) + 2


def test_failed_budget_gives_exit_code_1(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(benchmarks.CEILINGS, "decode", 0.001)  # no real decode takes 1 ps
    assert main(["bench", "dsp", "--frames", "10", "--rounds", "1", "--attempts", "1"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert "decode vs ceiling" in captured.err


def test_bench_default_suite_and_json(capsys) -> None:
    main(["bench", "--frames", "10", "--rounds", "1", "--attempts", "1", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "ours_ns", "reference", "reference_ns", "ratio", "budget", "passed"} <= set(rows[0])
