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
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

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
FRAME_PROCESSING = Histogram(
    "rtvoice_frame_processing_seconds",
    "Server processing time per inbound media frame",
    registry=REGISTRY,
    buckets=FRAME_BUCKETS,
)
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


def multiprocess_dir() -> str | None:
    """The prometheus-client multiprocess directory when running as one of several workers, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text of all metrics (summed over workers in multiprocess mode) and its content type."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
