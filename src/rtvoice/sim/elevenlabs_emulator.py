"""A local emulator of ElevenLabs' TTS WebSockets and Conversational AI WebSocket, for tests and offline use.

One server, the real paths (``shared/reference/vendors.md`` §B), base URL ``http://127.0.0.1:PORT``:

* ``WS /v1/text-to-speech/{voice_id}/stream-input`` and ``/multi-stream-input`` (``xi-api-key`` header, or the
  ``authorization`` query, or the key in the first message). Client messages are validated against the
  elevenlabs SDK's own message models (``InitializeConnection``, ``SendText``, ``CloseConnection``,
  ``InitializeConnectionMulti``, ``InitialiseContext``, ``SendTextMulti``, ``FlushContext``, ``CloseContext``,
  ``KeepContextAlive``, ``CloseSocket``) with unknown fields rejected. Text is buffered per context following
  ``chunk_length_schedule`` (or ``flush`` / ``auto_mode``), rendered by :mod:`rtvoice.sim.voice` in
  ``output_format`` and sent as ``{"audio", "isFinal", "alignment", "normalizedAlignment"(, "contextId")}`` with
  per-chunk character timings consistent with the audio; ``{"isFinal": true(, "contextId")}`` ends a
  stream/context. The 5-context limit (``max_active_conversations``) and the inactivity timeout
  (``input_timeout_exceeded``) send ElevenLabs' ``{message, error, code}`` frame and close with 1008.
* ``GET /v1/convai/conversation/get-signed-url?agent_id=`` (``xi-api-key``) -> ``{"signed_url": "ws://..."}``
  and ``WS /v1/convai/conversation?agent_id=`` (public, signed, or ``xi-api-key``):
  ``conversation_initiation_client_data``
  (dynamic variables, overrides checked against the agent's allowed overrides),
  ``conversation_initiation_metadata``, ``user_audio_chunk`` through webrtcvad -> ``user_transcript``
  (scripted), ``agent_response`` + ``audio`` events (``event_id``), ``interruption`` when the caller speaks
  over the agent, ``ping`` expecting ``pong``, optional ``vad_score``.

Alignment field names: the AsyncAPI (and vendors.md) spell the durations ``charsDurationsMs`` while the SDK's
``Alignment`` model reads ``charDurationsMs``; the emulator sends both by default
(:attr:`ElevenLabsConfig.duration_keys`) so that clients written against either work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from rtvoice.audio import alaw_encode, ulaw_encode
from rtvoice.sim import voice
from rtvoice.sim.emulator_base import EmulatorServer, json_response
from rtvoice.sim.openai_emulator import Reply, Script, ScriptCursor, ServerVad, _extras

log = logging.getLogger("rtvoice.sim.elevenlabs")

JSON = dict[str, Any]

#: output formats the emulator can render (mp3/opus are not synthesized: the handshake gets HTTP 422)
PCM_RATES = {
    "pcm_8000": 8000,
    "pcm_16000": 16000,
    "pcm_22050": 22050,
    "pcm_24000": 24000,
    "pcm_44100": 44100,
    "pcm_48000": 48000,
}
TTS_FORMATS = ("ulaw_8000", "alaw_8000", *PCM_RATES)
CONVAI_FORMATS = ("ulaw_8000", *PCM_RATES)
DEFAULT_SCHEDULE = (120.0, 160.0, 250.0, 290.0)


def format_rate(fmt: str) -> int:
    """Sample rate of an ElevenLabs output format name."""
    return 8000 if fmt in ("ulaw_8000", "alaw_8000") else PCM_RATES[fmt]


def encode(samples: voice.Int16Array, fmt: str) -> bytes:
    """Samples at the format's rate -> bytes in the ElevenLabs format."""
    if fmt == "ulaw_8000":
        return bytes(ulaw_encode(samples))
    if fmt == "alaw_8000":
        return bytes(alaw_encode(samples))
    return samples.astype("<i2").tobytes()


def bytes_per_ms(fmt: str) -> float:
    """Bytes per millisecond of audio in a format."""
    return format_rate(fmt) / 1000.0 * (1 if fmt in ("ulaw_8000", "alaw_8000") else 2)


class ProtocolViolation(Exception):
    """Bad client input: the emulator answers ``{message, error, code}`` and closes with ``code``."""

    def __init__(self, message: str, error: str = "invalid_message", code: int = 1008) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.code = code


# ------------------------------------------------------------------------------------------------ config


@dataclass
class ElevenLabsFaults:
    """Fault injection knobs (may be changed while the emulator runs)."""

    refuse_connections: bool = False  #: WebSocket handshakes get HTTP 503
    drop_after_audio_ms: float | None = None  #: abort TCP after this much audio on a connection
    stall_first_audio: bool = False  #: accept text/audio but never produce audio


