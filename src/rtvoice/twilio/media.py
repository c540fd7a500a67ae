"""Twilio Media Streams messages: a strict sans-I/O parser and an exact serializer.

Parsing turns one WebSocket text frame into a typed event. It is strict about what Twilio documents
(``sequenceNumber``, ``chunk`` and ``timestamp`` arrive as *strings* of decimal digits; ``sampleRate`` and
``channels`` are JSON numbers; payloads are standard base64 of raw μ-law of any length) and tolerant of what
Twilio may add (unknown events become :class:`Unknown`, unknown extra keys are ignored). Anything malformed
raises :class:`ProtocolViolation` and nothing else, whatever the input.

Serializing emits exactly the three messages Twilio accepts on a bidirectional stream (``media``, ``mark``,
``clear``) with exactly the documented keys: any extra key earns warning 31951 from Twilio. The strings are
built from templates, not ``json.dumps`` of a dict, because ``media`` is the per-frame hot path; the stream
SID and mark names are JSON-escaped once when they are not plain identifiers.
"""
from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Connected",
    "Dtmf",
    "Event",
    "Mark",
    "Media",
    "MessageWriter",
    "ProtocolViolation",
    "Start",
    "Stop",
    "Unknown",
    "clear_message",
    "mark_message",
    "media_message",
    "parse",
]


class ProtocolViolation(ValueError):
    """A Media Streams message that breaks the protocol. ``reason`` is a short machine-readable tag
    (``not_json``, ``not_object``, ``bad_event``, ``missing_field``, ``bad_field``, ``bad_base64``,
    ``bad_encoding``); the message says which field and why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Connected:
    """First message of every stream (no ``streamSid``)."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """Stream metadata, sent once right after :class:`Connected`."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    #: The TwiML ``<Parameter>`` name/value pairs.
    custom_parameters: dict[str, str]
    encoding: str
    sample_rate: int
    channels: int
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of caller audio: raw μ-law bytes (normally 160 = 20 ms, but any length is accepted)."""

    stream_sid: str
    sequence_number: int
    track: str
    chunk: int
    #: Presentation time in ms since the stream started: the call's clock.
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key press by the caller."""

    stream_sid: str
    sequence_number: int
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """The echo of a mark we sent: the audio queued before it has played (or was discarded by a clear)."""

    stream_sid: str
    sequence_number: int
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream stopped (the call ended or the stream was stopped)."""

    stream_sid: str
    sequence_number: int
    call_sid: str
    account_sid: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event this parser does not know. Twilio may add events; log and ignore them."""

    event: str


Event = Connected | Start | Media | Dtmf | Mark | Stop | Unknown

#: Longest decimal counter accepted: 18 digits fit any real counter and keep int() cheap on hostile input.
_MAX_DIGITS = 18
_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


def _required(parent: Mapping[str, Any], key: str) -> Any:
    """``parent[key]``; a missing (or null) field is a ``missing_field`` violation."""
    value = parent.get(key)
    if value is None:
        raise ProtocolViolation("missing_field", key)
    return value


