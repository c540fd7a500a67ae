"""Helpers shared by the tests/test_server_*.py files: a server on loopback and a raw HTTP response reader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from rtvoice.config import Settings
from rtvoice.server.api import App, Request, Response, WebSocket, WebSocketHandler
from rtvoice.server.http import RunningServer, start_server
from rtvoice.server.limits import ServerLimits

R = TypeVar("R", bound="Recorder")
TIMEOUT = 10.0  # generous: the machine is shared


@asynccontextmanager
async def serving(
    app: App, limits: ServerLimits | None = None, **settings: Any
) -> AsyncIterator[RunningServer]:
    """A server for ``app`` on 127.0.0.1, an ephemeral port; shut down (drain 0) on exit."""
    srv = await start_server(app, Settings(**settings), "127.0.0.1", 0, limits=limits or ServerLimits())
    try:
        yield srv
    finally:
        await asyncio.wait_for(srv.shutdown(0.0), TIMEOUT * 2)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body: (status, lower-cased headers, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), TIMEOUT)
    return status, headers, body


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (each read bounded by ``TIMEOUT``)."""
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), TIMEOUT):
        data += chunk
    return data


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection (after any remaining bytes) within ``TIMEOUT``."""
    try:
        while await asyncio.wait_for(reader.read(65536), TIMEOUT):
            pass
    except (ConnectionResetError, TimeoutError):
        return False
    return True


class Recorder:
    """A WebSocket handler that records everything and can be told to echo, fail or close."""

    instances: list[Recorder]

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.texts: list[str] = []
        self.binaries: list[bytes] = []
        self.closes: list[tuple[int | None, str]] = []
        self.closed = asyncio.Event()

    def on_text(self, text: str) -> None:
        self.texts.append(text)
        if text == "boom":
            raise RuntimeError("handler failure requested by the test")
        if text == "bye":
            self.ws.close(4000, "bye")
            return
        if text == "long bye":
            self.ws.close(1008, "é" * 200)  # 400 bytes: more than a close frame can carry
            return
        if text == "pause":  # the app falls behind: stop reading from this peer for a while
            pause = getattr(self.ws, "pause_reading")  # noqa: B009  (not part of the WebSocket protocol)
            pause()
            asyncio.get_running_loop().call_later(0.5, getattr(self.ws, "resume_reading"))  # noqa: B009
        if text == "bad code":
            self.ws.close(1005, "1005 must never be sent")
            return
        self.ws.send_text(text)

    def on_binary(self, data: bytes) -> None:
        self.binaries.append(data)
        self.ws.send_text(f"binary {len(data)}")

    def on_close(self, code: int | None, reason: str) -> None:
        self.closes.append((code, reason))
        self.closed.set()


def recorder_app(handlers: list[R], handler: Callable[[WebSocket], R] = Recorder) -> App:  # type: ignore[assignment]
    """An app with ``GET /ok``, ``POST /echo``, ``GET /fail`` (raises), ``WS /ws`` (a :class:`Recorder`, or
    ``handler(ws)``, each, appended to ``handlers``) and ``WS /refuse`` (403)."""
    app = App()

    async def ok(request: Request) -> Response:
        return Response.text(200, "ok")

    async def echo(request: Request) -> Response:
        return Response(200, request.body, "application/octet-stream")

    async def fail(request: Request) -> Response:
        raise RuntimeError("handler failure requested by the test")

    async def accept(request: Request) -> Callable[[WebSocket], WebSocketHandler]:
        def factory(ws: WebSocket) -> WebSocketHandler:
            h = handler(ws)
            handlers.append(h)
            return h

        return factory

    async def refuse(request: Request) -> Response:
        return Response.text(403, "forbidden")

    app.route("GET", "/ok", ok)
    app.route("POST", "/echo", echo)
    app.route("GET", "/fail", fail)
    app.websocket("/ws", accept)
    app.websocket("/refuse", refuse)
    return app
