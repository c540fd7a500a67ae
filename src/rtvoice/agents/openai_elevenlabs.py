"""``RTVOICE_AGENT=openai-elevenlabs``: OpenAI Realtime listens (text output), ElevenLabs speaks.

Data flow: caller μ-law -> OpenAI Realtime (server VAD, transcription, ``output_modalities: ["text"]``) ->
``response.output_text.delta`` -> ElevenLabs ``multi-stream-input`` TTS WebSocket (one context per bot turn) ->
audio (``ulaw_8000`` pass-through, or ``pcm_16000``/``pcm_24000`` resampled to 8 kHz and encoded) -> the call.

* :class:`TextRealtimeCore` is :class:`~rtvoice.agents.openai_realtime.RealtimeCore` in text mode: text deltas go
  to the TTS bridge instead of the sink, and :meth:`TextRealtimeCore.replace_assistant_text` corrects the
  conversation after a barge-in.
* :class:`TtsCore` (sans-I/O) is the multi-context TTS client: context lifecycle (init, text on word boundaries,
  ``flush`` at turn end, ``close_context`` on barge-in and for finished turns, never more than 5 open), audio
  conversion and the per-context :class:`~rtvoice.agents.vendor_common.Alignment`.
* :class:`OpenAIElevenLabsAgent` wires both to the agent interface. Item ids at the sink boundary are the TTS
  context ids.

Barge-in: OpenAI text items cannot be truncated by ``audio_end_ms`` (truncate applies to audio content only), so
the assistant item is deleted (``conversation.item.delete``) and, if the caller heard anything, an assistant text
item with exactly the heard text (cut by the ElevenLabs character timings at the heard position, back to a whole
word) is inserted in its place (``conversation.item.create`` with ``previous_item_id``).

The TTS socket is opened with ``inactivity_timeout=180`` (the maximum) and re-opened lazily at the start of a turn
if ElevenLabs closed it while the line was idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import quote, urlencode

from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.agents.openai_realtime import RealtimeCore, RealtimeLink, ToolRunner
from rtvoice.agents.ticker import ticker_for
from rtvoice.agents.vendor_common import (
    Alignment,
    ToUlaw8k,
    Usage,
    WordChunker,
    b64decode,
    cancel_all,
    close_quietly,
    ws_base_url,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from rtvoice.config import Settings

log = logging.getLogger(__name__)

MAX_CONTEXTS = 5


class TextHooks(Protocol):
    def text_delta(self, item_id: str, delta: str, now: float) -> None: ...
    def text_done(self, item_id: str, text: str, now: float) -> None: ...


class TextRealtimeCore(RealtimeCore):
    """RealtimeCore with ``output_modalities: ["text"]``: bot text goes to ``hooks`` (the TTS bridge)."""

    def __init__(self, settings: Settings, hooks: TextHooks) -> None:
        super().__init__(settings, text_only=True)
        self.hooks = hooks
        self.turn_ended_at: float | None = None

    def _on_text_delta(self, ev: dict[str, Any], now: float) -> None:
        if ev.get("response_id") in self._discarded:
            return
        it = self._bot_item(str(ev.get("item_id")), str(ev.get("response_id") or ""))
        delta = str(ev.get("delta") or "")
        it.text += delta
        if it.turn is not None:
            it.turn.text += delta
        self._first_output(now)
        if delta:
            self.hooks.text_delta(it.item_id, delta, now)

    def _on_text_done(self, ev: dict[str, Any], now: float) -> None:
        if ev.get("response_id") in self._discarded:
            return
        it = self._bot_item(str(ev.get("item_id")), str(ev.get("response_id") or ""))
        text = str(ev.get("text") or "")
        it.text = text
        if it.turn is not None:
            it.turn.text = text
        self.hooks.text_done(it.item_id, text, now)

    def _on_speech_stopped_text(self, ev: dict[str, Any], now: float) -> None:
        RealtimeCore._on_speech_stopped(self, ev, now)
        self.turn_ended_at = now

    def queue_greeting(self, now: float) -> None:
        super().queue_greeting(now)
        if self.settings.greeting:
            self.turn_ended_at = now

    def replace_assistant_text(self, item_id: str, text: str) -> None:
        """Make the conversation hold ``text`` (what the caller heard) instead of assistant item
        ``item_id``.
        """
        it = self.items.get(item_id)
        self._send({"type": "conversation.item.delete", "item_id": item_id})
        if text:
            create: dict[str, Any] = {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text}],
                },
            }
            if it is not None and it.previous_item_id:
                create["previous_item_id"] = it.previous_item_id
            self._send(create)
        if it is not None and it.turn is not None:
            it.turn.text = text

    _handlers: ClassVar[dict[str, Callable[[RealtimeCore, dict[str, Any], float], None]]] = {
        **RealtimeCore._handlers,
        "response.output_text.delta": _on_text_delta,  # type: ignore[dict-item]
        "response.output_text.done": _on_text_done,  # type: ignore[dict-item]
        "input_audio_buffer.speech_stopped": _on_speech_stopped_text,  # type: ignore[dict-item]
    }


@dataclass(slots=True)
class TtsContext:
    """One bot turn on the ElevenLabs socket."""

    ctx_id: str
    source_item: str  # the OpenAI assistant item whose text it speaks
    out: ToUlaw8k
    chunker: WordChunker = field(default_factory=WordChunker)
    alignment: Alignment = field(default_factory=Alignment)
    text_sent: str = ""
    sent_chars: int = 0  # non-space characters sent
    aligned_chars: int = 0  # non-space characters whose audio arrived (by alignment)
    flushed: bool = False
    server_final: bool = False  # ElevenLabs sent isFinal for the context
    audio_done: bool = False  # bot_audio_done was emitted
    closed: bool = False
    audio_ms: float = 0.0
    delivered: bool = False
    waiting_since: float | None = None


class TtsCore:
    """Sans-I/O ElevenLabs ``multi-stream-input`` client logic for one call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sink: AgentSink | None = None
        self.outbox: deque[str] = deque()
        self.contexts: dict[str, TtsContext] = {}  # open (not closed) contexts, oldest first
        self.by_item: dict[str, TtsContext] = {}
        self.all: dict[str, TtsContext] = {}
        self._n = 0
        self.fault: Callable[[str, str, bool], None] = lambda kind, msg, fatal: None
        self.characters = 0
        self.stall_timeout_s = settings.vendor_first_byte_timeout_s
        #: Seconds from the caller's end of turn to the first TTS audio handed to the call, per turn.
        self.first_audio_latencies: list[float] = []
        self.turn_ended_at: float | None = None
        ToUlaw8k(settings.elevenlabs_output_format)  # fail early on an unsupported format

    def url(self) -> str:
        s = self.settings
        query = urlencode(
            {
                "model_id": s.elevenlabs_model_id,
                "output_format": s.elevenlabs_output_format,
                "inactivity_timeout": 180,
            }
        )
        voice = quote(s.elevenlabs_voice_id, safe="")
        return f"{ws_base_url(s.elevenlabs_base_url)}/v1/text-to-speech/{voice}/multi-stream-input?{query}"

    def _send(self, msg: dict[str, Any]) -> None:
        self.outbox.append(json.dumps(msg, separators=(",", ":")))

    def start_turn(self, source_item: str) -> TtsContext:
        """A new context for OpenAI item ``source_item``; earlier contexts are closed (they finished or were
        cut).
        """
        for ctx in list(self.contexts.values()):
            self.close(ctx)
        self._n += 1
        ctx = TtsContext(f"ctx-{self._n}", source_item, ToUlaw8k(self.settings.elevenlabs_output_format))
        self.contexts[ctx.ctx_id] = ctx
        self.by_item[source_item] = ctx
        self.all[ctx.ctx_id] = ctx
        assert len(self.contexts) <= MAX_CONTEXTS
        self._send({"text": " ", "context_id": ctx.ctx_id})
        return ctx

    def text(self, ctx: TtsContext, delta: str, now: float) -> None:
        chunk = ctx.chunker.feed(delta)
        if chunk and not ctx.closed:
            self._send_text(ctx, chunk, now)

    def _send_text(self, ctx: TtsContext, chunk: str, now: float) -> None:
        ctx.text_sent += chunk
        ctx.sent_chars += sum(1 for c in chunk if not c.isspace())
        self.characters += len(chunk)
        if ctx.waiting_since is None and not ctx.delivered:
            ctx.waiting_since = now
        self._send({"text": chunk, "context_id": ctx.ctx_id})

    def finish(self, ctx: TtsContext, now: float) -> None:
        """The turn's text is complete: send what is left and flush."""
        if ctx.closed or ctx.flushed:
            return
        tail = ctx.chunker.finish()
        if tail:
            self._send_text(ctx, tail, now)
        ctx.flushed = True
        self._send({"text": "", "context_id": ctx.ctx_id, "flush": True})
        self._maybe_done(ctx)

    def _maybe_done(self, ctx: TtsContext) -> None:
        """After the flush, audio whose alignment covers every character sent completes the turn.

        ElevenLabs sends ``isFinal`` for a context only when it is closed, so completion is read from the
        alignment; the finished context is then closed at once, which keeps the socket far below 5 contexts.
        """
        if ctx.flushed and ctx.delivered and not ctx.closed and ctx.aligned_chars >= ctx.sent_chars:
            self._audio_done(ctx)
            self.close(ctx)

    def _audio_done(self, ctx: TtsContext) -> None:
        if ctx.delivered and not ctx.audio_done and self.sink is not None:
            self.sink.bot_audio_done(ctx.ctx_id)
        ctx.audio_done = True

    def close(self, ctx: TtsContext) -> None:
        """Close (stop and discard) a context; its audio ends here for the call."""
        if ctx.closed:
            return
        ctx.closed = True
        ctx.waiting_since = None
        self.contexts.pop(ctx.ctx_id, None)
        if not ctx.server_final:
            self._send({"context_id": ctx.ctx_id, "close_context": True})
        self._audio_done(ctx)

    def feed(self, msg: dict[str, Any], now: float) -> None:
        """One server message."""
        ctx = self.all.get(str(msg.get("contextId") or msg.get("context_id") or ""))
        if msg.get("error") or (msg.get("code") and "audio" not in msg):
            self.fault(
                "tts_error", f"ElevenLabs: {msg.get('error')}: {msg.get('message')}", msg.get("code") == 1008
            )
            return
        audio = msg.get("audio")
        if audio and ctx is not None and not ctx.closed:
            data = b64decode(str(audio))
            chunk_ms = ctx.out.source_ms(len(data))
            alignment = msg.get("alignment") or msg.get("normalizedAlignment")
            before = len(ctx.alignment.chars)
            ctx.alignment.add_chunk(alignment, chunk_ms)
            ctx.aligned_chars += sum(1 for c in ctx.alignment.chars[before:] if not c.isspace())
            ctx.audio_ms += chunk_ms
            ulaw = ctx.out.convert(data)
            if ulaw and self.sink is not None:
                if not ctx.delivered and self.turn_ended_at is not None:
                    self.first_audio_latencies.append(now - self.turn_ended_at)
                    self.turn_ended_at = None
                ctx.delivered = True
                ctx.waiting_since = None
                self.sink.bot_audio(ctx.ctx_id, ulaw)
            self._maybe_done(ctx)
        if msg.get("isFinal") and ctx is not None and not ctx.server_final:
            ctx.server_final = True
            self.close(ctx)

    def check_stall(self, now: float) -> bool:
        """True (and a fatal fault) when text was sent but no audio came back within the timeout."""
        for ctx in self.contexts.values():
            if ctx.waiting_since is not None and now - ctx.waiting_since >= self.stall_timeout_s:
                ctx.waiting_since = None
                self.fault("stall", f"ElevenLabs sent no audio {self.stall_timeout_s:.1f} s after text", True)
                return True
        return False

    def dropped(self) -> None:
        """The socket closed: every open context is gone."""
        for ctx in list(self.contexts.values()):
            ctx.server_final = True  # nothing to close on the server any more
            self.close(ctx)
        self.outbox.clear()


