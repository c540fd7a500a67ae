"""The load probe's histograms and its per-frame tap (sans-I/O: the tap is called directly)."""

from __future__ import annotations

import gc
import time

from rtvoice.server import loadprobe
from rtvoice.server.loadprobe import BUCKET_NS, Histogram, LoadProbe


def _samples(h: Histogram) -> int:
    return sum(h.counts)


def test_histogram_records_and_resets() -> None:
    h = Histogram()
    h.record(-5)
    h.record(25_000)
    h.record(10**12)  # beyond the last bucket: clamped into it
    assert h.count == 3 and _samples(h) == 3
    assert h.counts[0] == 1 and h.counts[25_000 // BUCKET_NS] == 1 and h.counts[-1] == 1
    assert h.max_ns == 10**12
    h.reset()
    assert h.count == 0 and _samples(h) == 0


def test_frame_is_recorded_at_once() -> None:
    p = LoadProbe()
    p.frame.record(30_000)
    assert p.frame.count == 1 and p.frame.counts[3] == 1


def test_snapshot_reports_and_resets() -> None:
    p = LoadProbe()
    p.frame.record(1_000_000)
    snap = p.snapshot(reset=True)
    assert snap["frame"]["count"] == 1 and "send_defer" not in snap
    assert p.frame.count == 0


def test_register_publishes_the_probe() -> None:
    class App:
        def __init__(self) -> None:
            self.routes: list[tuple[str, str]] = []

        def route(self, method: str, path: str, handler: object) -> None:
            self.routes.append((method, path))

    from rtvoice import metrics

    old_tap, old_vendor_tap = metrics.FRAME_STATS.tap, metrics.VENDOR_MESSAGES.tap
    try:
        probe = loadprobe.register(App())
        assert loadprobe.PROBE is probe
        assert metrics.FRAME_STATS.tap == probe.frame.record
        assert metrics.VENDOR_MESSAGES.tap == probe.vendor.record
        probe.watch_gc()  # a second call installs nothing more
        assert gc.callbacks.count(probe._on_gc) == 1
    finally:
        metrics.FRAME_STATS.tap, metrics.VENDOR_MESSAGES.tap = old_tap, old_vendor_tap
        if loadprobe.PROBE is not None:
            loadprobe.PROBE.unwatch_gc()
        loadprobe.PROBE = None


def test_gc_pauses_by_generation_and_late_samples_they_explain() -> None:
    p = LoadProbe()
    p._on_gc("start", {"generation": 1})
    p._on_gc("stop", {"generation": 1, "collected": 0})
    p._on_gc("start", {"generation": 2})
    p._on_gc("stop", {"generation": 2, "collected": 0})
    assert [g[0] for g in p.gc_by_gen] == [0, 1, 1]
    assert p.gc_by_gen[1][1] >= p.gc_by_gen[1][2] > 0
    # a late sample that waited through the collection that just ended, and one that did not
    p._due, p._stall = p._gc_last_end - 10_000_000, 0
    p._loop = None
    p._arm = lambda: None  # type: ignore[method-assign]
    p._ran()
    p._gc_last_end = 0
    p._due = time.perf_counter_ns() - 8_000_000
    p._ran()
    p._due = time.perf_counter_ns()
    p._ran()  # on time: not late
    assert (p.late_samples, p.late_samples_gc) == (2, 1)
    snap = p.snapshot(reset=True)
    assert snap["late_samples"] == 2 and snap["late_samples_gc"] == 1 and snap["gc_by_gen"][2][0] == 1
    assert p.late_samples == 0 and p.gc_by_gen == [[0, 0, 0]] * 3


def test_vendor_messages_are_recorded_and_reset() -> None:
    p = LoadProbe()
    p.vendor.record(120_000)
    p.vendor.record(15_000)
    snap = p.snapshot(reset=True)
    assert snap["vendor"]["count"] == 2 and snap["vendor"]["max_ns"] == 120_000
    assert snap["vendor"]["buckets"] == {"1": 1, "12": 1}
    assert p.vendor.count == 0
