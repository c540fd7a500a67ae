"""rtvoice.metrics in prometheus-client's multiprocess mode (``serve --workers N``): the per-frame stats that
two worker processes fold (FrameStats) reach the mmap'd files, and a scrape aggregating them
(:func:`rtvoice.metrics.render`) gives exactly what per-frame ``observe``/``inc`` calls would have.

Real processes: ``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus-client is imported, so each side
runs in its own interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import random, sys
from prometheus_client import Counter, Histogram
from rtvoice import metrics
assert metrics.MULTIPROCESS
seed = int(sys.argv[1])
rng = random.Random(seed)
bounds = [round(b * 1e9) for b in metrics.FRAME_BUCKETS]
ref = Histogram("ref_seconds", "ref", buckets=metrics.FRAME_BUCKETS)
ref_in = Counter("ref_in", "ref")
ref_out = Counter("ref_out", "ref")
stats = metrics.FrameStats()
for _ in range(2500):  # more than FLUSH_FRAMES: folds on its own, then once more below
    ns = rng.choice([rng.randint(0, 30_000_000), rng.choice(bounds), rng.choice(bounds) + 1])
    out = rng.randint(0, 2)
    stats.frame(ns, out)
    ref.observe(ns / 1e9)
    ref_in.inc()
    ref_out.inc(out)
stats.flush()
"""

SCRAPE = r"""
from rtvoice import metrics
print(metrics.render()[0].decode())
"""


def _run(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_two_workers_frame_stats_aggregate_like_per_frame_observe(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    _run(WORKER, env, "1")
    _run(WORKER, env, "2")
    got = _samples(_run(SCRAPE, env))
    hist = {k: v for k, v in got.items() if k.startswith("rtvoice_frame_processing_seconds_")}
    ref = {k.replace("ref_seconds_", "rtvoice_frame_processing_seconds_"): v for k, v in got.items()
           if k.startswith("ref_seconds_")}  # fmt: skip
    assert set(hist) == set(ref) and len(hist) == 15  # 13 buckets (+Inf), count, sum
    for name, want in ref.items():
        if name.endswith("_sum"):
            assert abs(hist[name] - want) < 1e-9, name
        else:
            assert hist[name] == want, name
    assert hist["rtvoice_frame_processing_seconds_count"] == 5000
    assert got["rtvoice_frames_in_total"] == got["ref_in_total"] == 5000
    assert got["rtvoice_frames_out_total"] == got["ref_out_total"]
