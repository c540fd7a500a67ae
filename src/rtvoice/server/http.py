"""HTTP/1.1 side of the server: one asyncio ``Protocol`` per TCP connection, h11 for parsing, no framework.

Life of a connection (:class:`HttpConnection`):

1. Over ``max_connections``, or while draining: a raw ``503`` and close.
2. Wait for a request head: the peer must send its first byte within ``keepalive_timeout_s`` (else a silent
   close: an idle keep-alive connection) and the complete head within ``header_timeout_s`` counted from the
   start of the wait, never reset by trickling bytes (slowloris: ``408`` and close). A head past
   ``max_header_bytes`` is h11's ``431``; anything h11 refuses is a ``400``. Both close the connection.
3. The body (Content-Length or chunked, h11 decodes both) must arrive within ``body_timeout_s`` (``408``) and
   stay within ``max_body_bytes`` (``413``; a declared Content-Length over it is refused before reading the
   body).
4. The route's handler runs as a task while reading is paused (no pipelining; pipelined bytes wait in h11's
   buffer and are served in order afterwards). A handler that raises is a ``500`` plus a log line and the
   connection stays usable; one that runs past ``handler_timeout_s`` is a ``503``.
5. Unknown path ``404``, known path with another method ``405`` with ``Allow``; a WebSocket path without an
   upgrade ``426``. An upgrade to a WebSocket route runs the route's accept hook, then hands the transport to
   :class:`rtvoice.server.websocket.WebSocketConnection`.

:func:`start_server` runs all this on the current event loop and returns a :class:`RunningServer` (used by
``serve``, the tests and the demo, which bind loopback port 0).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol as TypingProtocol
from typing import cast

import h11

from rtvoice import metrics
from rtvoice.config import Settings
from rtvoice.server.api import (
    App,
    HttpHandler,
    Request,
    Response,
    WebSocket,
    WebSocketAccept,
    WebSocketHandler,
)
from rtvoice.server.limits import ErrorKind, ServerLimits, http_status
from rtvoice.server.websocket import WebSocketConnection, prepare_handshake

log = logging.getLogger("rtvoice.server")

#: Seconds to keep discarding a peer's input after an error response before closing (see ``_abort_with``).
LINGER_S = 2.0

_NEED_DATA = h11.NEED_DATA
_PAUSED = h11.PAUSED


class _Tracked(TypingProtocol):
    def shutdown(self) -> None: ...


class ServerState:
    """What every connection of one server shares: the app, the limits, the live connections."""

    def __init__(self, app: App, limits: ServerLimits, max_connections: int) -> None:
        self.app = app
        self.limits = limits
        self.max_connections = max_connections
        self.connections: set[_Tracked] = set()
        self.websockets: set[WebSocketConnection] = set()
        self.draining = False
        #: Set whenever a connection closes (the drain loop waits on it).
        self.changed = asyncio.Event()

    def connection_closed(self, conn: _Tracked) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            metrics.CONNECTIONS.dec()
        self.changed.set()


def _raw_error(status: int, text: str = "", extra: str = "") -> bytes:
    """A complete ``Connection: close`` error response, for answers given outside h11's state machine (before
    a request head was parsed, or when the connection is being dropped anyway)."""
    phrase = _reason(status).decode("ascii")
    body = (text or phrase).encode("utf-8") + b"\n"
    return (
        f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body


class HttpConnection(asyncio.Protocol):
    """One TCP connection speaking HTTP/1.1 until (maybe) it upgrades to a WebSocket."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=state.limits.max_header_bytes)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._peer: tuple[str, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        self._got_bytes = False
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._closing = False
        self._write_paused = False
        self._upgraded = False

    # --- asyncio.Protocol -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement the same interface.
        self._transport = cast(asyncio.Transport, transport)
        transport = self._transport
        state = self._state
        state.connections.add(self)
        metrics.CONNECTIONS.inc()
        peer = transport.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
        if state.draining or len(state.connections) > state.max_connections:
            metrics.CONNECTIONS_REJECTED.inc()
            metrics.HTTP_REQUESTS.labels("unmatched", "503").inc()
            if not state.draining:
                metrics.ERRORS.labels(ErrorKind.TOO_MANY_CONNECTIONS.value).inc()
            self._abort_with(http_status(ErrorKind.TOO_MANY_CONNECTIONS), "", "Retry-After: 1\r\n")
            return
        transport.set_write_buffer_limits(self._limits.write_high_water, self._limits.write_low_water)
        self._wait_for_request()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._got_bytes = True
        try:
            self._h11.receive_data(data)
        except RuntimeError:  # h11 is in an error state; we are closing anyway
            return
        self._drive()

    def eof_received(self) -> bool | None:
        if self._closing:
            if self._transport is not None:
                self._transport.close()  # the peer finished sending after our error response
            return None
        try:
            self._h11.receive_data(b"")
        except RuntimeError:
            return None
        if self._task is not None:
            return True  # half-closed by the peer: keep the socket open to send the response in flight
        self._drive()
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._state.connection_closed(self)

    # --- server side ----------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Server draining: close now if idle; a request in flight is answered with ``Connection: close``."""
        if self._task is None and self._transport is not None and not self._closing:
            self._closing = True
            self._cancel_timer()
            self._transport.close()

    # --- the request cycle ----------------------------------------------------------------------------------

    def _wait_for_request(self) -> None:
        now = self._loop.time()
        self._head_deadline = now + self._limits.header_timeout_s
        self._got_bytes = False
        self._arm(min(self._limits.keepalive_timeout_s, self._limits.header_timeout_s), self._idle_timeout)

    def _idle_timeout(self) -> None:
        self._timer = None
        if not self._got_bytes:
            self._close()  # an idle keep-alive connection: nothing to answer
            return
        remaining = self._head_deadline - self._loop.time()
        if remaining > 0:
            self._arm(remaining, self._request_timeout)
        else:
            self._request_timeout()

    def _request_timeout(self) -> None:
        self._timer = None
        metrics.ERRORS.labels(ErrorKind.TIMEOUT.value).inc()
        metrics.HTTP_REQUESTS.labels("unmatched", "408").inc()
        log.info("http %s: request not received in time; 408", self._peer)
        self._abort_with(http_status(ErrorKind.TIMEOUT))

    def _drive(self) -> None:
        """Pull events out of h11 until it needs more data or a handler is running."""
        conn = self._h11
        while self._task is None and not self._closing:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                too_large = exc.error_status_hint == 431
                kind = ErrorKind.HEADERS_TOO_LARGE if too_large else ErrorKind.MALFORMED_HTTP
                status = http_status(kind)
                metrics.ERRORS.labels(kind.value).inc()
                metrics.HTTP_REQUESTS.labels("unmatched", str(status)).inc()
                log.info("http %s: bad request (%s); %d", self._peer, exc, status)
                self._abort_with(status, str(exc))
                return
            if event is _NEED_DATA or event is _PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
                self._body.clear()
                length = _content_length(list(event.headers))
                if length is not None and length > self._limits.max_body_bytes:
                    self._too_large()
                    return
                if conn.client_is_waiting_for_100_continue and self._transport is not None:
                    # curl and others wait (about 1 s) for this before sending a body over 1 KiB.
                    go_on = h11.InformationalResponse(status_code=100, headers=[])
                    self._transport.write(conn.send(go_on) or b"")
                self._arm(self._limits.body_timeout_s, self._request_timeout)
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._limits.max_body_bytes:
                    self._too_large()
                    return
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._cancel_timer()
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _too_large(self) -> None:
        status = http_status(ErrorKind.BODY_TOO_LARGE)
        metrics.ERRORS.labels(ErrorKind.BODY_TOO_LARGE.value).inc()
        metrics.HTTP_REQUESTS.labels("unmatched", str(status)).inc()
        log.info("http %s: body over %d bytes; %d", self._peer, self._limits.max_body_bytes, status)
        self._abort_with(status, f"request body over {self._limits.max_body_bytes} bytes")

    def _dispatch(self) -> None:
        event = self._request
        assert event is not None and self._transport is not None
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        request = Request(
            method=event.method.decode("ascii"),
            target=target,
            path=path,
            query=query,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
            body=bytes(self._body),
            peer=self._peer,
        )
        self._body.clear()
        app = self._state.app
        accept = app.ws_routes.get(path)
        if accept is not None and request.method == "GET" and _wants_websocket(request):
            self._transport.pause_reading()
            self._task = self._loop.create_task(self._upgrade(request, accept))
            return
        handler = app.http_routes.get((request.method, path))
        if handler is None:
            allowed = app.methods_for(path)
            if allowed:
                self._respond(
                    Response(405, b"method not allowed\n", headers=[("allow", ", ".join(allowed))]), path
                )
            elif accept is not None:
                self._respond(Response(426, b"upgrade required\n", headers=[("upgrade", "websocket")]), path)
            else:
                self._respond(Response(404, b"not found\n"), "unmatched")
            return
        self._transport.pause_reading()
        self._task = self._loop.create_task(self._run(handler, request, path))

    async def _run(self, handler: HttpHandler, request: Request, route: str) -> None:
        try:
            async with asyncio.timeout(self._limits.handler_timeout_s):
                response = await handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not Response")
        except TimeoutError:
            metrics.ERRORS.labels(ErrorKind.TIMEOUT.value).inc()
            log.error("http %s %s: handler timed out after %.0f s; 503", request.method, route,
                      self._limits.handler_timeout_s)
            response = Response(503, b"handler timed out\n")
        except Exception:
            metrics.ERRORS.labels(ErrorKind.INTERNAL.value).inc()
            log.exception("http %s %s: handler raised; 500", request.method, route)
            response = Response(500, b"internal server error\n")
        self._task = None
        if self._closing:
            return
        self._respond(response, route)
        if not self._closing and self._transport is not None:
            self._transport.resume_reading()
            self._drive()

    def _respond(self, response: Response, route: str) -> None:
        """Send ``response`` through h11, then start the next request cycle (or close)."""
        transport = self._transport
        assert transport is not None
        conn = self._h11
        headers: list[tuple[str, str]] = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
        ]
        headers.extend(response.headers)
        if self._state.draining:
            headers.append(("connection", "close"))
        try:
            head = h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status))
            out = conn.send(head)
            parts = [out] if out else []
            if response.body:
                out = conn.send(h11.Data(data=response.body))
                if out:
                    parts.append(out)
            out = conn.send(h11.EndOfMessage())
            if out:
                parts.append(out)
        except h11.LocalProtocolError as exc:
            metrics.ERRORS.labels(ErrorKind.INTERNAL.value).inc()
            log.error("http %s: cannot send the handler's response (%s); 500", route, exc)
            metrics.HTTP_REQUESTS.labels(route, "500").inc()
            self._abort_with(500)
            return
        transport.write(b"".join(parts))
        metrics.HTTP_REQUESTS.labels(route, str(response.status)).inc()
        if conn.our_state is h11.MUST_CLOSE or self._state.draining:
            self._close()
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        self._wait_for_request()
        if self._h11.trailing_data[0]:
            self._got_bytes = True  # a pipelined request is already buffered

    async def _upgrade(self, request: Request, accept: WebSocketAccept) -> None:
        transport = self._transport
        assert transport is not None
        proto, rejection = prepare_handshake(request, self._limits)
        if rejection is not None:
            self._task = None
            metrics.ERRORS.labels(ErrorKind.MALFORMED_HTTP.value).inc()
            metrics.HTTP_REQUESTS.labels(request.path, rejection[9:12].decode("latin-1")).inc()
            log.info("websocket %s from %s: handshake refused: %s", request.path, self._peer,
                     proto.handshake_exc)
            self._closing = True
            transport.write(rejection)
            transport.close()
            return
        try:
            result = await accept(request)
        except Exception:
            metrics.ERRORS.labels(ErrorKind.INTERNAL.value).inc()
            log.exception("websocket %s: accept hook raised; 500", request.path)
            result = Response(500, b"internal server error\n")
        self._task = None
        if self._closing:
            return
        if isinstance(result, Response):
            # Refused: a plain HTTP answer (h11 allows declining an upgrade), then close: the client may
            # already
            # be sending frames we would otherwise parse as HTTP.
            result.headers.append(("connection", "close"))
            self._respond(result, request.path)
            self._close()
            return
        if self._state.draining:
            self._respond(Response(503, b"server shutting down\n"), request.path)
            self._close()
            return
        early, _ = self._h11.trailing_data
        metrics.HTTP_REQUESTS.labels(request.path, "101").inc()
        self._upgraded = True
        self._cancel_timer()
        state = self._state
        ws = WebSocketConnection(state, transport, request, proto)
        # The WebSocket takes this connection's place in the live set (its connection_lost does the
        # bookkeeping).
        state.connections.discard(self)
        state.connections.add(ws)
        factory: Callable[[WebSocket], WebSocketHandler] = result
        ws.start(factory, bytes(early), self._write_paused)
        if not transport.is_closing():
            transport.resume_reading()

    # --- helpers --------------------------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        self._closing = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _abort_with(self, status: int, text: str = "", extra_headers: str = "") -> None:
        """Answer ``status`` outside h11 and close the connection.

        A "lingering close": closing a socket whose receive buffer still holds unread bytes (the rest of an
        oversized head or body) makes the kernel send RST, and the peer may then lose our response. So we
        half-close our side and read (and discard) what the peer still sends, for at most ``LINGER_S``.
        """
        self._closing = True
        self._cancel_timer()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(_raw_error(status, text, extra_headers))
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = self._loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 already validated it
    return None


