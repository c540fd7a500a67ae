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
    observability.register(app, settings, registry)
    webhook.register(app, settings, registry)
    session.register(app, settings, registry)
    outbound.register(app, settings, registry)
    return app
