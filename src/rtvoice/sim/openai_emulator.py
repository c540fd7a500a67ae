"""A local emulator of the OpenAI Realtime API (GA interface) over WebSocket, for tests and offline use.

It speaks the GA wire protocol described in ``shared/reference/vendors.md`` §A:

* ``GET /v1/realtime?model=...`` with ``Authorization: Bearer <key>`` (HTTP 401 otherwise); the retired beta
  handshake (``OpenAI-Beta: realtime=v1`` or the ``openai-beta.realtime-v1`` subprotocol) gets the
  ``beta_api_shape_disabled`` error and close 4000.
* every client event is validated against the openai SDK's own pydantic models (``RealtimeClientEvent``), with
  unknown fields rejected the way OpenAI does (``Unknown parameter: 'session.input_audio_format'.``); a bad
  event gets an ``error`` event naming the parameter and the client's ``event_id``, and the socket stays open.
* ``session.created`` / ``session.updated`` (full effective config), server VAD (webrtcvad) on appended audio,
  ``input_audio_buffer.*``, scripted replies rendered by :mod:`rtvoice.sim.voice` in the session's output
  format (or text-only), function calls, ``response.cancel``, ``conversation.item.truncate`` (validated).
* fault injection (:class:`OpenAIFaults`): refused handshakes, dropped sockets mid-response, injected errors,
  stalled first audio, failed responses and a (short) session duration limit.

Layout: :class:`EventValidator`, :class:`ServerVad`, :class:`ScriptCursor` and :func:`usage_for` are plain
sans-I/O classes; :class:`RealtimeSession` holds one connection's state and :class:`OpenAIRealtimeEmulator` is
the thin ``websockets`` edge.

Usage::

    async with OpenAIRealtimeEmulator(Script(["Hello, how can I help?"])) as emu:
        client = AsyncOpenAI(api_key="test", websocket_base_url=emu.url)
        async with client.realtime.connect(model="gpt-realtime-2") as conn:
            ...
        emu.sessions[0].received  # the validated client events of that session
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, get_args
from urllib.parse import parse_qs, urlsplit

import numpy as np
import webrtcvad
from pydantic import BaseModel, TypeAdapter, ValidationError
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from rtvoice.audio import Resampler, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from rtvoice.sim import voice
from rtvoice.sim.emulator_base import EmulatorServer, json_response

log = logging.getLogger("rtvoice.sim.openai")

JSON = dict[str, Any]

DEFAULT_MODEL = "gpt-realtime-2"
BETA_MESSAGE = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."


# ------------------------------------------------------------------------------------------------ script


@dataclass(frozen=True)
class FunctionCall:
    """A scripted tool call: the reply is a ``function_call`` output item instead of speech."""

    name: str
    arguments: str = "{}"
    call_id: str | None = None


@dataclass(frozen=True)
class Reply:
    """One scripted assistant turn.

    ``text`` is spoken (or written, in text-only sessions). ``user_transcript`` is what the emulator "heard"
    in the caller's audio turn that triggers this reply (sent as the input transcription). ``match``: when
    set, this reply is chosen for a user turn whose text contains it (case-insensitive), ahead of the
    in-order replies.
    """

    text: str = ""
    user_transcript: str | None = None
    match: str | None = None
    function_call: FunctionCall | None = None


class Script:
    """Replies per user turn: in order, or by matching the user's text. Past the end, ``default`` repeats."""

    def __init__(self, replies: Iterable[str | Reply] = (), default: str | Reply | None = "Sure.") -> None:
        self.replies: list[Reply] = [r if isinstance(r, Reply) else Reply(text=r) for r in replies]
        self.default: Reply | None = Reply(text=default) if isinstance(default, str) else default

    @classmethod
    def of(cls, script: Script | Sequence[str | Reply] | None) -> Script:
        """``script`` itself, a script of these replies, or (None) the default-only script."""
        if isinstance(script, Script):
            return script
        return cls() if script is None else cls(script)

    def cursor(self) -> ScriptCursor:
        """A per-session position in the script."""
        return ScriptCursor(self)


class ScriptCursor:
    """A session's walk through a :class:`Script` (sans-I/O)."""

    def __init__(self, script: Script) -> None:
        self._ordered = [r for r in script.replies if r.match is None]
        self._matched = [r for r in script.replies if r.match is not None]
        self._default = script.default
        self._pos = 0

    def peek(self) -> Reply | None:
        """The reply the next unmatched turn would get (used for the transcript of an audio turn)."""
        if self._pos < len(self._ordered):
            return self._ordered[self._pos]
        return self._default

    def next(self, user_text: str | None) -> Reply:
        """Consume the reply for a user turn whose text (if known) is ``user_text``."""
        if user_text:
            low = user_text.lower()
            for r in self._matched:
                if r.match is not None and r.match.lower() in low:
                    return r
        if self._pos < len(self._ordered):
            self._pos += 1
            return self._ordered[self._pos - 1]
        return self._default or Reply(text="")


# ------------------------------------------------------------------------------------------------ validation


