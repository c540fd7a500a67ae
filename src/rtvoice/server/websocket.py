"""One accepted WebSocket: the websockets library's sans-I/O ``ServerProtocol`` driven by an asyncio
``Protocol``.

The HTTP connection (:mod:`rtvoice.server.http`) parses the upgrade request with h11, and this module takes
over the transport (``transport.set_protocol``) after the handshake. The handshake itself is done by
``ServerProtocol``: the request head h11 already parsed is re-serialised and fed to it (its parser starts by
expecting a request), and every byte that arrived after the head (h11's ``trailing_data``) is fed right after
the 101 is sent, so nothing the client sent early is lost.

The hot path (``data_received`` -> handler ``on_text_bytes`` or ``on_text`` -> ``send_text``) creates no task,
logs nothing and copies only what the websockets library itself copies (its read buffer, the unmasked payload,
the serialised frame).

Backpressure:

- outbound: while the transport's write buffer is above ``write_high_water`` (``pause_writing``), frames go to
  a per-connection queue bounded by ``send_queue_limit_bytes``. A peer that lets the queue overflow is not
  reading: the queue is dropped and the connection is closed with 1008 (and aborted if even the close frame
  cannot leave within the close timeout). Reading from that peer is paused meanwhile, so its own input does
  not pile up either.
- inbound: the application can call :meth:`WebSocketConnection.pause_reading` / ``resume_reading`` when it
  falls behind; TCP flow control then slows the peer down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from websockets.datastructures import Headers
from websockets.exceptions import ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from rtvoice import metrics
from rtvoice.server.api import Request, WebSocket, WebSocketHandler
from rtvoice.server.clientframes import server_text_frame
from rtvoice.server.fastframes import ENABLED as FASTPATH_ENABLED
from rtvoice.server.fastframes import fast_ready, next_data_frame
from rtvoice.server.limits import ErrorKind, ServerLimits, close_code

if TYPE_CHECKING:
    from rtvoice.server.http import ServerState

log = logging.getLogger("rtvoice.server")

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_OPEN = State.OPEN

#: Longest close reason in bytes (RFC 6455: control frame payload <= 125 bytes, 2 of them the code).
_MAX_CLOSE_REASON = 123

# Reasons reading is paused; reading resumes when none is left.
_PAUSED_BY_WRITE = 1
_PAUSED_BY_APP = 2


_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

#: ``RTVOICE_FASTPATH=0`` sends every frame through websockets' ``send_text`` (A/B runs).
_FAST_SEND = FASTPATH_ENABLED

def prepare_handshake(request: Request, limits: ServerLimits) -> tuple[ServerProtocol, bytes | None]:
    """Run the opening handshake's checks for an upgrade ``request`` (already parsed by h11).

    Returns the protocol and either None (handshake acceptable: send the 101 later with
    :meth:`WebSocketConnection.start`) or the bytes of the HTTP rejection to write before closing (bad
    ``Sec-WebSocket-Key``/``Version``, header lines the websockets parser refuses, ...).
    """
    proto = ServerProtocol(max_size=limits.max_ws_message_bytes, logger=log)
    head = WsRequest(request.target, Headers(request.headers)).serialize()
    proto.receive_data(head)
    events = proto.events_received()
    if len(events) != 1 or not isinstance(events[0], WsRequest):
        out = proto.data_to_send()
        return proto, b"".join(out) or _BAD_REQUEST
    response = proto.accept(events[0])
    if response.status_code != 101:
        proto.send_response(response)
        return proto, b"".join(proto.data_to_send())
    proto._rtvoice_response = response  # type: ignore[attr-defined]  # the 101, sent by start()
    return proto, None


class WebSocketConnection(asyncio.Protocol):
    """An open WebSocket (implements :class:`rtvoice.server.api.WebSocket`) and the transport's protocol."""

    def __init__(
        self,
        state: ServerState,
        transport: asyncio.Transport,
        request: Request,
        proto: ServerProtocol,
    ) -> None:
        self.request = request
        self._state = state
        self._limits = state.limits
        self._transport = transport
        self._proto = proto
        self._handler: WebSocketHandler | None = None
        #: the handler's optional ``on_text_bytes`` (see :class:`rtvoice.server.api.WebSocketHandler`)
        self._text_bytes: Callable[[bytes], bool] | None = None
        self._write_paused = False
        self._read_paused = 0
        self._queue: deque[bytes] = deque()
        self._queued = 0
        #: The most bytes ever held in the send queue (observability and the bounded-memory test).
        self.max_queued = 0
        self._eof_pending = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._frag_parts: list[bytes] = []
        self._frag_opcode: Opcode | None = None
        self._failed = False
        self._lost = False
        self._on_close_called = False
        #: While not None, ``_flush`` collects frames here and ``_uncork`` writes them at once.
        self._cork: list[bytes] | None = None

    # --- start ----------------------------------------------------------------------------------------------

    def start(
        self, factory: Callable[[WebSocket], WebSocketHandler], early_data: bytes, write_paused: bool
    ) -> None:
        """Send the 101, take over the transport, create the handler, then process bytes that came early."""
        proto = self._proto
        proto.send_response(proto._rtvoice_response)  # type: ignore[attr-defined]
        del proto._rtvoice_response  # type: ignore[attr-defined]
        self._write_paused = write_paused
        self._state.websockets.add(self)
        metrics.WEBSOCKETS.inc()
        self._transport.set_protocol(self)
        self._flush()
        try:
            self._handler = handler = factory(self)
            self._text_bytes = getattr(handler, "on_text_bytes", None)
        except Exception:
            log.exception("websocket %s: handler factory failed; closing 1011", self.request.path)
            self._fail(ErrorKind.INTERNAL, "internal error")
            return
        if write_paused:
            self._pause(_PAUSED_BY_WRITE)
        if early_data:
            self.data_received(early_data)

    # --- the WebSocket interface ----------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Queue one text message; never blocks (see the module docstring for the bound)."""
        proto = self._proto
        if proto.state is not _OPEN:
            return
        data = text.encode()
        # Fast path: the frame websockets would append to its writes (no extensions, no fragmented send, no
        # pending writes to keep in order, no debug logging), built here without Frame + BytesIO.
        if _FAST_SEND and not (proto.writes or proto.extensions or proto.expect_continuation_frame or proto.debug):
            self._write(server_text_frame(data))
            return
        proto.send_text(data)
        self._flush()

    def send_binary(self, data: bytes) -> None:
        """Queue one binary message (same rules as :meth:`send_text`)."""
        if self._proto.state is not _OPEN:
            return
        self._proto.send_binary(data)
        self._flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (idempotent); the peer has ``ws_close_timeout_s`` to answer."""
        if self._proto.state is not _OPEN:
            return
        raw = reason.encode()
        if len(raw) > _MAX_CLOSE_REASON:  # a control frame carries at most 125 bytes: 2 of code + reason
            reason = raw[:_MAX_CLOSE_REASON].decode("utf-8", "ignore")
        try:
            self._proto.send_close(code, reason)
        except ProtocolError:  # a code the application may not send (1005, 1006, out of range, ...)
            log.error("websocket %s: invalid close code %r from the application; closing 1011",
                      self.request.path, code)
            self._proto.send_close(1011, "")
        self._flush()
        self._arm_close_timer()

    @property
    def closed(self) -> bool:
        return self._proto.state is not _OPEN

    def pause_reading(self) -> None:
        """The application is behind: stop reading from this peer until :meth:`resume_reading`."""
        self._pause(_PAUSED_BY_APP)

    def resume_reading(self) -> None:
        self._resume(_PAUSED_BY_APP)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in our send queue (not counting the transport's own buffer)."""
        return self._queued

    # --- asyncio.Protocol -----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # Cork: everything the handler sends while it processes these bytes (an inbound frame's media and
        # mark messages, the 'clear' of a barge-in) leaves in one transport write (one send syscall) instead of
        # one per message.
        self._cork = []
        try:
            self._data_received(data)
        finally:
            self._uncork()

    def _uncork(self) -> None:
        cork = self._cork
        self._cork = None
        if cork:
            self._transport.write(cork[0] if len(cork) == 1 else b"".join(cork))

    def _data_received(self, data: bytes) -> None:
        proto = self._proto
        # Fast path (rtvoice.server.fastframes): whole, unfragmented, masked data frames at a frame boundary
        # are unframed here; the library gets everything from the first other frame on.
        pos = 0
        while self._handler is not None and not self._failed and fast_ready(proto):
            plain = next_data_frame(data, pos, proto.max_message_size)
            if plain is None:
                break
            opcode, payload, pos = plain
            self._deliver(opcode, payload)
        if pos:
            if pos == len(data):
                self._flush()
                return
            data = data[pos:]
        proto.receive_data(data)
        # After the handshake the protocol only emits frames.
        events: list[Frame] = proto.events_received()  # type: ignore[assignment]
        handler = self._handler
        for frame in events:
            if self._failed or handler is None:
                break
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    self._deliver(opcode, frame.data)  # type: ignore[arg-type]  # Frame.parse gives bytes
                else:
                    self._frag_opcode = opcode
                    self._frag_parts.append(frame.data)  # type: ignore[arg-type]
            elif opcode is _CONT:
                self._frag_parts.append(frame.data)  # type: ignore[arg-type]
                if frame.fin:
                    data_all = b"".join(self._frag_parts)
                    self._frag_parts.clear()
                    assert self._frag_opcode is not None
                    self._deliver(self._frag_opcode, data_all)
            # PING is answered by the protocol (the pong is in data_to_send); PONG needs nothing; CLOSE was
            # echoed.
        self._flush()
        if proto.parser_exc is not None and not self._failed:
            # The protocol failed the connection (1002 protocol error, 1009 too big, ...): count it once.
            self._failed = True
            sent = proto.close_sent
            kind = (
                ErrorKind.MESSAGE_TOO_BIG
                if sent is not None and sent.code == 1009
                else ErrorKind.MALFORMED_HTTP
                if sent is not None and sent.code == 1002
                else ErrorKind.PROTOCOL_VIOLATION
            )
            metrics.ERRORS.labels(kind.value).inc()
            log.info(
                "websocket %s from %s: %s; closing %s",
                self.request.path,
                self.request.peer,
                proto.parser_exc,
                sent.code if sent is not None else None,
            )
            self._arm_close_timer()

    def eof_received(self) -> bool | None:
        self._proto.receive_eof()
        self._flush()
        return None  # let the transport close itself

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause(_PAUSED_BY_WRITE)

    def resume_writing(self) -> None:
        self._write_paused = False
        queue = self._queue
        transport = self._transport
        while queue and not self._write_paused:
            data = queue.popleft()
            self._queued -= len(data)
            transport.write(data)  # may call pause_writing() again
        if not queue and not self._write_paused:
            if self._eof_pending:
                self._eof_pending = False
                transport.close()
            self._resume(_PAUSED_BY_WRITE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._queue.clear()
        self._queued = 0
        state = self._state
        state.websockets.discard(self)
        state.connection_closed(self)
        metrics.WEBSOCKETS.dec()
        proto = self._proto
        if proto.close_rcvd is not None:
            code: int | None = proto.close_rcvd.code
            reason = proto.close_rcvd.reason
        elif proto.close_sent is not None:
            code, reason = proto.close_sent.code, proto.close_sent.reason
        else:
            code, reason = None, ""
        metrics.WEBSOCKETS_CLOSED.labels(str(code) if code is not None else "none").inc()
        if self._handler is not None and not self._on_close_called:
            self._on_close_called = True
            try:
                self._handler.on_close(code, reason)
            except Exception:
                log.exception("websocket %s: on_close raised", self.request.path)

    # --- server side ----------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Server shutting down: close with 1001 (the drain wait happens in the server)."""
        self.close(close_code(ErrorKind.SHUTTING_DOWN), "server shutting down")

    # --- internals ------------------------------------------------------------------------------------------

    def _deliver(self, opcode: Opcode, data: bytes) -> None:
        handler = self._handler
        assert handler is not None
        if opcode is _TEXT:
            fast = self._text_bytes
            if fast is not None:
                # the handler may take the raw bytes (a compiled parser); it only accepts ASCII, so whatever it
                # takes is valid UTF-8, and whatever it leaves is decoded strictly below (1007 if invalid)
                try:
                    if fast(data):
                        return
                except Exception:
                    self._handler_failed("on_text_bytes")
                    return
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self._fail(ErrorKind.INVALID_UTF8, "invalid UTF-8 in text message")
                return
            try:
                handler.on_text(text)
            except Exception:
                self._handler_failed("on_text")
        else:
            try:
                handler.on_binary(data)
            except Exception:
                self._handler_failed("on_binary")

    def _handler_failed(self, where: str) -> None:
        log.exception("websocket %s from %s: handler %s raised; closing 1011", self.request.path,
                      self.request.peer, where)
        self._fail(ErrorKind.INTERNAL, "internal error")

    def _fail(self, kind: ErrorKind, reason: str) -> None:
        """Close because of ``kind`` (its close code from the limits table), counting it."""
        metrics.ERRORS.labels(kind.value).inc()
        self._failed = True
        self._frag_parts.clear()
        self.close(close_code(kind), reason)

    def _write(self, data: bytes) -> bool:
        """One serialised frame out: queued while writing is paused, corked during a read, else written.
        False when it overflowed the send queue (the connection is closing 1008)."""
        if self._write_paused:
            self._queue.append(data)
            self._queued += len(data)
            if self._queued > self.max_queued:
                self.max_queued = self._queued
            if self._queued > self._limits.send_queue_limit_bytes:
                self._overflow()
                return False
        elif self._cork is not None:
            self._cork.append(data)
        else:
            self._transport.write(data)
        return True

    def _flush(self) -> None:
        transport = self._transport
        for data in self._proto.data_to_send():
            if data:
                if not self._write(data):
                    return
            else:
                # SEND_EOF: the server closes TCP once the close frame (and anything before it) is out.
                self._uncork()
                self._arm_close_timer()
                if self._queue:
                    self._eof_pending = True
                else:
                    transport.close()

    def _overflow(self) -> None:
        """The peer stopped reading: drop what is queued (bounded memory) and close 1008."""
        self._queue.clear()
        self._queued = 0
        metrics.ERRORS.labels(ErrorKind.SEND_QUEUE_OVERFLOW.value).inc()
        log.warning(
            "websocket %s from %s: send queue over %d bytes (peer not reading); closing 1008",
            self.request.path,
            self.request.peer,
            self._limits.send_queue_limit_bytes,
        )
        self._failed = True
        if self._proto.state is _OPEN:
            self._proto.send_close(close_code(ErrorKind.SEND_QUEUE_OVERFLOW), "send queue overflow")
        self._arm_close_timer()
        self._flush()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._lost:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self._limits.ws_close_timeout_s, self._close_timeout)

    def _close_timeout(self) -> None:
        self._close_timer = None
        if not self._lost:
            self._transport.abort()

    def _pause(self, why: int) -> None:
        if not self._read_paused and not self._transport.is_closing():
            self._transport.pause_reading()
        self._read_paused |= why

    def _resume(self, why: int) -> None:
        if not self._read_paused & why:
            return
        self._read_paused &= ~why
        if not self._read_paused and not self._transport.is_closing():
            self._transport.resume_reading()
