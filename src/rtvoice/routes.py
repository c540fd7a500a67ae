"""The application: which handler answers which path. The server knows nothing of Twilio; this wires it up."""

from __future__ import annotations

from rtvoice.call.registry import CallRegistry
from rtvoice.config import Settings
from rtvoice.server.api import App


def build_app(settings: Settings, registry: CallRegistry | None = None) -> App:
    """Build rtvoice's routes for ``settings``.

    - ``GET /healthz``, ``GET /metrics``: :mod:`rtvoice.server.observability`
    - ``GET|POST /incoming-call``, ``POST /call-status``: :mod:`rtvoice.twilio.webhook`
    - ``WS /media-stream``: :mod:`rtvoice.call.session`
    - ``POST /calls`` (outbound, bearer token): :mod:`rtvoice.twilio.outbound`
    """
    from rtvoice.call import session
    from rtvoice.server import observability
    from rtvoice.twilio import outbound, webhook

    if registry is None:
        registry = CallRegistry(settings)
        # Serving for real: every call leaves a record in settings.db_path (opened at the first call).
        from rtvoice.records import attach_lazily

        attach_lazily(registry, settings)
    app = App()
    _watch_loop_lag(app, registry)
    observability.register(app, settings, registry)
    webhook.register(app, settings, registry)
    session.register(app, settings, registry)
    outbound.register(app, settings, registry)
    return app


def _watch_loop_lag(app: App, registry: CallRegistry) -> None:
    """Sample the serving loop's lag for the registry's admission check and ``rtvoice_event_loop_lag_seconds``
    (from server start to drain)."""
    from rtvoice import metrics
    from rtvoice.server.looplag import LoopLagMonitor

    admission = getattr(registry, "admission", None)
    if admission is None:  # a stand-in registry (tests) without admission control
        return

    def sample(lag_s: float) -> None:
        admission.loop_lag(lag_s)
        metrics.EVENT_LOOP_LAG.set(admission.lag_s)

    monitor = LoopLagMonitor(sample)

    async def stop() -> None:
        monitor.stop()

    app.on_startup.append(monitor.start)
    app.on_shutdown.append(stop)
