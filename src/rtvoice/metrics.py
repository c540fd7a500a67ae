"""rtvoice's Prometheus metrics: one dedicated :class:`CollectorRegistry` and the metric objects.

Metric names (the ``_total`` suffix is added to counters by prometheus-client):

- ``rtvoice_active_calls`` (gauge): media streams currently in a call.
- ``rtvoice_calls_total{outcome}``: finished calls by outcome (completed, caller_hangup, error, ...).
- ``rtvoice_frames_in_total`` / ``rtvoice_frames_out_total``: media frames received from / sent to Twilio.
- ``rtvoice_frames_dropped_total``: frames dropped (playout overflow, ...).
- ``rtvoice_frames_late_total``: inbound frames that arrived late or out of order.
- ``rtvoice_frame_processing_seconds`` (histogram): server time per inbound frame (parse, decode, VAD, agent).
- ``rtvoice_errors_total{kind}``: errors by kind (:class:`rtvoice.server.limits.ErrorKind` values, plus kinds
  other modules add, e.g. ``vendor``).
- ``rtvoice_http_requests_total{route,status}``: HTTP requests answered; ``route`` is the registered path or
  ``unmatched`` (never the raw path, so the label set stays bounded).
- ``rtvoice_connections`` (gauge): open TCP connections, HTTP and WebSocket.
- ``rtvoice_connections_rejected_total``: connections refused with 503 (max connections reached).
- ``rtvoice_websocket_connections`` (gauge): open WebSocket connections.
- ``rtvoice_websocket_closed_total{code}``: WebSockets ended, by close code (``none``: dropped without one).

Several workers (``serve --workers N``): each worker is its own process with its own counters, and a scrape
of ``/metrics`` through the shared port reaches one worker at random. So with N > 1 the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` (a fresh private temporary directory) for its workers *before* they import
prometheus-client; every value then lives in a per-process mmap'd file and :func:`render` aggregates all
workers with :class:`prometheus_client.multiprocess.MultiProcessCollector` (gauges sum over live workers).
With one worker (the default, and the in-process tests) plain in-memory values are used.

Per-frame metrics (``frames_in``, ``frames_out``, ``frame_processing_seconds``) are not touched per frame:
each prometheus-client ``inc``/``observe`` takes a lock and walks the buckets, ~5 % of the event loop at a
few hundred calls. The media path counts into :data:`FRAME_STATS` (plain ints) instead, and those are folded
in at a low rate (:meth:`FrameStats.flush`): at every scrape of this process (:func:`render`), every
``FLUSH_FRAMES`` frames (so the other workers' files stay fresh in multiprocess mode) and at the end of each
call. Names and semantics are unchanged; a scrape of another worker may lag this one by up to
``FLUSH_FRAMES`` frames. The frame counters fold with ``Counter.inc(n)``. The histogram has no public
"observe n values at once", so:

- one process (the default): ``rtvoice_frame_processing_seconds`` is exposed by a custom collector
  (:class:`FrameHistogram`, prometheus-client's supported way to export values aggregated elsewhere) from
  the folded bucket counts and sum, with the same name, type, buckets, ``_created`` series and no labels;
- multiprocess mode: a scrape reads every worker's values from the mmap'd files, which only the metric
  objects write (custom collectors are not collected there, per prometheus-client's documentation), and the
  only public way to put a histogram observation there is one ``observe`` per value: 1000 of them per fold
  would bring back the per-frame cost this batching removed. There the fold still writes the ``Histogram``'s
  own bucket and sum values (prometheus-client internals, ``_buckets``/``_sum``); tests/test_metrics_multiprocess
  checks it against per-frame ``observe`` in a real multiprocess directory, so an upgrade that changes them
  fails a test rather than the metrics.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)


def multiprocess_dir() -> str | None:
    """The prometheus-client multiprocess directory when running as one of several workers, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


#: Decided once, at import: the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before its workers import this.
MULTIPROCESS = multiprocess_dir() is not None

