"""CI-sized load run (issue "Calls per core"): 60 echo calls for ~8 s against one pinned server process.

The real figures come from ``python -m rtvoice bench load`` (docs/performance.md). This run checks that the
whole machinery works end to end (generator, pinned server, latency probe, /proc sampling, report and plot)
and that a modest load is carried cleanly: every frame the generator sent reached the server, no frame was
dropped or late, no connection was lost, and the p99 of server-added latency stays within a generous budget
(the machine is shared; the 5 ms target is the benchmark's, not this test's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rtvoice.bench import load as bench_load

CALLS = 60
P99_BUDGET_MS = 25.0  # generous: the 5 ms target is the benchmark's, this machine is shared


def _echo_args(out: Path, **overrides: object) -> argparse.Namespace:
    """``bench load`` arguments for one echo step (server and generators on separate cores when there are two)."""
    import os

    args = argparse.Namespace(
        modes=["echo"],
        ramp=[CALLS],
        duration=6.0,
        warmup=2.0,
        budget_ms=P99_BUDGET_MS,
        calls_per_generator=400,
        server_core=0,
        other_core=1,
        keep_going=True,
        profile_at=set(),
        no_fastpath=False,
        native=False,
        threads=False,
        out=str(out),
    )
    for name, value in overrides.items():
        setattr(args, name, value)
    if (os.cpu_count() or 1) < 2:
        args.server_core = args.other_core = 0
    return args


def test_ci_sized_echo_load(tmp_path: Path) -> None:
    args = _echo_args(tmp_path)
    # Up to three attempts for the latency budget only (another process on the server's core stalls every
    # call at once); every attempt must be clean: all frames received, none dropped or late, nothing lost.
    p99s = []
    for _ in range(3):
        rows = bench_load.run_load(args)
        report = bench_load.write_report(rows, args)
        print("\n" + report)
        assert len(rows) == 1
        row = rows[0]
        assert row.connected == CALLS, report
        assert row.frames_sent >= CALLS * 50 * 5, report  # ~50 frames/s per call over the window
        assert row.media_out > 0, "the echo agent answered nothing"
        assert row.dropped == 0 and row.late == 0 and row.lost == 0, report
        assert 0 < row.rss_per_call_kb < 4096, report
        p99s.append(row.p99_ms)
        if row.p99_ms <= P99_BUDGET_MS:
            break
    assert min(p99s) <= P99_BUDGET_MS, f"p99 server-added latency per attempt: {p99s} ms"
    assert (tmp_path / "load.md").read_text().startswith("# rtvoice load benchmark")
    assert (tmp_path / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_socket_floor_runs_at_the_frame_rate() -> None:
    """The socket floor (``measure_floor``): its processes connect, frames flow at 50 per second per call, and a
    CPU cost per frame is measured."""
    import os

    args = argparse.Namespace(server_core=0, other_core=1, warmup=1.0, duration=2.0)
    if (os.cpu_count() or 1) < 2:
        args.server_core = args.other_core = 0
    res = bench_load.measure_floor("pcmu", 40, args)
    assert 0.8 * 40 * 50 <= res["frames_per_s"] <= 1.2 * 40 * 50, res
    assert 0 < res["us_per_frame"] < 10_000, res


def test_admission_control_under_load(tmp_path: Path) -> None:
    """``--max-calls``: offered more calls than the cap, the server carries exactly the cap (every frame of
    those calls received, nothing dropped or lost) and refuses the rest busy at the webhook."""
    args = _echo_args(
        tmp_path, ramp=[30], duration=3.0, warmup=1.0, budget_ms=1000.0, max_calls=20, overload_lag_ms=0.0
    )  # this test is about admission, not latency
    rows = bench_load.run_load(args)
    report = bench_load.write_report(rows, args)
    row = rows[0]
    assert (row.connected, row.refused) == (20, 10), report
    assert row.dropped == 0 and row.late == 0 and row.lost == 0, report
    assert row.frames_sent >= 20 * 50 * 2, report
    if row.passed:
        assert bench_load.calls_per_core(rows) == {"echo": 20}
