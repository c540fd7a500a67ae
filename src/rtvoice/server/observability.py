"""``GET /healthz`` and ``GET /metrics``.

- ``/healthz``: liveness. ``200`` with ``{"ok": true, "active_calls": N, "pid": P}``; ``active_calls`` is the
  call registry's count in *this* worker process, ``pid`` tells which worker answered (with ``--workers N`` a
  request reaches one of them).
- ``/metrics``: Prometheus text exposition (``text/plain; version=0.0.4``) of :mod:`rtvoice.metrics`, which
  lists the metric names and explains how several workers are aggregated (prometheus-client multiprocess
  mode).
"""

from __future__ import annotations

import os
from typing import Any

from rtvoice import metrics
from rtvoice.config import Settings
from rtvoice.server.api import App, Request, Response


def _active_calls(registry: Any) -> int:
    value = getattr(registry, "active_calls", 0)
    if callable(value):
        value = value()
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def register(app: App, settings: Settings, registry: Any) -> None:
    """Add ``GET /healthz`` and ``GET /metrics`` to ``app``. ``registry`` is the call registry (anything with
    an ``active_calls`` count; it is read defensively)."""
    pid = os.getpid()

    async def healthz(request: Request) -> Response:
        body = b'{"ok": true, "active_calls": %d, "pid": %d}' % (_active_calls(registry), pid)
        return Response.json(200, body)

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(200, body, content_type)

    app.route("GET", "/healthz", healthz)
    app.route("GET", "/metrics", metrics_endpoint)
    if os.environ.get("RTVOICE_LOAD_PROBE"):  # the load benchmark's latency probe (rtvoice.server.loadprobe)
        from rtvoice.server import loadprobe

        if loadprobe.enabled():
            loadprobe.register(app)