#: Per-frame processing time buckets: the budget for one 20 ms frame is tens of microseconds, so the buckets
#: start at 5 µs and end at the frame period itself.
FRAME_BUCKETS = (5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 20e-3)

ACTIVE_CALLS = Gauge(
    "rtvoice_active_calls", "Media streams in a call", registry=REGISTRY, multiprocess_mode="livesum"
)
CALLS_TOTAL = Counter("rtvoice_calls", "Finished calls by outcome", ["outcome"], registry=REGISTRY)
FRAMES_IN = Counter("rtvoice_frames_in", "Inbound media frames received", registry=REGISTRY)
FRAMES_OUT = Counter("rtvoice_frames_out", "Outbound media frames sent", registry=REGISTRY)
FRAMES_DROPPED = Counter("rtvoice_frames_dropped", "Media frames dropped", registry=REGISTRY)
FRAMES_LATE = Counter("rtvoice_frames_late", "Inbound media frames late or out of order", registry=REGISTRY)
FRAME_PROCESSING_NAME = "rtvoice_frame_processing_seconds"
FRAME_PROCESSING_HELP = "Server processing time per inbound media frame"


class FrameHistogram(Collector):
    """``rtvoice_frame_processing_seconds`` in one process: a custom collector over bucket counts and a sum
    that :meth:`FrameStats.flush` folds in (:meth:`fold`), exposed exactly as a ``Histogram`` with
    :data:`FRAME_BUCKETS` would be (cumulative ``_bucket{le}`` with ``+Inf``, ``_count``, ``_sum`` and, unless
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` is set, ``_created``)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._les = [floatToGoString(b) for b in buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._les)  # non-cumulative; the last one is +Inf
        self._sum_ns = 0
        self._created = time.time()
        self._use_created = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
            "true",
            "1",
            "t",
        )

    def fold(self, counts: list[int], sum_ns: int) -> None:
        """Add non-cumulative bucket counts (one per bucket, then +Inf) and their sum in ns."""
        mine = self._counts
        for i, c in enumerate(counts):
            if c:
                mine[i] += c
        self._sum_ns += sum_ns

    def collect(self) -> Iterable[Metric]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for le, c in zip(self._les, self._counts, strict=True):
            cumulative += c
            buckets.append((le, float(cumulative)))
        family = HistogramMetricFamily(
            FRAME_PROCESSING_NAME, FRAME_PROCESSING_HELP, buckets=buckets, sum_value=self._sum_ns / 1e9
        )
        if self._use_created:
            family.add_sample(FRAME_PROCESSING_NAME + "_created", {}, self._created)
        yield family


class _MultiprocessFrameHistogram:
    """``rtvoice_frame_processing_seconds`` in multiprocess mode: the ``Histogram`` object (only metric objects
    write the mmap'd files a scrape aggregates), folded through its own per-bucket values (see the module
    docstring for why there is no public way)."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def fold(self, counts: list[int], sum_ns: int) -> None:
        h = self.histogram
        h._sum.inc(sum_ns / 1e9)
        # non-cumulative per-bucket values, as prometheus-client keeps them (it accumulates at exposition)
        for i, c in enumerate(counts):
            if c:
                h._buckets[i].inc(c)


FRAME_PROCESSING: FrameHistogram | _MultiprocessFrameHistogram
if MULTIPROCESS:
    FRAME_PROCESSING = _MultiprocessFrameHistogram(
        Histogram(FRAME_PROCESSING_NAME, FRAME_PROCESSING_HELP, registry=REGISTRY, buckets=FRAME_BUCKETS)
    )
else:
    FRAME_PROCESSING = FrameHistogram(FRAME_BUCKETS)
    REGISTRY.register(FRAME_PROCESSING)
