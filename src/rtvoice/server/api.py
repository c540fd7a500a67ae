"""The small surface between rtvoice's hand-rolled server and the application on top of it.

The server (``rtvoice.server.http`` / ``websocket``) turns bytes into :class:`Request` objects and WebSocket
messages; the application registers handlers in an :class:`App`. Nothing here does I/O, so route handlers can be
tested by calling them with a hand-built :class:`Request`.

WebSocket handlers are plain objects with synchronous callbacks (``on_text``/``on_binary``/``on_close``), driven
straight from the protocol's ``data_received``: no task or queue per message on the media hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl


@dataclass(slots=True)
class Request:
    """One HTTP request (or WebSocket upgrade request), fully received."""

    method: str
    #: The raw request target as sent (path plus ``?query``), undecoded: signatures are computed over it.
    target: str
    path: str
    #: The raw query string without the ``?`` (empty when absent), undecoded.
    query: str
    #: Header names lower-cased, values as sent (latin-1 decoded), in order; repeated names repeat.
    headers: list[tuple[str, str]]
    body: bytes = b""
    peer: tuple[str, int] | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        lname = name.lower()
        for key, value in self.headers:
            if key == lname:
                return value
        return default

    def form(self) -> dict[str, list[str]]:
        """Form fields of a ``application/x-www-form-urlencoded`` body (POST) or of the query (GET).

        Every value of a repeated field is kept, blank values included: Twilio signs all of them.
        """
        source = self.body.decode("utf-8", "replace") if self.method == "POST" else self.query
        fields: dict[str, list[str]] = {}
        for key, value in parse_qsl(source, keep_blank_values=True):
            fields.setdefault(key, []).append(value)
        return fields


@dataclass(slots=True)
class Response:
    """An HTTP response for the server to send."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode("utf-8"))

    @classmethod
    def xml(cls, text: str) -> Response:
        return cls(200, text.encode("utf-8"), "text/xml; charset=utf-8")

    @classmethod
    def json(cls, status: int, body: bytes) -> Response:
        return cls(status, body, "application/json")


class WebSocket(Protocol):
    """An accepted WebSocket connection, as the server hands it to the application."""

    request: Request

    def send_text(self, text: str) -> None:
        """Queue one text message. Never blocks. If the peer stops reading and the bounded per-connection
        send queue overflows, the server closes the connection (1008) instead of buffering without bound."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (idempotent). ``on_close`` follows when it completes or times out."""

    @property
    def closed(self) -> bool:
        """True once a close was started by either side."""


class WebSocketHandler(Protocol):
    """The application's side of one WebSocket connection. Callbacks run on the event loop; never block."""

    def on_text(self, text: str) -> None: ...

    # Optional, not part of the protocol (looked up with getattr when the handler is created):
    # ``on_text_bytes(data: bytes) -> bool`` gets a text message's raw payload first; True means it handled
    # the message, False that the connection should decode it (strict UTF-8, 1007 if invalid) and call
    # ``on_text``. It may only return True for a payload that is valid UTF-8 (e.g. one it checked is ASCII).

    def on_binary(self, data: bytes) -> None: ...

    def on_close(self, code: int | None, reason: str) -> None:
        """The connection is gone (``code`` is None if it dropped without a close frame). Called exactly once."""


HttpHandler = Callable[[Request], Awaitable[Response]]
#: Inspect the upgrade request: return a :class:`Response` to refuse it (sent as plain HTTP, no handshake), or a
#: factory that receives the accepted :class:`WebSocket` and returns its handler.
WebSocketAccept = Callable[[Request], Awaitable["Response | Callable[[WebSocket], WebSocketHandler]"]]


class App:
    """A small routing table: exact paths, one handler per (method, path)."""

    def __init__(self) -> None:
        self.http_routes: dict[tuple[str, str], HttpHandler] = {}
        self.ws_routes: dict[str, WebSocketAccept] = {}
        #: Called once when a server starts serving the app, on its running loop: e.g. starting timers.
        self.on_startup: list[Callable[[], None]] = []
        #: Coroutines run once when the server starts draining (SIGTERM): e.g. closing vendor sessions.
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    def route(self, method: str, path: str, handler: HttpHandler) -> None:
        self.http_routes[(method.upper(), path)] = handler

    def websocket(self, path: str, accept: WebSocketAccept) -> None:
        self.ws_routes[path] = accept

    def methods_for(self, path: str) -> list[str]:
        """Methods registered for ``path`` (for 405 ``Allow``); empty means 404."""
        return sorted(m for (m, p) in self.http_routes if p == path)