@dataclass
class ElevenLabsConfig:
    """Behaviour knobs of the emulator."""

    api_key: str | None = None  #: when set, only this key is accepted (otherwise any non-empty key)
    ms_per_char: float = 60.0  #: synthetic speech rate
    chunk_ms: float = 200.0  #: audio per TTS message / ConvAI audio event (rounded to whole characters)
    first_audio_delay_ms: float = 0.0  #: latency before each generation's first audio
    speed: float = 0.0  #: pacing of audio messages in x real time; 0 = as fast as possible
    inactivity_timeout_s: float | None = None  #: overrides the ``inactivity_timeout`` query (default 20 s)
    max_contexts: int = 5
    duration_keys: tuple[str, ...] = ("charsDurationsMs", "charDurationsMs")
    # ConvAI
    agent_output_audio_format: str = "ulaw_8000"
    user_input_audio_format: str = "ulaw_8000"
    first_message: str | None = None  #: what the agent says first ({{vars}} filled from dynamic variables)
    private_agent: bool = False  #: require a signed URL (or xi-api-key) for the conversation socket
    allowed_overrides: frozenset[str] | None = (
        None  #: e.g. {"agent.prompt.prompt", "agent.first_message"}; None=all
    )
    ping_interval_s: float | None = 2.0
    vad_scores: bool = False
    silence_duration_ms: int = 500
    signed_url_ttl_s: float = 15 * 60.0


# ------------------------------------------------------------------------------------------ TTS validation


def _sdk(name: str) -> type[BaseModel]:
    import elevenlabs.types as t

    cls: type[BaseModel] = getattr(t, name)
    return cls


