"""Every limit and timeout of the server, and the one table mapping error kinds to HTTP statuses / close
codes.

The constants are the defaults; :class:`ServerLimits` carries them (tests shrink the timeouts). Each limit
says what it costs in memory per connection, so that ``max_connections * worst case`` can be reasoned about:

- an HTTP connection holds at most ``MAX_HEADER_BYTES`` of unparsed head plus ``MAX_BODY_BYTES`` of body;
- a WebSocket holds at most ``MAX_WS_MESSAGE_BYTES`` of a fragmented inbound message being assembled, plus the
  transport's write buffer up to ``WRITE_HIGH_WATER`` plus our own send queue up to
  ``SEND_QUEUE_LIMIT_BYTES``.

So the worst case is about 1.2 MiB per WebSocket and 80 KiB per HTTP connection: with the default
``max_connections`` of 4096 and every peer hostile at once that is ~5 GiB, which is why the send queue limit
is the one to lower on small hosts (a Twilio media stream needs ~16 KiB/s of outbound text, so 1 MiB is >60 s
of slack).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Request line + headers. h11's ``max_incomplete_event_size``: a head that is still incomplete past this
#: size is
#: answered 431. Memory: at most this much unparsed head buffered per connection.
MAX_HEADER_BYTES = 16 * 1024
#: Request body (Content-Length or chunked). Twilio's webhook form posts are ~1-2 KiB. Memory: buffered in
#: full.
MAX_BODY_BYTES = 64 * 1024
#: One WebSocket message, after reassembling fragments (a 20 ms media frame is ~300 bytes of JSON). Memory: a
#: fragmented message is buffered until its last fragment.
MAX_WS_MESSAGE_BYTES = 64 * 1024
#: Our own per-WebSocket queue of outbound bytes held while the transport says ``pause_writing``. Past it the
#: peer
#: is considered stuck and is closed with 1008. Memory: up to this much per slow peer, on top of the
#: transport's
#: own buffer (``WRITE_HIGH_WATER``).
SEND_QUEUE_LIMIT_BYTES = 1024 * 1024
#: Transport write-buffer high/low water marks: above high the transport calls ``pause_writing`` and we queue
#: in
#: our own bounded queue instead (and stop reading from that peer); below low it calls ``resume_writing``.
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024

#: Seconds for a full request head to arrive, counted from the connection (or the end of the previous
#: response),
#: not reset by each byte: a slowloris peer dribbling one byte a second is cut off after this.
HEADER_TIMEOUT_S = 10.0
#: Seconds an idle keep-alive connection (no byte of a next request) is kept open.
KEEPALIVE_TIMEOUT_S = 5.0
#: Seconds for a request body to arrive in full once the head is in.
BODY_TIMEOUT_S = 30.0
#: Seconds to wait for the peer's close frame / TCP close after we sent a close frame, before aborting.
WS_CLOSE_TIMEOUT_S = 5.0
#: Seconds an HTTP handler may run before the request is answered 503 (a stuck handler must not pin a socket).
HANDLER_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The limits one server instance runs with (defaults: the constants above)."""

    max_header_bytes: int = MAX_HEADER_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    max_ws_message_bytes: int = MAX_WS_MESSAGE_BYTES
    send_queue_limit_bytes: int = SEND_QUEUE_LIMIT_BYTES
    write_high_water: int = WRITE_HIGH_WATER
    write_low_water: int = WRITE_LOW_WATER
    header_timeout_s: float = HEADER_TIMEOUT_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    ws_close_timeout_s: float = WS_CLOSE_TIMEOUT_S
    handler_timeout_s: float = HANDLER_TIMEOUT_S


class ErrorKind(enum.Enum):
    """What went wrong, independent of how it is answered. See :data:`ANSWERS`."""

    HEADERS_TOO_LARGE = "headers_too_large"
    BODY_TOO_LARGE = "body_too_large"
    MALFORMED_HTTP = "malformed_http"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BAD_SIGNATURE = "bad_signature"
    MESSAGE_TOO_BIG = "message_too_big"
    BAD_STREAM_TOKEN = "bad_stream_token"
    PROTOCOL_VIOLATION = "protocol_violation"
    INVALID_UTF8 = "invalid_utf8"
    SEND_QUEUE_OVERFLOW = "send_queue_overflow"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


#: The one place that decides how each error kind is answered: (HTTP status or None, close code or None).
#: HTTP statuses apply before a WebSocket is accepted, close codes after.
ANSWERS: dict[ErrorKind, tuple[int | None, int | None]] = {
    ErrorKind.HEADERS_TOO_LARGE: (431, None),
    ErrorKind.BODY_TOO_LARGE: (413, None),
    ErrorKind.MALFORMED_HTTP: (400, 1002),
    ErrorKind.TOO_MANY_CONNECTIONS: (503, None),
    ErrorKind.TIMEOUT: (408, None),
    ErrorKind.NOT_FOUND: (404, None),
    ErrorKind.METHOD_NOT_ALLOWED: (405, None),
    ErrorKind.BAD_SIGNATURE: (403, None),
    ErrorKind.MESSAGE_TOO_BIG: (413, 1009),
    ErrorKind.BAD_STREAM_TOKEN: (403, 1008),
    ErrorKind.PROTOCOL_VIOLATION: (400, 1008),
    ErrorKind.INVALID_UTF8: (400, 1007),
    ErrorKind.SEND_QUEUE_OVERFLOW: (None, 1008),
    ErrorKind.SHUTTING_DOWN: (503, 1001),
    ErrorKind.INTERNAL: (500, 1011),
}


def http_status(kind: ErrorKind) -> int:
    """The HTTP status answering ``kind`` (500 if the kind has none: a programming error, not a peer's)."""
    status = ANSWERS[kind][0]
    return status if status is not None else 500


def close_code(kind: ErrorKind) -> int:
    """The WebSocket close code answering ``kind`` (1011 if the kind has none)."""
    code = ANSWERS[kind][1]
    return code if code is not None else 1011
