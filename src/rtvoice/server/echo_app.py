"""A minimal app for testing a deployment's plumbing and measuring the server alone.

``python -m rtvoice serve --app rtvoice.server.echo_app:build_app`` serves ``/healthz``, ``/metrics``, ``POST
/echo`` (answers the request body) and ``WS /echo`` (every text or binary message is sent back as text /
binary). No Twilio, no agent: what it measures is the server's own cost per message.
"""

from __future__ import annotations

from collections.abc import Callable

from rtvoice.config import Settings
from rtvoice.server import observability
from rtvoice.server.api import App, Request, Response, WebSocket, WebSocketHandler


class EchoHandler:
    """Sends every message straight back."""

    __slots__ = ("ws",)

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    def on_text(self, text: str) -> None:
        self.ws.send_text(text)

    def on_binary(self, data: bytes) -> None:
        send_binary = getattr(self.ws, "send_binary", None)
        if send_binary is not None:
            send_binary(data)

    def on_close(self, code: int | None, reason: str) -> None:
        pass


def build_app(settings: Settings, registry: object = None) -> App:
    """The echo app (same factory signature as :func:`rtvoice.routes.build_app`)."""
    app = App()
    observability.register(app, settings, registry)

    async def echo(request: Request) -> Response:
        return Response(200, request.body, request.header("content-type") or "application/octet-stream")

    async def accept(request: Request) -> Callable[[WebSocket], WebSocketHandler]:
        return EchoHandler

    app.route("POST", "/echo", echo)
    app.websocket("/echo", accept)
    return app