class TtsValidator:
    """Classifies and validates TTS client messages against the elevenlabs SDK models (sans-I/O)."""

    def __init__(self) -> None:
        names = [
            "InitializeConnection",
            "SendText",
            "CloseConnection",
            "InitializeConnectionMulti",
            "InitialiseContext",
            "SendTextMulti",
            "FlushContext",
            "CloseContext",
            "KeepContextAlive",
            "CloseSocket",
        ]
        self._ta = {n: TypeAdapter(_sdk(n)) for n in names}

    def classify(self, raw: JSON, multi: bool, first: bool) -> str:
        """The SDK message model name for ``raw``."""
        if not multi:
            if first:
                return "InitializeConnection"
            return "CloseConnection" if raw.get("text") == "" and len(raw) == 1 else "SendText"
        if "close_socket" in raw:
            return "CloseSocket"
        if "close_context" in raw:
            return "CloseContext"
        if raw.get("flush"):
            return "FlushContext" if "context_id" in raw else "SendTextMulti"
        if first:
            return "InitializeConnectionMulti"
        if raw.get("text") == "" and "context_id" in raw and len(raw) == 2:
            return "KeepContextAlive"
        if {"voice_settings", "generation_config", "pronunciation_dictionary_locators"} & raw.keys():
            return "InitialiseContext"
        return "SendTextMulti"

    def validate(self, text: str | bytes, multi: bool, first: bool) -> tuple[str, JSON]:
        """Parse one frame; returns (model name, raw dict) or raises :class:`ProtocolViolation`."""
        if isinstance(text, bytes):
            raise ProtocolViolation("Binary messages are not supported; send JSON text messages.")
        try:
            raw = json.loads(text)
        except ValueError:
            raise ProtocolViolation("Invalid JSON message.") from None
        if not isinstance(raw, dict):
            raise ProtocolViolation("Invalid message: expected a JSON object.")
        kind = self.classify(raw, multi, first)
        try:
            model = self._ta[kind].validate_python(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ProtocolViolation(f"Invalid message ({kind}): {loc}: {err['msg']}") from None
        extras = [e for e in _extras(model, "") if e not in ("xi-api-key", "xi_api_key")]
        # The stream-input first message names the key "xi-api-key"; the multi schema says "xi_api_key".
        if extras:
            raise ProtocolViolation(f"Invalid message ({kind}): unknown field '{extras[0]}'.")
        return kind, raw


# ------------------------------------------------------------------------------------------------ TTS session


@dataclass
class TtsContext:
    """One TTS context (the single stream-input stream is context ``None``)."""

    id: str | None
    buffer: str = ""
    schedule_pos: int = 0
    text_received: str = ""
    text_spoken: str = ""  #: text whose audio has been generated (sent or being sent)
    audio_ms: float = 0.0  #: audio sent for this context
    closed: bool = False
    task: asyncio.Task[None] | None = None


class TtsSession:
    """One TTS WebSocket (stream-input or multi-stream-input). Introspected by tests."""

    def __init__(
        self,
        emu: ElevenLabsEmulator,
        ws: ServerConnection,
        voice_id: str,
        multi: bool,
        query: dict[str, str],
        authed: bool,
    ) -> None:
        self.emu = emu
        self.ws = ws
        self.voice_id = voice_id
        self.multi = multi
        self.query = query
        self.authed = authed
        self.output_format = query.get("output_format", "mp3_44100_128")
        self.model_id = query.get("model_id")
        self.auto_mode = query.get("auto_mode", "false").lower() == "true"
        self.received: list[JSON] = []  #: validated client messages
        self.sent: list[JSON] = []  #: server messages
        self.contexts: dict[str | None, TtsContext] = {}
        self.closed_contexts: list[str | None] = []
        self.schedule: tuple[float, ...] = DEFAULT_SCHEDULE
        self.audio_ms = 0.0
        self.close_code: int | None = None
        self._first = True
        self._activity = asyncio.Event()
        cfg = emu.config
        timeout = cfg.inactivity_timeout_s
        if timeout is None:
            timeout = float(min(180, max(1, int(query.get("inactivity_timeout", "20")))))
        self.inactivity_timeout_s = timeout

    async def send(self, msg: JSON) -> None:
        """Send one server message."""
        self.sent.append(msg)
        await self.ws.send(json.dumps(msg))

    async def fail(self, message: str, error: str, code: int = 1008) -> None:
        """ElevenLabs' error frame, then close."""
        self.close_code = code
        with contextlib.suppress(ConnectionClosed):
            await self.send({"message": message, "error": error, "code": code})
            await self.ws.close(code, error)

    async def run(self) -> None:
        """Serve until the socket closes."""
        watchdog = asyncio.create_task(self._inactivity())
        try:
            async for message in self.ws:
                self._activity.set()
                try:
                    await self.handle(message)
                except ProtocolViolation as exc:
                    await self.fail(exc.message, exc.error, exc.code)
                    return
        except ConnectionClosed:
            pass
        finally:
            watchdog.cancel()
            for ctx in self.contexts.values():
                if ctx.task:
                    ctx.task.cancel()

    async def _inactivity(self) -> None:
        while True:
            self._activity.clear()
            try:
                await asyncio.wait_for(self._activity.wait(), self.inactivity_timeout_s)
            except TimeoutError:
                secs = f"{self.inactivity_timeout_s:g}"
                await self.fail(
                    f"Have not received a new text input within the timeout of {secs} seconds. "
                    "Streaming input terminated. Please make sure to send text input or use the keep alive "
                    "message to keep the "
                    "connection open.",
                    "input_timeout_exceeded",
                )
                return

    async def handle(self, message: str | bytes) -> None:
        """Validate and apply one client message."""
        kind, raw = self.emu.tts_validator.validate(message, self.multi, self._first)
        if self._first:
            key = raw.get("xi-api-key") or raw.get("xi_api_key")
            if not self.authed:
                if not key or not self.emu.key_ok(str(key)):
                    raise ProtocolViolation(
                        "Invalid API key"
                        if key
                        else "You must be authenticated to use this endpoint: send the xi-api-key header.",
                        "invalid_api_key",
                    )
                self.authed = True
            gen = raw.get("generation_config") or {}
            if gen.get("chunk_length_schedule"):
                self.schedule = tuple(float(x) for x in gen["chunk_length_schedule"])
        self.received.append(raw)
        self.emu._notify()
        first, self._first = self._first, False
        if kind == "CloseSocket":
            for ctx in list(self.contexts.values()):
                await self._generate(ctx, ctx.buffer, final=True)
            for ctx in list(self.contexts.values()):  # "flush pending": their audio goes out before the close
                await self._wait(ctx)
            await self.ws.close(1000)
            return
        cid = raw.get("context_id") if self.multi else None
        if kind == "CloseContext":
            await self._close_context(cid)
            return
        found = self.contexts.get(cid)
        if found is not None and not found.closed:
            ctx = found
        else:
            if (
                self.multi
                and len([c for c in self.contexts.values() if not c.closed]) >= self.emu.config.max_contexts
            ):
                raise ProtocolViolation(
                    "Maximum simultaneous contexts per WebSocket connection exceeded "
                    f"({self.emu.config.max_contexts})."
                    " Please close unused contexts.",
                    "max_active_conversations",
                )
            ctx = TtsContext(cid)
            self.contexts[cid] = ctx
        if kind == "KeepContextAlive":
            return
        if kind == "CloseConnection":  # stream-input end of input: flush, isFinal, close
            await self._generate(ctx, ctx.buffer, final=True)
            await self._wait(ctx)
            await self.send({"isFinal": True})
            await self.ws.close(1000)
            return
        text = raw.get("text") or ""
        if first and text == " ":
            return  # the initialisation message's single space is not speech
        ctx.buffer += text
        ctx.text_received += text
        if (raw.get("flush") or self.auto_mode) or (
            raw.get("try_trigger_generation") and len(ctx.buffer) >= 50
        ):
            await self._generate(ctx, ctx.buffer)
        else:
            threshold = self.schedule[min(ctx.schedule_pos, len(self.schedule) - 1)]
            if len(ctx.buffer) >= threshold:
                ctx.schedule_pos += 1
                await self._generate(ctx, ctx.buffer)

    async def _wait(self, ctx: TtsContext) -> None:
        if ctx.task is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await ctx.task

    async def _close_context(self, cid: str | None) -> None:
        ctx = self.contexts.get(cid)
        if ctx is None or ctx.closed:
            return
        ctx.closed = True
        self.closed_contexts.append(cid)
        # Barge-in semantics: what has not been sent yet is discarded.
        if ctx.task is not None and not ctx.task.done():
            ctx.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await ctx.task
        ctx.buffer = ""
        await self.send({"isFinal": True, "contextId": cid})

    async def _generate(self, ctx: TtsContext, text: str, final: bool = False) -> None:
        ctx.buffer = ""
        if not text.strip():
            return
        ctx.text_spoken += text
        previous = ctx.task
        ctx.task = asyncio.create_task(self._stream(ctx, text, previous))
        if self.emu.config.speed <= 0 and self.emu.config.first_audio_delay_ms <= 0:
            await self._wait(ctx)  # as fast as possible: finish before reading the next message

    async def _stream(self, ctx: TtsContext, text: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await previous
        cfg = self.emu.config
        if cfg.first_audio_delay_ms > 0:
            await asyncio.sleep(cfg.first_audio_delay_ms / 1000.0)
        if self.emu.faults.stall_first_audio:
            await asyncio.Event().wait()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent_ms = 0.0
        chunks = await asyncio.to_thread(
            render_chunks, text, self.output_format, cfg.ms_per_char, cfg.chunk_ms
        )
        for audio, chars, starts, durs in chunks:
            drop = self.emu.faults.drop_after_audio_ms
            if drop is not None and self.audio_ms >= drop:
                self.ws.transport.abort()
                return
            align: JSON = {"chars": chars, "charStartTimesMs": starts}
            for k in cfg.duration_keys:
                align[k] = durs
            msg: JSON = {
                "audio": base64.b64encode(audio).decode("ascii"),
                "isFinal": False,
                "normalizedAlignment": dict(align),
                "alignment": align,
            }
            if self.multi:
                msg["contextId"] = ctx.id
            await self.send(msg)
            ms = len(audio) / bytes_per_ms(self.output_format)
            ctx.audio_ms += ms
            self.audio_ms += ms
            sent_ms += ms
            if cfg.speed > 0:
                await asyncio.sleep(max(0.0, t0 + sent_ms / 1000.0 / cfg.speed - loop.time()))
            else:
                await asyncio.sleep(0)


def render_chunks(
    text: str, fmt: str, ms_per_char: float, chunk_ms: float
) -> list[tuple[bytes, list[str], list[int], list[int]]]:
    """Audio + per-chunk-relative character alignment, chunked on character boundaries."""
    rate = format_rate(fmt)
    pcm = voice.render(text, rate, ms_per_char)
    per_char = round(rate * ms_per_char / 1000.0)
    step = max(1, round(chunk_ms / ms_per_char))
    out = []
    for i in range(0, len(text), step):
        chars = list(text[i : i + step])
        audio = encode(pcm[i * per_char : (i + len(chars)) * per_char], fmt)
        starts, durs = voice.char_timings("".join(chars), ms_per_char)
        out.append((audio, chars, starts, durs))
    return out


# ------------------------------------------------------------------------------------------------ ConvAI


_CONVAI_CLIENT_KEYS: dict[str, set[str]] = {
    "conversation_initiation_client_data": {
        "type",
        "conversation_config_override",
        "custom_llm_extra_body",
        "dynamic_variables",
        "user_id",
        "source_info",
        "branch_id",
        "environment",
    },
    "pong": {"type", "event_id"},
    "client_tool_result": {"type", "tool_call_id", "result", "is_error"},
    "contextual_update": {"type", "text"},
    "user_message": {"type", "text"},
    "user_activity": {"type"},
    "feedback": {"type", "score", "event_id"},
    "multimodal_message": {"type", "text", "file_id"},
}
_OVERRIDE_FIELDS = {
    "agent.prompt.prompt",
    "agent.first_message",
    "agent.language",
    "tts.voice_id",
    "tts.stability",
    "tts.speed",
    "tts.similarity_boost",
    "tts.model_id",
    "conversation.text_only",
    "conversation.max_duration_seconds",
}
# Not security-gated: the SDK itself sends a top-level ``text_only`` when it has no audio interface (2.78).
_UNGATED = {"text_only", "conversation.text_only"}
_VAR = re.compile(r"{{\s*([A-Za-z0-9_]+)\s*}}")


def _leaves(d: JSON, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.extend(_leaves(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


def validate_convai_message(text: str | bytes) -> JSON:
    """Validate a ConvAI client message against the documented schema (sans-I/O); raises ProtocolViolation."""
    if isinstance(text, bytes):
        raise ProtocolViolation("Invalid message received: binary frames are not supported.")
    try:
        raw = json.loads(text)
    except ValueError:
        raise ProtocolViolation("Invalid message received: not JSON.") from None
    if not isinstance(raw, dict):
        raise ProtocolViolation("Invalid message received: expected a JSON object.")
    if "user_audio_chunk" in raw:  # the one message without a "type"
        if set(raw) != {"user_audio_chunk"} or not isinstance(raw["user_audio_chunk"], str):
            raise ProtocolViolation(
                "Invalid message received: user_audio_chunk must be the only field, a string."
            )
        try:
            base64.b64decode(raw["user_audio_chunk"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolViolation("Invalid message received: user_audio_chunk is not base64.") from None
        return raw
    mtype = raw.get("type")
    if not isinstance(mtype, str) or mtype not in _CONVAI_CLIENT_KEYS:
        raise ProtocolViolation(f"Invalid message received: unknown type {mtype!r}.")
    unknown = set(raw) - _CONVAI_CLIENT_KEYS[mtype]
    if unknown:
        raise ProtocolViolation(f"Invalid message received: unknown field {sorted(unknown)[0]!r} in {mtype}.")
    if mtype == "pong" and not isinstance(raw.get("event_id"), int):
        raise ProtocolViolation("Invalid message received: pong.event_id must be an integer.")
    if mtype in ("user_message", "contextual_update") and not isinstance(raw.get("text"), str):
        raise ProtocolViolation(f"Invalid message received: {mtype}.text must be a string.")
    if mtype == "conversation_initiation_client_data":
        dv = raw.get("dynamic_variables")
        if dv is not None and (
            not isinstance(dv, dict) or not all(isinstance(v, str | int | float | bool) for v in dv.values())
        ):
            raise ProtocolViolation(
                "Invalid message received: dynamic_variables values must be strings, numbers or booleans."
            )
        ov = raw.get("conversation_config_override")
        if ov is not None and not isinstance(ov, dict):
            raise ProtocolViolation(
                "Invalid message received: conversation_config_override must be an object."
            )
    return raw


class ConvaiSession:
    """One Conversational AI conversation. Introspected by tests."""

    def __init__(self, emu: ElevenLabsEmulator, ws: ServerConnection, agent_id: str, index: int) -> None:
        self.emu = emu
        self.ws = ws
        self.agent_id = agent_id
        self.conversation_id = f"conv_{index + 1:04d}{secrets.token_hex(6)}"
        self.received: list[JSON] = []  #: validated client messages (audio chunks included)
        self.sent: list[JSON] = []
        self.pongs: list[int] = []
        self.dynamic_variables: JSON = {}
        self.overrides: JSON = {}
        self.user_transcripts: list[str] = []
        self.agent_responses: list[str] = []
        self.interruptions = 0
        cfg = emu.config
        self.out_fmt = cfg.agent_output_audio_format
        self.in_fmt = cfg.user_input_audio_format
        in_rate = format_rate(self.in_fmt)
        self._vad = ServerVad(
            "pcmu" if self.in_fmt == "ulaw_8000" else "pcm",
            rate=in_rate,
            prefix_padding_ms=0,
            silence_duration_ms=cfg.silence_duration_ms,
        )
        self.cursor: ScriptCursor = emu.script.cursor()
        self._event_id = 0
        self._ping_id = 0
        self._started = False
        self._speak_task: asyncio.Task[None] | None = None
        self._speaking_until = 0.0
        self._speak_started = 0.0
        self._speak_text = ""
        self._last_audio_event = 0
        self._ready = asyncio.Event()
        self.close_code: int | None = None

    def _next_event(self) -> int:
        self._event_id += 1
        return self._event_id

    async def send(self, msg: JSON) -> None:
        """Send one server message."""
        self.sent.append(msg)
        await self.ws.send(json.dumps(msg))

    async def close(self, code: int, reason: str) -> None:
        """Close the conversation (bad input, limits)."""
        self.close_code = code
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, reason)

    async def run(self) -> None:
        """Serve the conversation until the socket closes."""
        pinger = asyncio.create_task(self._pings()) if self.emu.config.ping_interval_s else None
        starter = asyncio.create_task(self._start_after(1.0))
        try:
            async for message in self.ws:
                try:
                    raw = validate_convai_message(message)
                except ProtocolViolation as exc:
                    await self.close(exc.code, exc.message[:120])
                    return
                self.received.append(raw)
                self.emu._notify()
                try:
                    await self.handle(raw)
                except ProtocolViolation as exc:
                    await self.close(exc.code, exc.message[:120])
                    return
        except ConnectionClosed:
            pass
        finally:
            starter.cancel()
            if pinger:
                pinger.cancel()
            if self._speak_task:
                self._speak_task.cancel()

    async def _start_after(self, seconds: float) -> None:
        # Without initiation data the conversation starts anyway, as ElevenLabs does.
        await asyncio.sleep(seconds)
        await self._start()

    async def _pings(self) -> None:
        interval = self.emu.config.ping_interval_s or 2.0
        with contextlib.suppress(ConnectionClosed):
            await self._ready.wait()
            while True:
                await asyncio.sleep(interval)
                self._ping_id += 1
                await self.send(
                    {
                        "type": "ping",
                        "ping_event": {
                            "event_id": self._ping_id,
                            "ping_ms": 20 if self._ping_id > 1 else None,
                        },
                    }
                )

    def _fill(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in self.dynamic_variables:
                return str(self.dynamic_variables[name])
            if name.startswith("system__"):
                return ""
            raise ProtocolViolation(f"Missing required dynamic variables in first message: {{'{name}'}}")

        return _VAR.sub(sub, text)

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.send(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": self.conversation_id,
                    "agent_output_audio_format": self.out_fmt,
                    "user_input_audio_format": self.in_fmt,
                },
            }
        )
        self._ready.set()
        first = (
            (self.overrides.get("agent") or {}).get("first_message")
            if "first_message" in (self.overrides.get("agent") or {})
            else self.emu.config.first_message
        )
        if first:
            await self._say(self._fill(first))

    async def handle(self, raw: JSON) -> None:
        """Apply one validated client message."""
        if "user_audio_chunk" in raw:
            await self._start()
            await self._on_audio(base64.b64decode(raw["user_audio_chunk"]))
            return
        mtype = raw["type"]
        if mtype == "conversation_initiation_client_data":
            if self._started:
                raise ProtocolViolation("conversation_initiation_client_data must be the first message.")
            self.dynamic_variables = dict(raw.get("dynamic_variables") or {})
            self.overrides = dict(raw.get("conversation_config_override") or {})
            allowed = self.emu.config.allowed_overrides
            for leaf in _leaves(self.overrides):
                if leaf in _UNGATED:
                    continue
                if leaf not in _OVERRIDE_FIELDS or (allowed is not None and leaf not in allowed):
                    raise ProtocolViolation(f"Override for field '{leaf}' is not allowed by config.")
            await self._start()
        elif mtype == "pong":
            self.pongs.append(int(raw["event_id"]))
        elif mtype == "user_message":
            await self._start()
            await self._interrupt_if_speaking()
            await self._reply(raw["text"])
        elif mtype == "client_tool_result":
            await self._reply(None)
        # contextual_update, user_activity, feedback, multimodal_message: accepted, nothing to say

    async def _on_audio(self, data: bytes) -> None:
        for kind, _ms in self._vad.feed(data):
            if kind == "speech_started":
                await self._interrupt_if_speaking()
            else:
                reply = self.cursor.peek()
                heard = reply.user_transcript if reply and reply.user_transcript is not None else ""
                self.user_transcripts.append(heard)
                await self.send(
                    {"type": "user_transcript", "user_transcription_event": {"user_transcript": heard}}
                )
                await self._reply(heard)
        if self.emu.config.vad_scores:
            await self.send(
                {"type": "vad_score", "vad_score_event": {"vad_score": 1.0 if self._vad.in_speech else 0.0}}
            )

    async def _interrupt_if_speaking(self) -> None:
        loop = asyncio.get_running_loop()
        if self._speak_task is None or loop.time() >= self._speaking_until:
            return
        if not self._speak_task.done():
            self._speak_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self._speak_task
        self.interruptions += 1
        await self.send({"type": "interruption", "interruption_event": {"event_id": self._last_audio_event}})
        heard_ms = (loop.time() - self._speak_started) * 1000.0
        keep = int(heard_ms // self.emu.config.ms_per_char)
        if keep < len(self._speak_text):
            await self.send(
                {
                    "type": "agent_response_correction",
                    "agent_response_correction_event": {
                        "original_agent_response": self._speak_text,
                        "corrected_agent_response": self._speak_text[:keep],
                    },
                }
            )
        self._speaking_until = 0.0

    async def _reply(self, user_text: str | None) -> None:
        reply: Reply = self.cursor.next(user_text)
        if reply.function_call is not None:
            fc = reply.function_call
            await self.send(
                {
                    "type": "client_tool_call",
                    "client_tool_call": {
                        "tool_name": fc.name,
                        "tool_call_id": fc.call_id or f"tool_{secrets.token_hex(4)}",
                        "parameters": json.loads(fc.arguments or "{}"),
                    },
                }
            )
            return
        if reply.text:
            await self._say(self._fill(reply.text))

    async def _say(self, text: str) -> None:
        self.agent_responses.append(text)
        await self.send({"type": "agent_response", "agent_response_event": {"agent_response": text}})
        if self.overrides.get("text_only") or (self.overrides.get("conversation") or {}).get("text_only"):
            return
        if self._speak_task is not None and not self._speak_task.done():
            await self._speak_task
        self._speak_text = text
        self._speak_task = asyncio.create_task(self._speak(text))
        if self.emu.config.speed <= 0 and self.emu.config.first_audio_delay_ms <= 0:
            with contextlib.suppress(asyncio.CancelledError):
                await self._speak_task

    async def _speak(self, text: str) -> None:
        cfg = self.emu.config
        loop = asyncio.get_running_loop()
        if cfg.first_audio_delay_ms > 0:
            await asyncio.sleep(cfg.first_audio_delay_ms / 1000.0)
        if self.emu.faults.stall_first_audio:
            await asyncio.Event().wait()
        # The agent counts as speaking for the real-time duration of its audio from the first chunk: that is
        # how long the caller hears it, and the window in which the caller's speech is an interruption.
        chunks = await asyncio.to_thread(render_chunks, text, self.out_fmt, cfg.ms_per_char, cfg.chunk_ms)
        self._speak_started = loop.time()
        self._speaking_until = self._speak_started + len(text) * cfg.ms_per_char / 1000.0
        sent_ms = 0.0
        for audio, chars, starts, durs in chunks:
            drop = self.emu.faults.drop_after_audio_ms
            if drop is not None and sent_ms >= drop:
                self.ws.transport.abort()
                return
            self._last_audio_event = self._next_event()
            await self.send(
                {
                    "type": "audio",
                    "audio_event": {
                        "audio_base_64": base64.b64encode(audio).decode("ascii"),
                        "event_id": self._last_audio_event,
                        "alignment": {
                            "chars": chars,
                            "char_start_times_ms": starts,
                            "char_durations_ms": durs,
                        },
                    },
                }
            )
            sent_ms += len(audio) / bytes_per_ms(self.out_fmt)
            if cfg.speed > 0:
                await asyncio.sleep(
                    max(0.0, self._speak_started + sent_ms / 1000.0 / cfg.speed - loop.time())
                )
            else:
                await asyncio.sleep(0)


# ------------------------------------------------------------------------------------------------ server edge


class ElevenLabsEmulator(EmulatorServer):
    """The server: ``base_url`` is ``http://127.0.0.1:PORT`` (``ELEVENLABS_BASE_URL``); same port for WS."""

    def __init__(
        self,
        script: Script | Sequence[str | Reply] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: ElevenLabsConfig | None = None,
        faults: ElevenLabsFaults | None = None,
    ) -> None:
        super().__init__(host, port)
        self.script = Script.of(script)
        self.config = config or ElevenLabsConfig()
        self.faults = faults or ElevenLabsFaults()
        self.tts_validator = TtsValidator()
        self.tts_sessions: list[TtsSession] = []
        self.conversations: list[ConvaiSession] = []
        self.signed: dict[str, tuple[str, float]] = {}  #: signature -> (agent_id, expiry)

    @property
    def base_url(self) -> str:
        """HTTP base URL (``ELEVENLABS_BASE_URL``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """WebSocket base URL."""
        return f"ws://{self.host}:{self.port}"

    def _serve_options(self) -> dict[str, Any]:
        return {"max_size": 16 * 1024 * 1024}

    def _before_stop(self) -> None:
        # Generation tasks are cancelled first: a session stalled by a fault (``stall_first_audio``) would
        # otherwise keep its handler waiting for audio that never comes, and ``wait_closed`` with it.
        for session in self.tts_sessions:
            for ctx in session.contexts.values():
                if ctx.task is not None:
                    ctx.task.cancel()

    def key_ok(self, key: str) -> bool:
        """Whether an API key is accepted."""
        return bool(key) and (self.config.api_key is None or key == self.config.api_key)

    def _json(self, connection: ServerConnection, status: HTTPStatus, body: JSON) -> Response:
        return json_response(connection, status, body)

    def _reject(self, connection: ServerConnection, status: HTTPStatus, message: str, code: str) -> Response:
        self.rejected_handshakes.append((int(status), message))
        return self._json(connection, status, {"detail": {"status": code, "message": message}})

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path.rstrip("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        key = request.headers.get("xi-api-key", "")
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if path in ("/v1/convai/conversation/get-signed-url", "/v1/convai/conversation/get_signed_url"):
            if not self.key_ok(key):
                return self._reject(connection, HTTPStatus.UNAUTHORIZED, "Invalid API key", "invalid_api_key")
            agent_id = query.get("agent_id")
            if not agent_id:
                return self._json(
                    connection,
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                    {
                        "detail": [
                            {
                                "loc": ["query", "agent_id"],
                                "msg": "field required",
                                "type": "value_error.missing",
                            }
                        ]
                    },
                )
            sig = secrets.token_urlsafe(24)
            self.signed[sig] = (agent_id, asyncio.get_running_loop().time() + self.config.signed_url_ttl_s)
            return self._json(
                connection,
                HTTPStatus.OK,
                {
                    "signed_url": (
                        f"{self.ws_url}/v1/convai/conversation?agent_id={agent_id}&conversation_signature={sig}"
                    )
                },
            )
        if not is_ws:
            return self._reject(connection, HTTPStatus.NOT_FOUND, "Not Found", "not_found")
        if self.faults.refuse_connections:
            return self._reject(
                connection, HTTPStatus.SERVICE_UNAVAILABLE, "Service unavailable", "unavailable"
            )
        tts = re.fullmatch(r"/v1/text-to-speech/([^/]+)/(stream-input|multi-stream-input)", path)
        if tts:
            fmt = query.get("output_format", "mp3_44100_128")
            if fmt not in TTS_FORMATS:
                return self._reject(
                    connection,
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                    f"output_format {fmt!r} is not rendered by the emulator; use one of "
                    f"{', '.join(TTS_FORMATS)}",
                    "invalid_output_format",
                )
            auth = key or query.get("authorization", "").removeprefix("Bearer ").strip()
            if auth and not self.key_ok(auth):
                return self._reject(connection, HTTPStatus.UNAUTHORIZED, "Invalid API key", "invalid_api_key")
            return None
        if path == "/v1/convai/conversation":
            agent_id = query.get("agent_id")
            if not agent_id:
                return self._reject(
                    connection, HTTPStatus.BAD_REQUEST, "agent_id is required", "missing_agent_id"
                )
            conv_sig = query.get("conversation_signature") or query.get("token")
            if conv_sig is not None:
                entry = self.signed.get(conv_sig)
                if entry is None or entry[0] != agent_id or entry[1] < asyncio.get_running_loop().time():
                    return self._reject(
                        connection,
                        HTTPStatus.FORBIDDEN,
                        "Invalid or expired conversation signature",
                        "invalid_signature",
                    )
            elif self.config.private_agent and not self.key_ok(key):
                return self._reject(
                    connection,
                    HTTPStatus.FORBIDDEN,
                    "This agent requires authorization: use a signed URL",
                    "authorization_required",
                )
            return None
        return self._reject(connection, HTTPStatus.NOT_FOUND, "Not Found", "not_found")

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        tts = re.fullmatch(
            r"/v1/text-to-speech/([^/]+)/(stream-input|multi-stream-input)", parts.path.rstrip("/")
        )
        if tts:
            key = ws.request.headers.get("xi-api-key", "") or query.get("authorization", "")
            session = TtsSession(
                self, ws, tts.group(1), tts.group(2) == "multi-stream-input", query, bool(key)
            )
            self.tts_sessions.append(session)
            self._notify()
            await session.run()
        else:
            conv = ConvaiSession(self, ws, query["agent_id"], len(self.conversations))
            self.conversations.append(conv)
            self._notify()
            await conv.run()
        self._notify()


__all__ = ["ElevenLabsConfig", "ElevenLabsEmulator", "ElevenLabsFaults", "Reply", "Script", "field"]