ERRORS = Counter("rtvoice_errors", "Errors by kind", ["kind"], registry=REGISTRY)
HTTP_REQUESTS = Counter(
    "rtvoice_http_requests", "HTTP requests by route and status", ["route", "status"], registry=REGISTRY
)
CONNECTIONS = Gauge(
    "rtvoice_connections", "Open TCP connections", registry=REGISTRY, multiprocess_mode="livesum"
)
CONNECTIONS_REJECTED = Counter(
    "rtvoice_connections_rejected", "Connections refused at max connections", registry=REGISTRY
)
WEBSOCKETS = Gauge(
    "rtvoice_websocket_connections", "Open WebSockets", registry=REGISTRY, multiprocess_mode="livesum"
)
WEBSOCKETS_CLOSED = Counter(
    "rtvoice_websocket_closed", "WebSocket connections ended, by close code", ["code"], registry=REGISTRY
)
CALLS_REFUSED = Counter(
    "rtvoice_calls_refused",
    "Calls refused at the webhook or POST /calls, by reason (capacity, overload, draining)",
    ["reason"],
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Gauge(
    "rtvoice_event_loop_lag_seconds",
    "How late the event loop runs a periodic timer, averaged over ~1 s (rtvoice.call.admission)",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)


#: Frames counted locally between two folds into the Prometheus objects (~0.5 s of 50 calls' traffic).
FLUSH_FRAMES = 1000
_BOUNDS_NS = tuple(round(b * 1e9) for b in FRAME_BUCKETS)


class FrameStats:
    """Per-frame counters as plain ints, folded into :data:`FRAMES_IN`, :data:`FRAMES_OUT` and
    :data:`FRAME_PROCESSING` by :meth:`flush` (see the module docstring). Single-threaded: the event loop."""

    __slots__ = ("_counts", "_out", "_since_flush", "_sum_ns", "frames_in", "tap")

    def __init__(self) -> None:
        self._counts = [0] * (len(_BOUNDS_NS) + 1)  # non-cumulative, as prometheus-client keeps them; last: +Inf
        self._sum_ns = 0
        self._out = 0
        self._since_flush = 0
        #: Frames received since start (never reset; for stats and tests).
        self.frames_in = 0
        #: Optional hook given every processing time in ns (``rtvoice.server.loadprobe`` keeps a fine histogram).
        self.tap: Callable[[int], None] | None = None

    def frame(self, processing_ns: int, frames_out: int = 0) -> None:
        """One inbound frame processed in ``processing_ns``; ``frames_out`` outbound frames sent meanwhile."""
        self.frames_in += 1
        self._sum_ns += processing_ns
        self._counts[bisect_left(_BOUNDS_NS, processing_ns)] += 1  # bucket i: value <= bound i, as ``le``
        if frames_out:
            self._out += frames_out
        if self.tap is not None:
            self.tap(processing_ns)
        self._since_flush += 1
        if self._since_flush >= FLUSH_FRAMES:
            self.flush()

    def frames_out(self, n: int) -> None:
        """``n`` outbound frames sent outside an inbound frame's processing."""
        self._out += n

    def flush(self) -> None:
        """Fold what was counted since the last flush into the Prometheus metrics."""
        n = self._since_flush
        self._since_flush = 0
        if n:
            FRAMES_IN.inc(n)
            counts = self._counts
            FRAME_PROCESSING.fold(counts, self._sum_ns)
            for i in range(len(counts)):
                counts[i] = 0
            self._sum_ns = 0
        if self._out:
            FRAMES_OUT.inc(self._out)
            self._out = 0


FRAME_STATS = FrameStats()


class ProcessingTap:
    """Where the processing time of each vendor message (ns: from its bytes reaching the vendor link to the
    end of its handling, the first Twilio frame of new bot audio written included) is reported, when anyone
    listens: the load benchmark's probe (:mod:`rtvoice.server.loadprobe`) sets :attr:`tap`; otherwise it is
    None and the links do not even read the clock."""

    __slots__ = ("tap",)

    def __init__(self) -> None:
        self.tap: Callable[[int], None] | None = None


VENDOR_MESSAGES = ProcessingTap()


def render() -> tuple[bytes, str]:
    """The exposition text of all metrics (summed over workers in multiprocess mode) and its content type."""
    FRAME_STATS.flush()
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