class ClientEventError(Exception):
    """A client event OpenAI would reject; carries the fields of the ``error`` event."""

    def __init__(
        self, message: str, code: str | None, param: str | None, event_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id


def _client_event_models() -> dict[str, type[BaseModel]]:
    from openai.types.realtime.realtime_client_event import RealtimeClientEvent

    union = get_args(RealtimeClientEvent)[0]  # Annotated[Union[...], PropertyInfo] -> Union[...]
    out: dict[str, type[BaseModel]] = {}
    for cls in get_args(union):
        literal = cls.model_fields["type"].annotation
        out[get_args(literal)[0]] = cls
    return out


def _extras(value: Any, path: str = "") -> list[str]:
    """Dotted paths of fields the SDK models accepted only as extras (they allow extras; OpenAI does not)."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found.extend(f"{path}{k}" for k in value.model_extra or {})
        for name in value.model_fields_set:
            found.extend(_extras(getattr(value, name), f"{path}{name}."))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(_extras(v, f"{path}[{i}]."))
    return found


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _json_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return "null"


def _param(loc: Sequence[int | str]) -> str:
    # pydantic puts union branch names (model class names, "literal[...]", "function-after[...]") into the
    # location; OpenAI's param is the JSON path of the field only.
    parts: list[str] = []
    for seg in loc:
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
        elif seg[:1].isupper() or "[" in seg or seg in ("str", "int", "float", "bool", "none"):
            continue
        else:
            parts.append(("." if parts else "") + seg)
    return "".join(parts)


_APPEND_TYPE = "input_audio_buffer.append"
_APPEND_KEYS = frozenset({"type", "audio", "event_id"})
_COLONS = frozenset({":", ": "})  # compact (rtvoice's templates) and json.dumps' default (the openai SDK)
_COMMAS = frozenset({",", ", "})
_MAX_APPEND_AUDIO = 15 * 1024 * 1024  #: bytes of audio per append (OpenAI's limit)


class EventValidator:
    """Validates raw client frames against the openai SDK's Realtime client-event models (sans-I/O)."""

    def __init__(self) -> None:
        self._models = _client_event_models()
        self._adapters = {t: TypeAdapter(m) for t, m in self._models.items()}
        self._append_adapter = self._adapters[_APPEND_TYPE]

    @property
    def event_types(self) -> list[str]:
        """The client event types of the GA union."""
        return sorted(self._models)

    def validate(self, text: str | bytes) -> tuple[BaseModel, JSON]:
        """Parse one frame; returns (SDK model, the raw dict) or raises :class:`ClientEventError`."""
        model, raw, _audio = self.validate_with_audio(text)
        return model, raw

    def validate_with_audio(self, text: str | bytes) -> tuple[BaseModel, JSON, bytes | None]:
        """Like :meth:`validate`, plus the decoded audio of an ``input_audio_buffer.append`` (else None).

        Appends are ~all of the traffic (one per 40 ms per call), so a plainly written one (see
        :meth:`_fast_append`) skips ``json.loads`` + pydantic and its audio is decoded once, here; everything
        else -- and any append the fast path is not sure about -- goes through the full schema path.
        """
        fast = self._fast_append(text)
        if fast is not None:
            return fast
        return self._validate_full(text)

    def _fast_append(self, text: str | bytes) -> tuple[BaseModel, JSON, bytes] | None:
        """An append in a plain layout, validated without the JSON parser; None = "not sure, use the full path".

        Accepted: one flat object whose keys are exactly ``type`` + ``audio`` (+ optional ``event_id``), in any
        order, each once, separated by ``,``/``:`` with at most the one space ``json.dumps`` puts after them,
        all values plain ASCII strings without escapes or control characters (so the text between two ``"`` IS
        the value), ``type`` the append literal and ``audio`` strict base64 within the size limit. For such a
        text json.loads + the SDK model + ``_semantic`` cannot reject, so the outcome is the same; every
        error (bad base64, oversize, escapes, odd layouts) is left to the full path, which words it.
        """
        if isinstance(text, bytes):
            if not (text[:2] == b'{"' and text[-2:] == b'"}' and text.isascii()) or b"\\" in text:
                return None
            parts: list[str] = text.decode("ascii").split('"')
        else:
            if not (text[:2] == '{"' and text[-2:] == '"}' and text.isascii()) or "\\" in text:
                return None
            parts = text.split('"')
        # '{', k1, ':', v1, ',', k2, ':', v2, '}'  -> 9 parts for two members, 13 for three.
        n = len(parts)
        if n != 9 and n != 13:
            return None
        if parts[0] != "{" or parts[-1] != "}":
            return None
        raw: JSON = {}
        for i in range(1, n - 1, 4):
            if parts[i + 1] not in _COLONS or (i + 3 < n - 1 and parts[i + 3] not in _COMMAS):
                return None
            key = parts[i]
            if key in raw or key not in _APPEND_KEYS:
                return None
            raw[key] = parts[i + 2]
        if raw.get("type") != _APPEND_TYPE or "audio" not in raw:
            return None
        event_id = raw.get("event_id")
        # JSON strings may not hold control characters (json.loads rejects them): only printable ASCII here.
        if event_id is not None and not event_id.isprintable():
            return None
        audio_b64: str = raw["audio"]
        if len(audio_b64) * 3 // 4 > _MAX_APPEND_AUDIO:
            return None
        try:
            # strict_mode accepts a subset of what b64decode(validate=True) accepts, with the same bytes
            # (tests/test_sim_openai_emulator_fastappend.py); anything it refuses goes the full path.
            audio = binascii.a2b_base64(audio_b64, strict_mode=True)
        except binascii.Error:
            return None
        # The SDK model still comes from the schema (validate_python on the dict: ~1 us; model_construct is
        # ~12 us in pydantic 2), and it cannot fail or hold extras for these three string members.
        model = self._append_adapter.validate_python(raw)
        return model, raw, audio

    def _validate_full(self, text: str | bytes) -> tuple[BaseModel, JSON, bytes | None]:
        """The full path: json.loads, the SDK's pydantic model, unknown-field walk, semantic rules."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ClientEventError(
                f"We could not parse the JSON body of your request. ({exc})", "invalid_json", None
            ) from None
        if not isinstance(raw, dict):
            raise ClientEventError(
                "Invalid type for event: expected an object, but got " + _json_kind(raw) + " instead.",
                "invalid_type",
                None,
            )
        event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
        etype = raw.get("type")
        if "type" not in raw:
            raise ClientEventError(
                "Missing required parameter: 'type'.", "missing_required_parameter", "type", event_id
            )
        if not isinstance(etype, str) or etype not in self._adapters:
            supported = ", ".join(f"'{t}'" for t in self.event_types)
            raise ClientEventError(
                f"Invalid value: '{etype}'. Supported values are: {supported}.",
                "invalid_value",
                "type",
                event_id,
            )
        try:
            model = self._adapters[etype].validate_python(raw)
        except ValidationError as exc:
            raise self._translate(exc, raw, event_id) from None
        extras = _extras(model, "")
        if extras:
            raise ClientEventError(
                f"Unknown parameter: '{extras[0]}'.", "unknown_parameter", extras[0], event_id
            )
        return model, raw, self._semantic(etype, raw, event_id)

    @staticmethod
    def _translate(exc: ValidationError, raw: JSON, event_id: str | None) -> ClientEventError:
        # The deepest error is the most specific (the union branch that got furthest).
        err = max(exc.errors(), key=lambda e: len(e["loc"]))
        param = _param(err["loc"])
        kind = err["type"]
        if kind == "missing":
            return ClientEventError(
                f"Missing required parameter: '{param}'.", "missing_required_parameter", param, event_id
            )
        if kind in ("literal_error", "enum"):
            expected = err.get("ctx", {}).get("expected", "")
            return ClientEventError(
                f"Invalid value: '{err['input']}'. Supported values are: {expected}.",
                "invalid_value",
                param,
                event_id,
            )
        if kind in _TYPE_NAMES:
            return ClientEventError(
                f"Invalid type for '{param}': expected {_TYPE_NAMES[kind]}, "
                f"but got {_json_kind(err['input'])} instead.",
                "invalid_type",
                param,
                event_id,
            )
        return ClientEventError(
            f"Invalid value for '{param}': {err['msg']}.", "invalid_value", param, event_id
        )

    @staticmethod
    def _semantic(etype: str, raw: JSON, event_id: str | None) -> bytes | None:
        # Rules the schema cannot express but the service enforces; returns an append's decoded audio.
        if etype == "session.update":
            mods = raw["session"].get("output_modalities")
            if mods is not None and (len(mods) != 1):
                raise ClientEventError(
                    "Invalid value for 'session.output_modalities': it is not possible to request both text "
                    "and audio; use ['audio'] (includes a transcript) or ['text'].",
                    "invalid_value",
                    "session.output_modalities",
                    event_id,
                )
        if etype == "input_audio_buffer.append":
            try:
                audio = base64.b64decode(raw["audio"], validate=True)
            except (binascii.Error, ValueError):
                raise ClientEventError(
                    "Invalid 'audio'. Expected base64-encoded audio bytes.",
                    "invalid_value",
                    "audio",
                    event_id,
                ) from None
            if len(raw["audio"]) * 3 // 4 > _MAX_APPEND_AUDIO:
                raise ClientEventError(
                    "Audio chunk too large: at most 15 MiB per input_audio_buffer.append.",
                    "invalid_value",
                    "audio",
                    event_id,
                )
            return audio
        return None


# ---------------------------------------------------------------------------------------------- audio formats


def format_of(fmt: JSON | None) -> str:
    """'pcmu' | 'pcma' | 'pcm' from a GA format object ({'type': 'audio/pcmu'} ...)."""
    t = (fmt or {}).get("type") or "audio/pcm"
    return {"audio/pcmu": "pcmu", "audio/pcma": "pcma"}.get(t, "pcm")


def bytes_per_ms(fmt: str) -> int:
    """Bytes per millisecond of a session audio format."""
    return 48 if fmt == "pcm" else 8


def decode_to_8k(data: bytes, fmt: str) -> voice.Int16Array:
    """Session-format bytes (whole samples) -> 8 kHz samples for the VAD ('pcm' is 24 kHz, one shot)."""
    if fmt == "pcmu":
        return ulaw_decode(data)
    if fmt == "pcma":
        return alaw_decode(data)
    return Resampler(24000, 8000).process(data)


def encode_from_pcm(samples: voice.Int16Array, fmt: str) -> bytes:
    """Samples rendered at the format's rate -> session-format bytes."""
    if fmt == "pcmu":
        return bytes(ulaw_encode(samples))
    if fmt == "pcma":
        return bytes(alaw_encode(samples))
    return samples.astype("<i2").tobytes()


# ------------------------------------------------------------------------------------------------ VAD


class ServerVad:
    """OpenAI-style server VAD on appended audio (sans-I/O): webrtcvad + an energy gate, 20 ms frames.

    :meth:`feed` returns ``("speech_started", audio_start_ms)`` / ``("speech_stopped", audio_end_ms)``
    decisions in buffer time (ms of audio appended since the session started), as OpenAI's ``audio_start_ms``.
    """

    FRAME = 160  # 20 ms at 8 kHz

    def __init__(
        self,
        fmt: str,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        onset_ms: int = 60,
        rate: int = 24000,
    ) -> None:
        self.fmt = fmt
        self.rate = rate  # of 'pcm' input (8 kHz for the G.711 formats)
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.onset_frames = max(1, onset_ms // 20)
        # threshold 0..1 maps to webrtcvad aggressiveness and an energy floor (-55 dBFS .. -25 dBFS).
        self._vad = webrtcvad.Vad(min(3, max(0, int(threshold * 4))))
        self._floor = 32768.0 * 10 ** ((-55.0 + 30.0 * threshold) / 20.0)
        self._pending = b""  # a trailing odd byte of 'pcm' input
        # 'pcm' input goes to 8 kHz through the core's streaming resampler (state carries across feeds).
        self._resampler = Resampler(rate, 8000) if fmt == "pcm" and rate != 8000 else None
        self._rest: voice.Int16Array = np.zeros(0, dtype=np.int16)
        self.position_ms = 0  # audio consumed, ms
        self.in_speech = False
        self._voiced_run = 0
        self._silence_ms = 0
        self._last_voiced_end = 0

    def feed(self, data: bytes) -> list[tuple[str, int]]:
        """Feed session-format bytes; returns VAD transitions."""
        out: list[tuple[str, int]] = []
        if self.fmt == "pcm":
            buf = self._pending + data
            cut = len(buf) & ~1
            self._pending = buf[cut:]
            if self._resampler is None:
                samples = np.frombuffer(buf[:cut], dtype="<i2").astype(np.int16)
            else:
                samples = self._resampler.process(buf[:cut])
        else:
            samples = decode_to_8k(data, self.fmt)
        if len(self._rest):  # the 8 kHz remainder carries over between calls
            samples = np.concatenate([self._rest, samples])
        n = len(samples) // self.FRAME * self.FRAME
        self._rest = samples[n:]
        wide = samples[:n].astype(np.float64)  # one conversion per feed; a dot product per frame for the RMS
        for i in range(0, n, self.FRAME):
            frame = samples[i : i + self.FRAME]
            start_ms = self.position_ms
            self.position_ms += 20
            w = wide[i : i + self.FRAME]
            rms = math.sqrt(float(np.dot(w, w)) / self.FRAME)
            voiced = rms >= self._floor and self._vad.is_speech(frame.tobytes(), 8000)
            if voiced:
                self._voiced_run += 1
                self._silence_ms = 0
                self._last_voiced_end = self.position_ms
                if not self.in_speech and self._voiced_run >= self.onset_frames:
                    self.in_speech = True
                    onset = start_ms - (self.onset_frames - 1) * 20
                    out.append(("speech_started", max(0, onset - self.prefix_padding_ms)))
            else:
                self._voiced_run = 0
                if self.in_speech:
                    self._silence_ms += 20
                    if self._silence_ms >= self.silence_duration_ms:
                        self.in_speech = False
                        self._silence_ms = 0
                        out.append(("speech_stopped", self._last_voiced_end))
        return out


# ------------------------------------------------------------------------------------------------ config


@dataclass
class OpenAIFaults:
    """Fault injection knobs (may be changed while the emulator runs)."""

    refuse_connections: bool = False  #: answer the WebSocket handshake with HTTP 503
    drop_after_audio_ms: float | None = None  #: abort the TCP connection after this much response audio
    stall_first_audio: bool = False  #: never send the first audio/text delta (response stays in progress)
    fail_responses: bool = False  #: every response ends ``failed`` with a server_error
    max_session_s: float | None = None  #: session limit (OpenAI: 60 min) -> error + close 1001


@dataclass
class OpenAIEmulatorConfig:
    """Behaviour knobs of the emulator."""

    api_key: str | None = None  #: when set, only this Bearer key is accepted
    ms_per_char: float = 60.0  #: synthetic speech rate (duration of a reply = len(text) * ms_per_char)
    first_audio_delay_ms: float = (
        0.0  #: time from response.created to the first delta ("time to first audio")
    )
    speed: float = 0.0  #: audio generation speed in x real time; 0 = as fast as possible
    chunk_ms: int = 100  #: audio per response.output_audio.delta
    max_audio_ms: float | None = None  #: cap on the audio of one reply (the text is cut to match)
    session_max_minutes: float = 60.0  #: what the close reason says


def _event_part(part: JSON) -> JSON:
    # Items carry ``output_audio``/``output_text`` content; content_part events name it ``audio``/``text``
    # (as the SDK's ResponseContentPartAddedEvent.Part declares).
    out = dict(part)
    out["type"] = "audio" if part["type"] == "output_audio" else "text"
    return out


def _or(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _id(prefix: str, n: int) -> str:
    return f"{prefix}_{n:016X}"


def _deep_merge(base: JSON, update: JSON) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "format":
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


def default_session_config(session_id: str, model: str) -> JSON:
    """The effective session config OpenAI reports in ``session.created`` (GA shape)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
        },
        "include": None,
    }


def usage_for(
    input_text_chars: int, input_audio_ms: float, output_text: str, output_audio_ms: float, cached: int
) -> JSON:
    """Plausible token usage: ~4 chars per text token, 1 input audio token per 100 ms, 1 output per 50 ms."""
    in_text = max(1, input_text_chars // 4)
    in_audio = int(input_audio_ms // 100)
    out_text = max(1, len(output_text) // 4) if output_text else 0
    out_audio = int(output_audio_ms // 50)
    cached = min(cached, in_text + in_audio) // 64 * 64
    total_in = in_text + in_audio
    return {
        "total_tokens": total_in + out_text + out_audio,
        "input_tokens": total_in,
        "output_tokens": out_text + out_audio,
        "input_token_details": {
            "text_tokens": in_text,
            "audio_tokens": in_audio,
            "image_tokens": 0,
            "cached_tokens": cached,
            "cached_tokens_details": {
                "text_tokens": min(cached, in_text),
                "audio_tokens": max(0, cached - in_text),
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


# ------------------------------------------------------------------------------------------------ session


@dataclass
class ConversationItem:
    """One conversation item as the emulator stores it (``audio_ms``/``transcript`` for assistant audio)."""

    data: JSON
    audio_ms: float = 0.0
    full_text: str = ""


@dataclass
class ActiveResponse:
    """The response being generated."""

    id: str
    task: asyncio.Task[None] | None = None
    status: str = "in_progress"
    output: list[JSON] = field(default_factory=list)
    item_id: str | None = None
    audio_ms: float = 0.0
    text_sent: str = ""
    modality: str = "audio"
    fmt: str = "pcm"
    in_conversation: bool = True
    reply: Reply | None = None
    metadata: Any = None
    cancel_reason: str | None = None
    content_started: bool = False


class RealtimeSession:
    """One Realtime connection: conversation state, VAD, responses. Introspected by tests.

    ``received`` holds every client event that passed validation (as the raw dicts), ``sent`` every server
    event, ``rejected`` the error events answered to invalid client events.
    """

    def __init__(
        self, emulator: OpenAIRealtimeEmulator, ws: ServerConnection, model: str, index: int
    ) -> None:
        self.emulator = emulator
        self.ws = ws
        self.index = index
        self.model = model
        self.headers: Headers = ws.request.headers if ws.request else Headers()
        self.path = ws.request.path if ws.request else ""
        self._n = 0
        self.id = _id("sess", index + 1)
        self.config = default_session_config(self.id, model)
        self.received: list[JSON] = []
        self.sent: list[JSON] = []
        self.rejected: list[JSON] = []
        self.items: dict[str, ConversationItem] = {}
        self.responses: list[JSON] = []  #: the ``response`` objects of every response.done
        self.cursor = emulator.script.cursor()
        self.response: ActiveResponse | None = None
        self.audio_first_output = False
        self._vad = self._make_vad()
        self._buffer = bytearray()
        self._buffer_start_ms = 0
        self._speech_item: str | None = None
        self._pending_reply: Reply | None = None
        self._last_user_text: str | None = None
        self._user_audio_ms = 0.0
        self._cached_tokens = 0
        self._conv_chars = 0
        self.closed = asyncio.Event()
        self._idle_task: asyncio.Task[None] | None = None

    # ---- ids and sending

    def next_id(self, prefix: str) -> str:
        """A deterministic id unique within the emulator."""
        self._n += 1
        return f"{prefix}_{self.index + 1:04X}{self._n:012X}"

    async def send(self, event: JSON) -> None:
        """Send one server event (an ``event_id`` is added)."""
        event = {"event_id": self.next_id("event"), **event}
        self.sent.append(event)
        await self.ws.send(json.dumps(event))

    async def error(
        self,
        message: str,
        code: str | None,
        param: str | None = None,
        event_id: str | None = None,
        etype: str = "invalid_request_error",
    ) -> None:
        """Send an ``error`` event (the socket stays open, like OpenAI)."""
        ev = {
            "type": "error",
            "error": {"type": etype, "code": code, "message": message, "param": param, "event_id": event_id},
        }
        self.rejected.append(ev)
        await self.send(ev)

    # ---- config helpers

    @property
    def input_format(self) -> str:
        return format_of(self.config["audio"]["input"]["format"])

    @property
    def output_format(self) -> str:
        return format_of(self.config["audio"]["output"]["format"])

    @property
    def turn_detection(self) -> JSON | None:
        td: JSON | None = self.config["audio"]["input"].get("turn_detection")
        return td

    def _make_vad(self) -> ServerVad | None:
        td = self.turn_detection
        if not td:
            return None
        return ServerVad(
            self.input_format,
            threshold=float(_or(td.get("threshold"), 0.5)),
            prefix_padding_ms=int(_or(td.get("prefix_padding_ms"), 300)),
            silence_duration_ms=int(td.get("silence_duration_ms") or 500),
        )

    # ---- main loop

    async def run(self) -> None:
        """Serve the connection until it closes."""
        await self.send({"type": "session.created", "session": copy.deepcopy(self.config)})
        limit = self.emulator.faults.max_session_s
        timer = asyncio.create_task(self._session_limit(limit)) if limit else None
        try:
            async for message in self.ws:
                await self.handle(message)
        except ConnectionClosed:
            pass
        finally:
            if timer:
                timer.cancel()
            if self.response and self.response.task:
                self.response.task.cancel()
            self._cancel_idle()
            self.closed.set()

    async def _session_limit(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        minutes = self.emulator.config.session_max_minutes
        reason = f"Your session hit the maximum duration of {minutes:g} minutes."
        with contextlib.suppress(ConnectionClosed):
            await self.error(reason, "session_expired")
            await self.ws.close(1001, reason)

    async def handle(self, message: str | bytes) -> None:
        """Validate and apply one client frame."""
        try:
            model, raw, audio = self.emulator.validator.validate_with_audio(message)
        except ClientEventError as exc:
            await self.error(exc.message, exc.code, exc.param, exc.event_id)
            return
        self.received.append(raw)
        self.emulator._notify()
        if audio is not None:  # an append, validated and decoded once (the hot path: skip the getattr)
            await self._on_input_audio_buffer_append(model, raw, audio)
            return
        handler: Callable[[Any, JSON], Any] = getattr(self, "_on_" + raw["type"].replace(".", "_"))
        await handler(model, raw)

    # ---- session

    async def _on_session_update(self, model: Any, raw: JSON) -> None:
        upd = copy.deepcopy(raw["session"])
        if upd.get("type") != self.config["type"]:
            await self.error(
                f"Invalid value: '{upd.get('type')}'. "
                "Cannot change the session type of a 'realtime' session.",
                "invalid_value",
                "session.type",
                raw.get("event_id"),
            )
            return
        voice_new = (upd.get("audio") or {}).get("output", {}).get("voice")
        if (
            voice_new is not None
            and self.audio_first_output
            and voice_new != self.config["audio"]["output"]["voice"]
        ):
            await self.error(
                "Cannot update a conversation's voice if assistant audio is present.",
                "cannot_update_voice",
                "session.audio.output.voice",
                raw.get("event_id"),
            )
            return
        if "model" in upd and upd["model"] != self.config["model"]:
            upd.pop("model")  # the model is fixed by the URL; OpenAI ignores a change here
        _deep_merge(self.config, upd)
        old_vad = self._vad
        self._vad = self._make_vad()
        if old_vad is not None and self._vad is not None:
            self._vad.position_ms = old_vad.position_ms
        elif self._vad is not None:
            self._vad.position_ms = self._buffer_start_ms + len(self._buffer) // bytes_per_ms(
                self.input_format
            )
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.config)})

    # ---- input audio buffer

    async def _on_input_audio_buffer_append(self, model: Any, raw: JSON, data: bytes) -> None:
        # ``data``: the append's audio, decoded once by the validator (which returns it for every append)
        self._buffer.extend(data)
        self._user_audio_ms += len(data) / bytes_per_ms(self.input_format)
        if self._vad is None:
            return
        for kind, ms in self._vad.feed(data):
            if kind == "speech_started":
                self._cancel_idle()
                self._speech_item = self.next_id("item")
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": ms,
                        "item_id": self._speech_item,
                    }
                )
                td = self.turn_detection or {}
                if self.response and td.get("interrupt_response", True) is not False:
                    await self.cancel_response("turn_detected")
            else:
                item_id = self._speech_item or self.next_id("item")
                await self.send(
                    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item_id}
                )
                await self._commit(item_id)
                self._speech_item = None
                td = self.turn_detection or {}
                if td.get("create_response", True) is not False and self.response is None:
                    await self.start_response({})

    async def _commit(self, item_id: str) -> None:
        prev = self._last_item_id()
        audio_ms = len(self._buffer) / bytes_per_ms(self.input_format)
        self._buffer_start_ms += int(audio_ms)
        self._buffer.clear()
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": prev}
        )
        reply = self.cursor.peek()
        transcript = reply.user_transcript if reply and reply.user_transcript is not None else None
        item: JSON = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items[item_id] = ConversationItem(item, audio_ms=audio_ms)
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)}
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)}
        )
        self._last_user_text = transcript
        if self.config["audio"]["input"].get("transcription") and transcript is not None:
            item["content"][0]["transcript"] = transcript
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": transcript,
                    "usage": {"type": "duration", "seconds": round(audio_ms / 1000.0, 3)},
                }
            )

    async def _on_input_audio_buffer_commit(self, model: Any, raw: JSON) -> None:
        if len(self._buffer) < bytes_per_ms(self.input_format) * 100:
            have = len(self._buffer) / bytes_per_ms(self.input_format)
            await self.error(
                "Error committing input audio buffer: buffer too small. "
                "Expected at least 100ms of audio, but "
                f"buffer only has {have:.2f}ms of audio.",
                "input_audio_buffer_commit_empty",
                None,
                raw.get("event_id"),
            )
            return
        item_id = self._speech_item or self.next_id("item")
        self._speech_item = None
        await self._commit(item_id)

    async def _on_input_audio_buffer_clear(self, model: Any, raw: JSON) -> None:
        self._buffer_start_ms += len(self._buffer) // bytes_per_ms(self.input_format)
        self._buffer.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _on_output_audio_buffer_clear(self, model: Any, raw: JSON) -> None:
        # WebRTC/SIP only: over WebSocket OpenAI answers with an error.
        await self.error(
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            "invalid_value",
            "type",
            raw.get("event_id"),
        )

    # ---- conversation items

    def _last_item_id(self) -> str | None:
        return next(reversed(self.items), None) if self.items else None

    async def _on_conversation_item_create(self, model: Any, raw: JSON) -> None:
        item = copy.deepcopy(raw["item"])
        eid = raw.get("event_id")
        if (
            item.get("type") == "message"
            and item.get("role") == "assistant"
            and any(c.get("type") == "output_audio" for c in item.get("content", []))
        ):
            await self.error(
                "Assistant messages with audio content cannot be created by the client.",
                "invalid_value",
                "item.content",
                eid,
            )
            return
        prev = raw.get("previous_item_id")
        if prev is not None and prev != "root" and prev not in self.items:
            await self.error(
                f"Previous item with id '{prev}' not found.", "item_not_found", "previous_item_id", eid
            )
            return
        item.setdefault("id", self.next_id("item"))
        if item["id"] in self.items:
            await self.error(
                f"Item with id '{item['id']}' already exists.", "item_already_exists", "item.id", eid
            )
            return
        item["object"] = "realtime.item"
        item.setdefault("status", "completed")
        if prev is None:
            prev = self._last_item_id()
        self.items[item["id"]] = ConversationItem(item)
        if item.get("type") == "message" and item.get("role") == "user":
            texts = [c.get("text") or c.get("transcript") or "" for c in item.get("content", [])]
            self._last_user_text = " ".join(t for t in texts if t)
            self._conv_chars += len(self._last_user_text)
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)}
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)}
        )

    async def _on_conversation_item_delete(self, model: Any, raw: JSON) -> None:
        item_id = raw["item_id"]
        if item_id not in self.items:
            await self.error(
                f"Item with item_id '{item_id}' not found.", "item_not_found", "item_id", raw.get("event_id")
            )
            return
        del self.items[item_id]
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _on_conversation_item_retrieve(self, model: Any, raw: JSON) -> None:
        item_id = raw["item_id"]
        if item_id not in self.items:
            await self.error(
                f"Item with item_id '{item_id}' not found.", "item_not_found", "item_id", raw.get("event_id")
            )
            return
        await self.send(
            {"type": "conversation.item.retrieved", "item": copy.deepcopy(self.items[item_id].data)}
        )

    async def _on_conversation_item_truncate(self, model: Any, raw: JSON) -> None:
        eid = raw.get("event_id")
        item_id, idx, end_ms = raw["item_id"], raw["content_index"], raw["audio_end_ms"]
        stored = self.items.get(item_id)
        if stored is None:
            await self.error(f"Item with item_id '{item_id}' not found.", "item_not_found", "item_id", eid)
            return
        data = stored.data
        if data.get("type") != "message" or data.get("role") != "assistant":
            await self.error("Only assistant messages can be truncated.", "invalid_value", "item_id", eid)
            return
        content = data.get("content", [])
        if idx >= len(content) or content[idx].get("type") != "output_audio":
            await self.error(
                f"Invalid content_index {idx}: the content part is not audio.",
                "invalid_value",
                "content_index",
                eid,
            )
            return
        if end_ms < 0 or end_ms > stored.audio_ms:
            await self.error(
                f"Audio content of {stored.audio_ms:.0f}ms is already shorter than {end_ms}ms",
                "invalid_value",
                "audio_end_ms",
                eid,
            )
            return
        # Keep only the characters whose synthetic audio started before the cut (exact for voice.render).
        keep = math.ceil(end_ms / self.emulator.config.ms_per_char)
        content[idx]["transcript"] = stored.full_text[:keep]
        stored.audio_ms = float(end_ms)
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": idx,
                "audio_end_ms": end_ms,
            }
        )

    # ---- responses

    async def _on_response_create(self, model: Any, raw: JSON) -> None:
        if self.response is not None:
            await self.error(
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the "
                "response is finished before creating a new one.",
                "conversation_already_has_active_response",
                None,
                raw.get("event_id"),
            )
            return
        await self.start_response(raw.get("response") or {})

    async def _on_response_cancel(self, model: Any, raw: JSON) -> None:
        rid = raw.get("response_id")
        if self.response is None or (rid is not None and rid != self.response.id):
            await self.error(
                "Cancellation failed: no active response found.",
                "response_cancel_not_active",
                None,
                raw.get("event_id"),
            )
            return
        await self.cancel_response("client_cancelled")

    async def start_response(self, params: JSON) -> None:
        """Begin generating the next scripted reply as a response (streams in a task)."""
        self._cancel_idle()
        if self._pending_reply is not None:
            reply, self._pending_reply = self._pending_reply, None
        else:
            reply = self.cursor.next(self._last_user_text)
        self._last_user_text = None
        mods = params.get("output_modalities") or self.config["output_modalities"]
        out_fmt = ((params.get("audio") or {}).get("output") or {}).get("format") or self.config["audio"][
            "output"
        ]["format"]
        resp = ActiveResponse(
            id=self.next_id("resp"),
            modality=mods[0],
            fmt=format_of(out_fmt),
            reply=reply,
            in_conversation=params.get("conversation", "auto") != "none",
            metadata=params.get("metadata"),
        )
        self.response = resp
        resp.task = asyncio.create_task(self._generate(resp, mods, out_fmt))

    def _response_obj(
        self, resp: ActiveResponse, status: str, details: JSON | None = None, usage: JSON | None = None
    ) -> JSON:
        return {
            "object": "realtime.response",
            "id": resp.id,
            "status": status,
            "status_details": details,
            "output": copy.deepcopy(resp.output),
            "conversation_id": "conv_" + self.id[5:] if resp.in_conversation else None,
            "output_modalities": [resp.modality],
            "max_output_tokens": self.config.get("max_output_tokens", "inf"),
            "audio": {
                "output": {
                    "format": {"type": f"audio/{resp.fmt}", **({"rate": 24000} if resp.fmt == "pcm" else {})},
                    "voice": self.config["audio"]["output"]["voice"],
                }
            },
            "usage": usage,
            "metadata": resp.metadata,
        }

    async def _generate(self, resp: ActiveResponse, mods: list[str], out_fmt: JSON) -> None:
        cfg = self.emulator.config
        faults = self.emulator.faults
        try:
            await self.send({"type": "response.created", "response": self._response_obj(resp, "in_progress")})
            await self.send(
                {
                    "type": "rate_limits.updated",
                    "rate_limits": [
                        {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                        {"name": "tokens", "limit": 400000, "remaining": 395000, "reset_seconds": 0.75},
                    ],
                }
            )
            if faults.fail_responses:
                await self._finish(
                    resp,
                    "failed",
                    {"type": "failed", "error": {"type": "server_error", "code": "server_error"}},
                )
                return
            if cfg.first_audio_delay_ms > 0:
                await asyncio.sleep(cfg.first_audio_delay_ms / 1000.0)
            if faults.stall_first_audio:
                await asyncio.Event().wait()  # until cancelled
            reply = resp.reply or Reply()
            if reply.function_call is not None:
                await self._function_call(resp, reply.function_call)
            else:
                await self._message(resp, reply.text)
            await self._finish(resp, "completed", None)
        except asyncio.CancelledError:
            raise
        except ConnectionClosed:
            pass

    async def _add_output_item(self, resp: ActiveResponse, item: JSON) -> None:
        resp.output.append(item)
        resp.item_id = item["id"]
        prev = self._last_item_id()
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": len(resp.output) - 1,
                "item": copy.deepcopy(item),
            }
        )
        if resp.in_conversation:
            self.items[item["id"]] = ConversationItem(item)
            await self.send(
                {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)}
            )

    async def _function_call(self, resp: ActiveResponse, call: FunctionCall) -> None:
        item = {
            "id": self.next_id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call.call_id or self.next_id("call"),
            "name": call.name,
            "arguments": "",
        }
        await self._add_output_item(resp, item)
        ids = {
            "response_id": resp.id,
            "item_id": item["id"],
            "output_index": len(resp.output) - 1,
            "call_id": item["call_id"],
        }
        step = 8
        for i in range(0, len(call.arguments), step):
            await self.send(
                {
                    "type": "response.function_call_arguments.delta",
                    **ids,
                    "delta": call.arguments[i : i + step],
                }
            )
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "name": call.name,
                "arguments": call.arguments,
            }
        )
        item["arguments"] = call.arguments
        item["status"] = "completed"
        resp.text_sent = call.arguments
        await self._item_done(resp, item, len(resp.output) - 1)

    async def _item_done(self, resp: ActiveResponse, item: JSON, output_index: int) -> None:
        """``response.output_item.done`` (and ``conversation.item.done`` for an in-conversation response)."""
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": output_index,
                "item": copy.deepcopy(item),
            }
        )
        if resp.in_conversation:
            await self.send(
                {"type": "conversation.item.done", "item": copy.deepcopy(item), "previous_item_id": None}
            )

    async def _message(self, resp: ActiveResponse, text: str) -> None:
        cfg = self.emulator.config
        faults = self.emulator.faults
        if cfg.max_audio_ms is not None:
            text = text[: max(1, int(cfg.max_audio_ms // cfg.ms_per_char))] if text else text
        audio = resp.modality == "audio"
        ctype = "output_audio" if audio else "output_text"
        item: JSON = {
            "id": self.next_id("item"),
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await self._add_output_item(resp, item)
        stored = self.items.get(item["id"])
        if stored:
            stored.full_text = text
        ids = {
            "response_id": resp.id,
            "item_id": item["id"],
            "output_index": len(resp.output) - 1,
            "content_index": 0,
        }
        part: JSON = {"type": ctype, "transcript": ""} if audio else {"type": "output_text", "text": ""}
        item["content"].append(part)
        resp.content_started = True
        await self.send({"type": "response.content_part.added", **ids, "part": _event_part(part)})
        if audio:
            self.audio_first_output = True
            rate = 24000 if resp.fmt == "pcm" else 8000
            # Rendering a long reply takes tens of ms of numpy: keep it off the event loop (tests often run
            # rtvoice and the emulator on the same loop, and a stall there would distort their timings).
            pcm = await asyncio.to_thread(voice.render, text, rate, cfg.ms_per_char)
            data = encode_from_pcm(pcm, resp.fmt)
            bpm = bytes_per_ms(resp.fmt)
            chunk = max(1, cfg.chunk_ms) * bpm
            t0 = asyncio.get_running_loop().time()
            sent_chars = 0
            for off in range(0, len(data), chunk):
                piece = data[off : off + chunk]
                if faults.drop_after_audio_ms is not None and resp.audio_ms >= faults.drop_after_audio_ms:
                    self.ws.transport.abort()
                    raise ConnectionClosed(None, None)
                await self.send(
                    {
                        "type": "response.output_audio.delta",
                        **ids,
                        "delta": base64.b64encode(piece).decode("ascii"),
                    }
                )
                resp.audio_ms += len(piece) / bpm
                if stored:
                    stored.audio_ms = resp.audio_ms
                upto = min(len(text), math.ceil(resp.audio_ms / cfg.ms_per_char))
                if upto > sent_chars:
                    delta = text[sent_chars:upto]
                    sent_chars = upto
                    resp.text_sent += delta
                    part["transcript"] = resp.text_sent
                    await self.send({"type": "response.output_audio_transcript.delta", **ids, "delta": delta})
                if cfg.speed > 0:
                    due = t0 + resp.audio_ms / 1000.0 / cfg.speed
                    await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                else:
                    await asyncio.sleep(0)
            await self.send({"type": "response.output_audio.done", **ids})
            await self.send({"type": "response.output_audio_transcript.done", **ids, "transcript": text})
        else:
            for word_start in range(0, len(text), 12):
                delta = text[word_start : word_start + 12]
                resp.text_sent += delta
                part["text"] = resp.text_sent
                await self.send({"type": "response.output_text.delta", **ids, "delta": delta})
                await asyncio.sleep(0)
            await self.send({"type": "response.output_text.done", **ids, "text": text})
        await self.send({"type": "response.content_part.done", **ids, "part": _event_part(part)})
        item["status"] = "completed"
        await self._item_done(resp, item, len(resp.output) - 1)

    async def _finish(self, resp: ActiveResponse, status: str, details: JSON | None) -> None:
        text = resp.text_sent
        usage = usage_for(
            self._conv_chars + len(self.config.get("instructions") or ""),
            self._user_audio_ms,
            text,
            resp.audio_ms,
            self._cached_tokens,
        )
        self._cached_tokens = usage["input_tokens"]
        self._conv_chars += len(text)
        self._user_audio_ms = 0.0
        obj = self._response_obj(resp, status, details, usage)
        self.responses.append(obj)
        if self.response is resp:
            self.response = None
        await self.send({"type": "response.done", "response": obj})
        td = self.turn_detection or {}
        if status == "completed" and td.get("type") == "server_vad" and td.get("idle_timeout_ms"):
            # The idle timer starts once the reply has finished playing: the emulator assumes the caller hears
            # the audio in real time from now (it was generated at least that fast).
            self._cancel_idle()
            wait_s = resp.audio_ms / 1000.0 + float(td["idle_timeout_ms"]) / 1000.0
            self._idle_task = asyncio.create_task(self._idle(wait_s))

    def _cancel_idle(self) -> None:
        if self._idle_task is not None and self._idle_task is not asyncio.current_task():
            self._idle_task.cancel()
        self._idle_task = None

    async def _idle(self, wait_s: float) -> None:
        start_ms = self._vad.position_ms if self._vad else 0
        await asyncio.sleep(wait_s)
        end_ms = self._vad.position_ms if self._vad else 0
        with contextlib.suppress(ConnectionClosed):
            await self.send(
                {
                    "type": "input_audio_buffer.timeout_triggered",
                    "audio_start_ms": start_ms,
                    "audio_end_ms": end_ms,
                    "item_id": self.next_id("item"),
                }
            )
            if self.response is None:
                await self.start_response({})

    async def cancel_response(self, reason: str) -> None:
        """Stop the active response: output item ends ``incomplete``, ``response.done`` is ``cancelled``."""
        resp = self.response
        if resp is None:
            return
        self.response = None
        if resp.task is not None:
            resp.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await resp.task
        for idx, item in enumerate(resp.output):
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
                for c in item.get("content", []):
                    if "transcript" in c:
                        c["transcript"] = resp.text_sent
                    if "text" in c:
                        c["text"] = resp.text_sent
                stored = self.items.get(item["id"])
                if stored:
                    stored.full_text = resp.text_sent
                    stored.data = item
                await self._item_done(resp, item, idx)
        await self._finish(resp, "cancelled", {"type": "cancelled", "reason": reason})


# ------------------------------------------------------------------------------------------------ server edge


class OpenAIRealtimeEmulator(EmulatorServer):
    """The WebSocket server. ``url`` is the SDK's ``websocket_base_url`` (``ws://127.0.0.1:PORT/v1``)."""

    def __init__(
        self,
        script: Script | Sequence[str | Reply] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: OpenAIEmulatorConfig | None = None,
        faults: OpenAIFaults | None = None,
    ) -> None:
        super().__init__(host, port)
        self.script = Script.of(script)
        self.config = config or OpenAIEmulatorConfig()
        self.faults = faults or OpenAIFaults()
        self.validator = EventValidator()
        self.sessions: list[RealtimeSession] = []

    @property
    def url(self) -> str:
        """The WebSocket base URL (``websocket_base_url`` for the SDK; ``OPENAI_WEBSOCKET_BASE_URL``)."""
        return f"ws://{self.host}:{self.port}/v1"

    @property
    def received(self) -> list[JSON]:
        """Every validated client event of every session, in arrival order per session (sessions in order)."""
        return [ev for s in self.sessions for ev in s.received]

    def _serve_options(self) -> dict[str, Any]:
        return {
            "subprotocols": [Subprotocol("openai-beta.realtime-v1")],  # beta clients get the real rejection
            "select_subprotocol": self._select_subprotocol,
            "max_size": 16 * 1024 * 1024 * 2,
        }

    async def wait_for_event(
        self,
        etype: str,
        session: int = -1,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> JSON:
        """Wait for the ``count``-th validated client event of type ``etype`` in a session; returns it."""

        def found() -> list[JSON]:
            if not self.sessions:
                return []
            return [e for e in self.sessions[session].received if e["type"] == etype]

        await self.wait_for(lambda: len(found()) >= count, timeout)
        return found()[count - 1]

    async def wait_for_session(self, count: int = 1, timeout: float = 5.0) -> RealtimeSession:  # noqa: ASYNC109
        """Wait until ``count`` sessions have connected; returns the ``count``-th."""
        await self.wait_for(lambda: len(self.sessions) >= count, timeout)
        return self.sessions[count - 1]

    async def inject_error(
        self,
        message: str = "The server had an error while processing your request.",
        code: str | None = "server_error",
        etype: str = "server_error",
        session: int = -1,
    ) -> None:
        """Send an ``error`` event to a session (fault injection)."""
        await self.sessions[session].error(message, code, None, None, etype)

    async def drop(self, session: int = -1) -> None:
        """Abort a session's TCP connection without a close frame (fault injection)."""
        self.sessions[session].ws.transport.abort()

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        beta = Subprotocol("openai-beta.realtime-v1")
        return beta if beta in offered else None

    def _reject(self, connection: ServerConnection, status: HTTPStatus, body: JSON) -> Response:
        self.rejected_handshakes.append((int(status), body["error"]["message"]))
        return json_response(connection, status, body, newline=True)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.faults.refuse_connections:
            return self._reject(
                connection,
                HTTPStatus.SERVICE_UNAVAILABLE,
                {
                    "error": {
                        "message": "The service is temporarily unavailable.",
                        "type": "server_error",
                        "code": "service_unavailable",
                        "param": None,
                    }
                },
            )
        parts = urlsplit(request.path)
        if parts.path.rstrip("/") != "/v1/realtime":
            return self._reject(
                connection,
                HTTPStatus.NOT_FOUND,
                {
                    "error": {
                        "message": f"Invalid URL (GET {parts.path})",
                        "type": "invalid_request_error",
                        "code": None,
                        "param": None,
                    }
                },
            )
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self._reject(
                connection,
                HTTPStatus.UNAUTHORIZED,
                {
                    "error": {
                        "message": "You didn't provide an API key. You need to provide your API key in an "
                        "Authorization "
                        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                        "type": "invalid_request_error",
                        "code": None,
                        "param": None,
                    }
                },
            )
        key = auth[7:].strip()
        if self.config.api_key is not None and key != self.config.api_key:
            return self._reject(
                connection,
                HTTPStatus.UNAUTHORIZED,
                {
                    "error": {
                        "message": f"Incorrect API key provided: {key[:3]}***{key[-4:]}.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "param": None,
                    }
                },
            )
        query = parse_qs(parts.query)
        if not (query.get("model") or query.get("call_id") or query.get("intent")):
            return self._reject(
                connection,
                HTTPStatus.BAD_REQUEST,
                {
                    "error": {
                        "message": "Missing required parameter: 'model'.",
                        "type": "invalid_request_error",
                        "code": "missing_required_parameter",
                        "param": "model",
                    }
                },
            )
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = ws.request.headers
        if headers.get("OpenAI-Beta", "").strip().lower() == "realtime=v1" or ws.subprotocol:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(
                    json.dumps(
                        {
                            "type": "error",
                            "event_id": "event_beta",
                            "error": {
                                "type": "invalid_request_error",
                                "code": "beta_api_shape_disabled",
                                "message": BETA_MESSAGE,
                                "param": None,
                                "event_id": None,
                            },
                        }
                    )
                )
                await ws.close(4000, "beta_api_shape_disabled")
            return
        query = parse_qs(urlsplit(ws.request.path).query)
        model = (query.get("model") or [DEFAULT_MODEL])[0]
        session = RealtimeSession(self, ws, model, len(self.sessions))
        self.sessions.append(session)
        self._notify()
        await session.run()
        self._notify()
