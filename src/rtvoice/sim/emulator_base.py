"""Server plumbing shared by the vendor emulators (:mod:`rtvoice.sim.openai_emulator`,
:mod:`rtvoice.sim.elevenlabs_emulator`).

:class:`EmulatorServer` binds a ``websockets`` server on loopback (port 0 picks a free port), is an async
context manager, and lets tests wait for a condition on the emulator's state: sessions call
:meth:`EmulatorServer._notify` whenever something a test may be waiting for changed, and
:meth:`EmulatorServer.wait_for` re-checks its predicate then (and at least every 10 ms).
Subclasses provide the connection ``_handler`` and the handshake hook ``_process_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response


class EmulatorServer:
    """Bind/serve/stop, ``async with`` support and ``wait_for`` for one emulator."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: (HTTP status, message) of every handshake the emulator refused
        self.rejected_handshakes: list[tuple[int, str]] = []
        self._server: Server | None = None
        self._changed = asyncio.Event()

    # ---- subclass hooks

    async def _handler(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        return None

    def _serve_options(self) -> dict[str, Any]:
        """Extra keyword arguments for ``websockets.asyncio.server.serve`` (``max_size``, subprotocols...)."""
        return {}

    def _before_stop(self) -> None:
        """Called by :meth:`stop` before the listening socket closes (cancel tasks that would hang it)."""

    # ---- lifecycle

    async def start(self) -> None:
        """Bind and start serving (port 0 picks a free port; ``port`` is the bound one afterwards)."""
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            **self._serve_options(),
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Close every session and the listening socket."""
        if self._server is not None:
            self._before_stop()
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- waiting on state

    def _notify(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds (re-checked on every client message and every 10 ms)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("condition not met within timeout")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.01))


def json_response(connection: ServerConnection, status: HTTPStatus, body: Any, newline: bool = False) -> Response:
    """An HTTP response to a handshake (or a plain request) with a JSON body."""
    resp = connection.respond(status, json.dumps(body) + ("\n" if newline else ""))
    resp.headers["Content-Type"] = "application/json"
    return resp
