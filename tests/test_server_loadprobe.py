"""The load probe's histograms and its accounting of deferred sends (sans-I/O: the tap is called directly)."""

from __future__ import annotations

import gc
import time

import pytest

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


def test_frame_without_defer_is_recorded_at_once() -> None:
    p = LoadProbe()
    p._on_frame(30_000)
    assert p.frame.count == 1 and p.frame.counts[3] == 1 and p.send_defer.count == 0


def test_deferred_frame_counts_until_the_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame whose bytes are written later counts from its start to the write, not to the end of
    ``on_text``; the wait after the frame is in ``send_defer``. (A fake clock: the accounting, not the
    machine's timing, is under test.)"""
    clock = [1_000_000_000]
    monkeypatch.setattr(loadprobe, "perf_ns", lambda: clock[0])
    p = LoadProbe()
    held: list[int] = []
    # the frame started at t, the sender queued its bytes 20 µs in, the frame ended 30 µs in
    start = clock[0]
    clock[0] += 20_000
    p.defer(held)
    clock[0] += 10_000
    p._on_frame(clock[0] - start)
    assert p.frame.count == 0 and held == [start, start + 30_000]  # not recorded yet
    clock[0] += 3_000_000  # the rest of the iteration
    p.sent(held)
    assert held == []
    assert p.frame.count == 1 and p.frame.max_ns == 3_030_000
    assert p.send_defer.count == 1 and p.send_defer.max_ns == 3_000_000


def test_defer_outside_a_frame_is_not_taken_by_the_next_frame() -> None:
    """A deferral made outside any frame's processing (e.g. a timer) does not swallow the next frame's
    sample."""
    p = LoadProbe()
    held: list[int] = []
    p.defer(held)
    time.sleep(0.002)
    p._on_frame(10_000)  # a later frame that started after the deferral
    assert held == [] and p.frame.count == 1


def test_snapshot_reports_and_resets_send_defer(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000_000]
    monkeypatch.setattr(loadprobe, "perf_ns", lambda: clock[0])
    p = LoadProbe()
    held: list[int] = []
    p.defer(held)
    clock[0] += 500_000
    p._on_frame(1_000_000)  # the frame started before the deferral
    p.sent(held)
    snap = p.snapshot(reset=True)
    assert snap["send_defer"]["count"] == 1 and snap["frame"]["count"] == 1
    assert p.send_defer.count == 0 and p.frame.count == 0


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
