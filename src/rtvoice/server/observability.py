"""``GET /healthz`` and ``GET /metrics``.

- ``/healthz``: liveness. ``200`` with ``{"ok": true, "active_calls": N, "pid": P, "accepting": "admit",
  "loop_lag_ms": L}``; ``active_calls`` is the call registry's count in *this* worker process, ``pid`` tells
  which worker answered (with ``--workers N`` a request reaches one of them), ``accepting`` whether that worker
  would take a new call now (``admit``, or why not: ``capacity``, ``overload``, ``draining``;
  :mod:`rtvoice.call.admission`) and ``loop_lag_ms`` its averaged event-loop lag. A readiness check for a
  load balancer in front of several hosts is ``accepting == "admit"``.
- ``/metrics``: Prometheus text exposition (``text/plain; version=0.0.4``) of :mod:`rtvoice.metrics`, which
  lists the metric names and explains how several workers are aggregated (prometheus-client multiprocess
  mode).
"""

from __future__ import annotations

import json
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
        doc: dict[str, Any] = {"ok": True, "active_calls": _active_calls(registry), "pid": pid}
        accepting = getattr(registry, "accepting", None)
        if accepting is not None:
            doc["accepting"] = getattr(accepting, "value", str(accepting))
            doc["loop_lag_ms"] = round(1000.0 * float(registry.admission.lag_s), 2)
        return Response.json(200, json.dumps(doc).encode())

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(200, body, content_type)

    app.route("GET", "/healthz", healthz)
    app.route("GET", "/metrics", metrics_endpoint)
    if os.environ.get("RTVOICE_LOAD_PROBE"):  # the load benchmark's latency probe (rtvoice.server.loadprobe)
        from rtvoice.server import loadprobe

        if loadprobe.enabled():
            loadprobe.register(app)