class OpenAIElevenLabsAgent(Agent):
    """OpenAI Realtime (text) + ElevenLabs multi-context TTS (see the module docstring)."""

    name = "openai-elevenlabs"
    connect_timeout_s = 10.0

    def __init__(self, settings: Settings, *, append_frames: int = 2) -> None:
        self.settings = settings
        self.core = TextRealtimeCore(settings, self)
        self.link = RealtimeLink(settings, self.core, append_frames=append_frames)
        self._tts_connect_lock = asyncio.Lock()
        self.tools = ToolRunner(settings, self.core, self.link.kick)
        self.tts = TtsCore(settings)
        self.tts.fault = self.core.fault
        self._ws: Any = None
        self._tts_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._tts_error = ""
        self._started = False

    @property
    def usage(self) -> Usage:
        """OpenAI token totals plus the characters sent to ElevenLabs."""
        self.core.usage.tts_characters = self.tts.characters
        return self.core.usage

    # --- TTS socket -----------------------------------------------------------------------------------------
    async def _tts_connect(self) -> bool:
        # One TTS socket even when ``start`` runs while the early ``prepare`` connect is in flight.
        async with self._tts_connect_lock:
            if self._ws is not None:
                return True
            from websockets.asyncio.client import connect

            try:
                self._ws = await asyncio.wait_for(
                    connect(
                        self.tts.url(),
                        additional_headers={"xi-api-key": self.settings.elevenlabs_api_key},
                        max_size=16 * 1024 * 1024,
                        compression=None,
                    ),
                    self.connect_timeout_s,
                )
            except Exception as exc:
                self._tts_error = f"{type(exc).__name__}: {exc}"
                return False
            if self._closing:  # closed while the handshake was in flight: nothing may outlive close()
                ws, self._ws = self._ws, None
                await close_quietly(ws)
                self._tts_error = "closed while connecting"
                return False
            if self._started:
                self._tasks.append(asyncio.create_task(self._tts_receive(self._ws), name="tts-recv"))
            return True

    async def prepare(self) -> None:
        await asyncio.gather(self.link.connect(report=False), self._tts_connect())

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        self.core.attach(sink)
        self.tools.bind(call, sink)
        self.tts.sink = sink
        ok_openai, ok_tts = await asyncio.gather(self.link.connect(), self._tts_connect())
        if ok_openai and not ok_tts:
            self.core.fault("connect", f"ElevenLabs TTS connect failed: {self._tts_error}", True)
        if not (ok_openai and ok_tts):
            return
        self._started = True
        self._tasks = [
            asyncio.create_task(self._tts_receive(self._ws), name="tts-recv"),
            asyncio.create_task(self._tts_sender(), name="tts-send"),
        ]
        ticker_for().add(self._tts_watchdog)
        self.core.queue_greeting(asyncio.get_running_loop().time())
        self.link.kick()

    async def _tts_sender(self) -> None:
        outbox = self.tts.outbox
        while not self._closing:
            await self._tts_wake.wait()
            self._tts_wake.clear()
            if outbox and self._ws is None and not await self._tts_connect():
                self.core.fault("connect", f"ElevenLabs TTS reconnect failed: {self._tts_error}", True)
                outbox.clear()
                continue
            try:
                while outbox:
                    await self._ws.send(outbox[0])
                    outbox.popleft()
            except Exception:
                await asyncio.sleep(0.05)

    async def _tts_receive(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                raw = await ws.recv()
            except ConnectionClosed as exc:
                if self._closing or ws is not self._ws:
                    return
                self._ws = None
                busy = bool(self.tts.contexts)  # open contexts still owe audio (finished ones are closed)
                self.tts.dropped()
                rcvd = exc.rcvd
                if busy:
                    why = f"{rcvd.code}: {rcvd.reason}" if rcvd is not None else "connection lost"
                    self.core.fault("dropped", f"ElevenLabs TTS connection closed ({why})", False)
                return  # the next turn re-opens the socket
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict):
                try:
                    self.tts.feed(msg, loop.time())
                except Exception as exc:
                    log.warning("elevenlabs tts message not handled: %r", exc)
            if self.tts.outbox:
                self._tts_wake.set()

    def _tts_watchdog(self, now: float) -> None:
        """Every ``WATCHDOG_PERIOD_S`` (the loop's shared :mod:`rtvoice.agents.ticker`): a stalled TTS."""
        if not self._closing:
            self.tts.check_stall(now)

    # --- text hooks (called by TextRealtimeCore) ------------------------------------------------------------
    def text_delta(self, item_id: str, delta: str, now: float) -> None:
        ctx = self.tts.by_item.get(item_id)
        if ctx is None:
            self.tts.turn_ended_at = self.core.turn_ended_at
            ctx = self.tts.start_turn(item_id)
        if ctx.closed:
            return
        self.tts.text(ctx, delta, now)
        if self.core.sink is not None:
            self.core.sink.bot_text(ctx.ctx_id, delta, False)
        self._tts_wake.set()

    def text_done(self, item_id: str, text: str, now: float) -> None:
        ctx = self.tts.by_item.get(item_id)
        if ctx is None or ctx.closed:
            return
        self.tts.finish(ctx, now)
        if self.core.sink is not None:
            self.core.sink.bot_text(ctx.ctx_id, text, True)
        self._tts_wake.set()

    # --- agent interface ------------------------------------------------------------------------------------
    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        self.link.send_caller_audio(ulaw, pcm)

    def barge_in(self, heard: Heard | None) -> None:
        """Cancel OpenAI's response, close the interrupted TTS contexts, keep only the heard text."""
        self.core.barge_in(None)  # cancel only: text items have no audio to truncate
        for ctx in list(self.tts.all.values()):
            is_heard = heard is not None and heard.item_id == ctx.ctx_id
            cut = not ctx.closed  # closed contexts finished playing out or were cut before
            if not (cut or is_heard):
                continue
            self.tts.close(ctx)
            if is_heard and heard is not None:
                said = self._heard_text(ctx, heard.audio_end_ms)
            elif not ctx.delivered:
                said = ""  # generated but never played: the caller heard none of it
            else:
                continue  # played, and the call did not say how much: leave it as it is
            item = self.core.items.get(ctx.source_item)
            full = (item.turn.text if item is not None and item.turn is not None else ctx.text_sent).strip()
            if said != full:
                self.core.replace_assistant_text(ctx.source_item, said)
        self.link.kick()
        self._tts_wake.set()

    @staticmethod
    def _heard_text(ctx: TtsContext, heard_ms: int) -> str:
        if ctx.alignment.chars:
            return ctx.alignment.heard_text(heard_ms)
        if ctx.audio_ms <= 0:
            return ""
        # No alignment from the server: cut in proportion to the audio heard, back to a whole word.
        text = ctx.text_sent
        keep = int(len(text) * min(1.0, heard_ms / ctx.audio_ms))
        if keep >= len(text.rstrip()):
            return text.strip()
        cut = text.rfind(" ", 0, keep + 1)
        return text[:cut].strip() if cut > 0 else ""

    async def close(self) -> None:
        self._closing = True
        self._tts_wake.set()
        ticker_for().remove(self._tts_watchdog)
        await cancel_all(self._tasks)
        self._tasks = []
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.send(json.dumps({"close_socket": True})), 1.0)
            await close_quietly(self._ws)
        self._ws = None
        await self.tools.close()
        await self.link.close()
