"""The load probe's histograms and its per-frame tap (sans-I/O: the tap is called directly)."""

from __future__ import annotations

import gc

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
    p._on_frame(30_000)
    assert p.frame.count == 1 and p.frame.counts[3] == 1


def test_snapshot_reports_and_resets() -> None:
    p = LoadProbe()
    p._on_frame(1_000_000)
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

    old_tap = metrics.FRAME_STATS.tap
    try:
        probe = loadprobe.register(App())
        assert loadprobe.PROBE is probe
        assert metrics.FRAME_STATS.tap == probe._on_frame
        probe.watch_gc()  # a second call installs nothing more
        assert gc.callbacks.count(probe._on_gc) == 1
    finally:
        metrics.FRAME_STATS.tap = old_tap
        if loadprobe.PROBE is not None:
            loadprobe.PROBE.unwatch_gc()
        loadprobe.PROBE = None
