"""rtvoice.metrics.FrameStats: per-frame plain-int counters folded into the Prometheus metrics give exactly
what per-frame ``inc``/``observe`` calls would have."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from rtvoice import metrics


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def _hist_text(registry: CollectorRegistry) -> list[str]:
    return [
        line.split(" ")[0] + " " + line.split(" ")[1]
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("ref_seconds_bucket") or line.startswith("ref_seconds_count")
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.integers(0, 30_000_000),
                st.sampled_from([round(b * 1e9) for b in metrics.FRAME_BUCKETS]),  # exactly on a bound
                st.sampled_from([round(b * 1e9) + 1 for b in metrics.FRAME_BUCKETS]),
            ),
            st.integers(0, 3),
        ),
        max_size=50,
    )
)
def test_fold_equals_per_frame_observe(frames: list[tuple[int, int]]) -> None:
    stats = metrics.FrameStats()
    in0 = _sample("rtvoice_frames_in_total")
    out0 = _sample("rtvoice_frames_out_total")
    count0 = _sample("rtvoice_frame_processing_seconds_count")
    sum0 = _sample("rtvoice_frame_processing_seconds_sum")
    buckets0 = {
        b: _sample("rtvoice_frame_processing_seconds_bucket", {"le": str(b)}) for b in metrics.FRAME_BUCKETS
    }
    # the reference: what per-frame calls on a prometheus Histogram with the same buckets give
    ref_registry = CollectorRegistry()
    ref = Histogram("ref_seconds", "ref", registry=ref_registry, buckets=metrics.FRAME_BUCKETS)
    ref_out = Counter("ref_out", "ref", registry=ref_registry)
    for ns, out in frames:
        stats.frame(ns, out)
        ref.observe(ns / 1e9)
        ref_out.inc(out)
    stats.flush()
    assert _sample("rtvoice_frames_in_total") - in0 == len(frames)
    assert _sample("rtvoice_frames_out_total") - out0 == sum(o for _, o in frames)
    assert _sample("rtvoice_frame_processing_seconds_count") - count0 == len(frames)
    assert abs(_sample("rtvoice_frame_processing_seconds_sum") - sum0 - sum(ns for ns, _ in frames) / 1e9) < 1e-9
    for b in metrics.FRAME_BUCKETS:
        got = _sample("rtvoice_frame_processing_seconds_bucket", {"le": str(b)}) - buckets0[b]
        want = ref_registry.get_sample_value("ref_seconds_bucket", {"le": str(b)})
        assert got == want, b
    assert stats.frames_in == len(frames)


def test_flush_every_flush_frames_and_tap() -> None:
    stats = metrics.FrameStats()
    seen: list[int] = []
    stats.tap = seen.append
    in0 = _sample("rtvoice_frames_in_total")
    for _ in range(metrics.FLUSH_FRAMES - 1):
        stats.frame(1000)
    assert _sample("rtvoice_frames_in_total") == in0  # not folded yet
    stats.frame(1000)
    assert _sample("rtvoice_frames_in_total") - in0 == metrics.FLUSH_FRAMES  # folded without a scrape
    assert len(seen) == metrics.FLUSH_FRAMES and seen[0] == 1000


def test_render_flushes_the_global_stats() -> None:
    in0 = _sample("rtvoice_frames_in_total")
    metrics.FRAME_STATS.frame(2000, 1)
    text = metrics.render()[0].decode()
    assert _sample("rtvoice_frames_in_total") - in0 == 1
    assert "rtvoice_frames_in_total" in text