def _obj(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = _required(parent, key)
    if not isinstance(value, dict):
        raise ProtocolViolation("bad_field", f"{key} must be an object")
    return value


def _str(parent: Mapping[str, Any], key: str) -> str:
    value = _required(parent, key)
    if not isinstance(value, str):
        raise ProtocolViolation("bad_field", f"{key} must be a string")
    return value


def _counter(parent: Mapping[str, Any], key: str) -> int:
    """A Twilio counter: a string of ASCII decimal digits (``"42"``), never a JSON number."""
    value = _required(parent, key)
    # isdigit() alone accepts non-ASCII digits such as '²'; int() alone accepts ' 4', '+4' and '4_0'.
    if not (isinstance(value, str) and 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit()):
        raise ProtocolViolation("bad_field", f"{key} must be a string of decimal digits")
    return int(value)


def _number(parent: Mapping[str, Any], key: str) -> int:
    """A JSON integer (``sampleRate``, ``channels``); booleans are not numbers."""
    value = _required(parent, key)
    if type(value) is not int:
        raise ProtocolViolation("bad_field", f"{key} must be an integer")
    return value


def _stream_sid(msg: Mapping[str, Any]) -> str:
    sid = _str(msg, "streamSid")
    if not sid:
        raise ProtocolViolation("bad_field", "streamSid is empty")
    return sid


def _is_counter(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit()


def _parse_media(msg: Mapping[str, Any]) -> Media:
    # The per-frame hot path: one pass of inline checks for the well-formed case; anything odd falls through
    # to the field-by-field checks below, which say exactly what is wrong.
    media = msg.get("media")
    if type(media) is dict:
        sid = msg.get("streamSid")
        seq = msg.get("sequenceNumber")
        chunk = media.get("chunk")
        stamp = media.get("timestamp")
        track = media.get("track")
        payload = media.get("payload")
        if (
            type(sid) is str
            and sid
            and type(track) is str
            and type(payload) is str
            and _is_counter(seq)
            and _is_counter(chunk)
            and _is_counter(stamp)
        ):
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True) if payload else b""
            except (binascii.Error, ValueError) as exc:
                raise ProtocolViolation("bad_base64", f"media.payload: {exc}") from None
            return Media(sid, int(seq), track, int(chunk), int(stamp), audio)  # type: ignore[arg-type]
    media = _obj(msg, "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise ProtocolViolation("missing_field" if payload is None else "bad_field", "media.payload")
    try:
        # strict_mode rejects characters outside the alphabet and bad padding instead of skipping them.
        audio = binascii.a2b_base64(payload, strict_mode=True) if payload else b""
    except (binascii.Error, ValueError) as exc:
        raise ProtocolViolation("bad_base64", f"media.payload: {exc}") from None
    return Media(
        _stream_sid(msg),
        _counter(msg, "sequenceNumber"),
        _str(media, "track"),
        _counter(media, "chunk"),
        _counter(media, "timestamp"),
        audio,
    )


def _parse_start(msg: Mapping[str, Any]) -> Start:
    start = _obj(msg, "start")
    stream_sid = _str(start, "streamSid")
    top_sid = msg.get("streamSid")
    if top_sid is not None and top_sid != stream_sid:
        raise ProtocolViolation("bad_field", "streamSid differs from start.streamSid")
    if not stream_sid:
        raise ProtocolViolation("bad_field", "start.streamSid is empty")
    tracks = start.get("tracks", [])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise ProtocolViolation("bad_field", "start.tracks must be a list of strings")
    params = start.get("customParameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ProtocolViolation("bad_field", "start.customParameters must map strings to strings")
    fmt = _obj(start, "mediaFormat")
    return Start(
        stream_sid=stream_sid,
        call_sid=_str(start, "callSid"),
        account_sid=_str(start, "accountSid"),
        tracks=tuple(tracks),
        custom_parameters=dict(params),
        encoding=_str(fmt, "encoding"),
        sample_rate=_number(fmt, "sampleRate"),
        channels=_number(fmt, "channels"),
        sequence_number=_counter(msg, "sequenceNumber"),
    )


def _parse_dtmf(msg: Mapping[str, Any]) -> Dtmf:
    dtmf = _obj(msg, "dtmf")
    digit = _str(dtmf, "digit")
    if digit not in _DTMF_DIGITS:
        raise ProtocolViolation("bad_field", "dtmf.digit must be one of 0-9 * # A-D")
    return Dtmf(_stream_sid(msg), _counter(msg, "sequenceNumber"), _str(dtmf, "track"), digit)


def _parse_mark(msg: Mapping[str, Any]) -> Mark:
    return Mark(_stream_sid(msg), _counter(msg, "sequenceNumber"), _str(_obj(msg, "mark"), "name"))


def _parse_stop(msg: Mapping[str, Any]) -> Stop:
    stop = _obj(msg, "stop")
    return Stop(
        _stream_sid(msg), _counter(msg, "sequenceNumber"), _str(stop, "callSid"), _str(stop, "accountSid")
    )


def _parse_connected(msg: Mapping[str, Any]) -> Connected:
    return Connected(_str(msg, "protocol"), _str(msg, "version"))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "media": _parse_media,
    "start": _parse_start,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
    "connected": _parse_connected,
}


def parse(text: str | bytes) -> Event:
    """Parse one Media Streams message (a WebSocket text frame) into a typed event.

    Raises :class:`ProtocolViolation` for anything that is not a well-formed message: invalid UTF-8 or JSON,
    a non-object, a missing or ill-typed field, bad base64. An unknown ``event`` value is not an error: it
    returns :class:`Unknown` so the caller can log it and carry on.
    """
    try:
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8")
        msg = json.loads(text)
    except (ValueError, RecursionError, TypeError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and int-conversion limits on huge numbers;
        # RecursionError covers hostile nesting depth.
        raise ProtocolViolation("not_json", type(exc).__name__) from None
    if not isinstance(msg, dict):
        raise ProtocolViolation("not_object", "a message must be a JSON object")
    event = msg.get("event")
    if not isinstance(event, str):
        raise ProtocolViolation("bad_event", "event must be a string")
    parser = _PARSERS.get(event)
    if parser is None:
        return Unknown(event)
    return parser(msg)


# --- serializer --------------------------------------------------------------------------------


def _json_string_body(value: str) -> str:
    """``value`` as the inside of a JSON string literal (without the quotes)."""
    if value.isascii() and value.isalnum():
        return value  # the common case (SIDs, generated mark names): nothing to escape
    return json.dumps(value)[1:-1]  # ASCII-escaped: lone surrogates stay encodable


_b2a_base64 = binascii.b2a_base64


def _b64(payload: bytes | bytearray | memoryview) -> str:
    return binascii.b2a_base64(payload, newline=False).decode("ascii")


class MessageWriter:
    """Serializer bound to one stream: the stream SID is validated and escaped once, so each ``media`` message
    costs one base64 encode and one string concatenation."""

    __slots__ = ("_clear", "_mark_prefix", "_media_prefix", "stream_sid")

    def __init__(self, stream_sid: str) -> None:
        if not isinstance(stream_sid, str) or not stream_sid:
            raise ValueError("stream_sid must be a non-empty string")
        self.stream_sid = stream_sid
        sid = _json_string_body(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":"' + sid + '","media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":"' + sid + '","mark":{"name":"'
        self._clear = '{"event":"clear","streamSid":"' + sid + '"}'

    def media(self, payload: bytes | bytearray | memoryview) -> str:
        """``{"event":"media","streamSid":…,"media":{"payload":<base64 raw μ-law>}}``."""
        return self._media_prefix + _b2a_base64(payload, newline=False).decode() + '"}}'

    def mark(self, name: str) -> str:
        """``{"event":"mark","streamSid":…,"mark":{"name":…}}``."""
        if type(name) is str and name.isascii() and name.isalnum():
            return self._mark_prefix + name + '"}}'  # the ledger's names (``m<seq>``): nothing to escape
        if not isinstance(name, str):
            raise ValueError("mark name must be a string")
        return self._mark_prefix + _json_string_body(name) + '"}}'

    def clear(self) -> str:
        """``{"event":"clear","streamSid":…}``."""
        return self._clear


def media_message(stream_sid: str, payload: bytes | bytearray | memoryview) -> str:
    """The ``media`` message carrying ``payload`` (raw μ-law 8 kHz, no header) for stream ``stream_sid``."""
    if not isinstance(stream_sid, str) or not stream_sid:
        raise ValueError("stream_sid must be a non-empty string")
    return (
        '{"event":"media","streamSid":"' + _json_string_body(stream_sid) + '","media":{"payload":"'
        + _b64(payload) + '"}}'
    )


def mark_message(stream_sid: str, name: str) -> str:
    """The ``mark`` message named ``name``: Twilio echoes it once the audio queued before it has played."""
    return MessageWriter(stream_sid).mark(name)


def clear_message(stream_sid: str) -> str:
    """The ``clear`` message: Twilio drops its buffered audio and returns every pending mark."""
    return MessageWriter(stream_sid).clear()