def _wants_websocket(request: Request) -> bool:
    upgrade = request.header("upgrade")
    return upgrade is not None and "websocket" in upgrade.lower()


class RunningServer:
    """A server listening on the current event loop (see :func:`start_server`)."""

    def __init__(self, server: asyncio.Server, state: ServerState, drain_timeout_s: float) -> None:
        self._server = server
        self._state = state
        self._drain_timeout_s = drain_timeout_s
        self._shutdown_task: asyncio.Task[None] | None = None
        self._port = int(server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The bound TCP port (useful after binding port 0)."""
        return self._port

    @property
    def active_connections(self) -> int:
        """Open TCP connections, HTTP and WebSocket."""
        return len(self._state.connections)

    @property
    def active_websockets(self) -> int:
        return len(self._state.websockets)

    @property
    def state(self) -> ServerState:
        return self._state

    async def shutdown(self, drain_timeout_s: float | None = None) -> None:
        """Graceful stop: stop accepting, run ``App.on_shutdown``, close idle HTTP connections, let WebSockets
        finish for up to ``drain_timeout_s`` (default: the settings'), then close them with 1001 and abort
        what is still open after the close-handshake timeout."""
        if self._shutdown_task is None:
            timeout = self._drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._shutdown_task)

    def close(self) -> None:
        """Start :meth:`shutdown` in the background (with the configured drain timeout)."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(self._drain_timeout_s))

    async def wait_closed(self) -> None:
        """Wait until a :meth:`close`/:meth:`shutdown` has finished."""
        if self._shutdown_task is not None:
            await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, drain_timeout_s: float) -> None:
        state = self._state
        state.draining = True
        self._server.close()
        for hook in state.app.on_shutdown:
            try:
                await hook()
            except Exception:
                log.exception("on_shutdown hook %r raised", hook)
        for conn in list(state.connections):
            if not isinstance(conn, WebSocketConnection):
                conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        if state.websockets:
            log.info("draining %d WebSocket(s) for up to %.1f s", len(state.websockets), drain_timeout_s)
        await self._wait_until(lambda: not state.websockets, deadline)
        for ws in list(state.websockets):
            ws.shutdown()
        close_wait = state.limits.ws_close_timeout_s + 1.0
        await self._wait_until(lambda: not state.connections, loop.time() + close_wait)
        for conn in list(state.connections):
            transport = getattr(conn, "_transport", None)
            if transport is not None:
                transport.abort()
        await self._wait_until(lambda: not state.connections, loop.time() + 1.0)
        await self._server.wait_closed()

    async def _wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        state = self._state
        loop = asyncio.get_running_loop()
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            state.changed.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await state.changed.wait()
            except TimeoutError:
                pass


async def start_server(
    app: App,
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    *,
    limits: ServerLimits | None = None,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Serve ``app`` on the running loop. ``host``/``port`` default to the settings'; pass ``sock`` to serve
    on an already-bound socket instead. ``reuse_port`` sets ``SO_REUSEPORT`` (several workers sharing one
    port)."""
    loop = asyncio.get_running_loop()
    state = ServerState(app, limits or ServerLimits(), settings.max_connections)
    if sock is not None:
        server = await loop.create_server(lambda: HttpConnection(state), sock=sock, backlog=1024)
    else:
        server = await loop.create_server(
            lambda: HttpConnection(state),
            settings.host if host is None else host,
            settings.port if port is None else port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
    try:
        for hook in app.on_startup:
            hook()
    except BaseException:  # a failing startup hook fails start_server: no server left running half set up
        server.close()
        raise
    return RunningServer(server, state, settings.drain_timeout_s)
