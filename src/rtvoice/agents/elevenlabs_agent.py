"""``RTVOICE_AGENT=elevenlabs-agent``: an ElevenLabs Conversational AI agent over its WebSocket.

Written by hand on the ``websockets`` asyncio client (the SDK's conversation classes are thread-based; see
vendors.md §B.6). The signed URL for private agents comes from the ``elevenlabs`` SDK's async REST client, pointed
at ``ELEVENLABS_BASE_URL``.

* :class:`ConvAICore` (sans-I/O) maps server messages to sink calls and queues client messages: the
  ``conversation_initiation_client_data`` (dynamic variables: caller number, called number, CallSid; overrides:
  the prompt when ``RTVOICE_INSTRUCTIONS`` was configured, the first message from ``RTVOICE_GREETING``), ``pong``
  for every ``ping``, audio transcoding from the formats the agent announces in
  ``conversation_initiation_metadata`` (μ-law pass-through when the agent is set to ``ulaw_8000``), the
  ``interruption`` rule of the SDK (drop audio whose ``event_id`` is not newer than the interruption's).
* :class:`ElevenLabsAgent` is the I/O edge: connect, a receiver, a sender and a watchdog task.

Item ids at the sink boundary group the audio ``event_id``\\ s of one agent response: ``el-<first event_id>``.
An agent response starts with an ``agent_response`` message or with audio after an interruption/caller turn.
ConvAI detects barge-in itself (and corrects its own transcript, ``agent_response_correction``), so
:meth:`ElevenLabsAgent.barge_in` only stops forwarding the interrupted response's audio: there is nothing to
truncate on this protocol.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import deque
from dataclasses import fields
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.agents.ticker import ticker_for
from rtvoice.agents.vendor_common import (
    PCM_RATES,
    FromPcm8k,
    ToUlaw8k,
    b64decode,
    cancel_all,
    close_quietly,
    ws_base_url,
)

if TYPE_CHECKING:
    from rtvoice.config import Settings

log = logging.getLogger(__name__)

CHUNK_PREFIX = '{"user_audio_chunk":"'
CHUNK_SUFFIX = '"}'
#: Caller audio kept while the agent's input format is not known yet (before the initiation metadata): 1 s.
EARLY_AUDIO_LIMIT = 8000
#: ConvAI never says that a response's audio ended (no done event; ``agent_response`` comes before the audio),
#: so a response whose audio stopped arriving this long ago is ended here (``bot_audio_done``). Left open, the
#: call would count the agent as still speaking after its answer had played, and a caller who then speaks
#: would be "barging in" on silence (a needless ``clear``, and the agent's next audio muted until the
#: transcript). ConvAI streams a response faster than real time, so a longer pause is the end of it; audio
#: that still comes later plays as a continuation item.
ITEM_IDLE_S = 0.5


def _default_instructions() -> str:
    from rtvoice.config import Settings

    return str(next(f.default for f in fields(Settings) if f.name == "instructions"))


class ConvAICore:
    """Sans-I/O ElevenLabs Conversational AI client logic for one call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sink: AgentSink | None = None
        self.outbox: deque[str] = deque()
        self._early_faults: list[tuple[str, str, bool]] = []
        self.conversation_id = ""
        self.input_format = ""
        self.output_format = ""
        self._out: ToUlaw8k | None = None
        self._in: FromPcm8k | None = None
        self.last_interrupt_id = -1
        self.item: str | None = None  # the response whose audio is flowing
        self._last_item: str | None = None  # the latest response (for transcript corrections)
        self._item_has_text = False
        self._pending_text: str | None = None
        self._last_audio_at = 0.0
        self._idle_closed = False  # the current response's item was ended by ITEM_IDLE_S (more may follow)
        self._muted = False  # after a local barge-in: drop audio until the next response starts
        self.awaiting_since: float | None = None
        self.stall_timeout_s = settings.vendor_first_byte_timeout_s
        self.stalls = 0
        self.failed = False
        self.first_output_latencies: list[float] = []

    # --- helpers --------------------------------------------------------------------------------------------
    def fault(self, kind: str, message: str, fatal: bool) -> None:
        self.failed = self.failed or fatal
        if self.sink is None:
            self._early_faults.append((kind, message, fatal))
        else:
            self.sink.fault(kind, message, fatal)

    def attach(self, sink: AgentSink) -> None:
        self.sink = sink
        early, self._early_faults = self._early_faults, []
        for f in early:
            sink.fault(*f)

    def _send(self, msg: dict[str, Any]) -> None:
        self.outbox.append(json.dumps(msg, separators=(",", ":")))

    # --- client messages ------------------------------------------------------------------------------------
    def initiation(self, call: CallInfo) -> dict[str, Any]:
        """``conversation_initiation_client_data`` for ``call``."""
        agent: dict[str, Any] = {}
        if self.settings.instructions != _default_instructions():
            agent["prompt"] = {"prompt": self.settings.instructions}
        if self.settings.greeting:
            agent["first_message"] = self.settings.greeting
        msg: dict[str, Any] = {
            "type": "conversation_initiation_client_data",
            "dynamic_variables": {
                "caller_number": call.from_number,
                "called_number": call.to_number,
                "call_sid": call.call_sid,
            },
        }
        if agent:
            msg["conversation_config_override"] = {"agent": agent}
        return msg

    def queue_initiation(self, call: CallInfo) -> None:
        self._send(self.initiation(call))

    def caller_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> Any:
        """The caller's frame in the agent's input format, or None while that format is unknown."""
        if self._in is None:
            return ulaw if self.input_format == "ulaw_8000" else None
        return self._in.convert(pcm)

    def barge_in(self, heard: Heard | None) -> None:
        """Stop forwarding the current response's audio (ConvAI interrupts and corrects itself)."""
        self._muted = True
        self.awaiting_since = None
        self.close_item()

    # --- server messages ------------------------------------------------------------------------------------
    def feed(self, msg: dict[str, Any], now: float) -> None:
        kind = msg.get("type")
        if kind == "audio":
            self._on_audio(msg.get("audio_event") or {}, now)
        elif kind == "ping":
            ev = msg.get("ping_event") or {}
            self._send({"type": "pong", "event_id": ev.get("event_id")})
        elif kind == "conversation_initiation_metadata":
            self._on_metadata(msg.get("conversation_initiation_metadata_event") or {})
        elif kind == "interruption":
            ev = msg.get("interruption_event") or {}
            eid = ev.get("event_id")
            if isinstance(eid, int):
                self.last_interrupt_id = max(self.last_interrupt_id, eid)
            self.close_item()
            self._muted = False
            if self.sink is not None:
                self.sink.interrupt()
        elif kind == "agent_response":
            text = str((msg.get("agent_response_event") or {}).get("agent_response") or "")
            self._on_agent_response(text)
        elif kind == "agent_response_correction":
            ev = msg.get("agent_response_correction_event") or {}
            if self.sink is not None and self._last_item is not None:
                self.sink.bot_text(self._last_item, str(ev.get("corrected_agent_response") or ""), True)
        elif kind == "user_transcript":
            text = str((msg.get("user_transcription_event") or {}).get("user_transcript") or "")
            self.close_item()
            self._muted = False
            self.awaiting_since = now
            if self.sink is not None:
                self.sink.caller_text(text, True)
        elif kind == "client_tool_call":
            call = msg.get("client_tool_call") or {}
            self._send(
                {
                    "type": "client_tool_result",
                    "tool_call_id": call.get("tool_call_id"),
                    "result": f"tool {call.get('tool_name')!r} is not available on this line",
                    "is_error": True,
                }
            )

    def _on_metadata(self, ev: dict[str, Any]) -> None:
        self.conversation_id = str(ev.get("conversation_id") or "")
        self.output_format = str(ev.get("agent_output_audio_format") or "pcm_16000")
        self.input_format = str(ev.get("user_input_audio_format") or "pcm_16000")
        try:
            self._out = ToUlaw8k(self.output_format)
            if self.input_format != "ulaw_8000":
                if self.input_format not in PCM_RATES:
                    raise ValueError(f"unsupported input format {self.input_format!r}")
                self._in = FromPcm8k(PCM_RATES[self.input_format])
        except (ValueError, ImportError) as exc:
            self.fault("format", f"ElevenLabs agent audio format not supported: {exc}", True)

    def _on_agent_response(self, text: str) -> None:
        self._muted = False
        if self.item is not None and not self._item_has_text:
            self._item_has_text = True
            if self.sink is not None:
                self.sink.bot_text(self.item, text, True)
            return
        self.close_item()
        self._pending_text = text

    def close_item(self) -> None:
        self._idle_closed = False
        if self.item is not None:
            if self.sink is not None:
                self.sink.bot_audio_done(self.item)
            self.item = None
        if self._out is not None:
            self._out.reset()

    def _on_audio(self, ev: dict[str, Any], now: float) -> None:
        eid = ev.get("event_id")
        if isinstance(eid, int) and eid <= self.last_interrupt_id:
            return  # audio of an interrupted response (the SDK's rule)
        if self._muted or self._out is None or self.sink is None:
            return
        data = b64decode(str(ev.get("audio_base_64") or ""))
        self._last_audio_at = now
        if self.item is None:
            self.item = f"el-{eid}"
            self._last_item = self.item
            # a continuation of a response ended by ITEM_IDLE_S does not take the next response's text
            self._item_has_text = self._pending_text is not None or self._idle_closed
            if self._pending_text is not None:
                self.sink.bot_text(self.item, self._pending_text, True)
                self._pending_text = None
        ulaw = self._out.convert(data)
        if ulaw:
            if self.awaiting_since is not None:
                self.first_output_latencies.append(now - self.awaiting_since)
                self.awaiting_since = None
            self.stalls = 0
            self.sink.bot_audio(self.item, ulaw)

    def check_stall(self, now: float) -> None:
        """No agent audio ``stall_timeout_s`` after the caller's transcript: a fault (fatal the second
        time). Also ends a response whose audio stopped ``ITEM_IDLE_S`` ago.
        """
        if self.item is not None and now - self._last_audio_at >= ITEM_IDLE_S:
            self.close_item()
            self._idle_closed = True
        if self.awaiting_since is None or self.failed or now - self.awaiting_since < self.stall_timeout_s:
            return
        self.stalls += 1
        waited = now - self.awaiting_since
        self.awaiting_since = now
        fatal = self.stalls >= 2
        if fatal:
            self.awaiting_since = None
        self.fault("stall", f"no agent audio {waited:.1f} s after the caller's turn", fatal)


class ElevenLabsAgent(Agent):
    """ElevenLabs Conversational AI (see the module docstring)."""

    name = "elevenlabs-agent"
    connect_timeout_s = 10.0

    def __init__(self, settings: Settings, *, append_frames: int = 2) -> None:
        self.settings = settings
        self.core = ConvAICore(settings)
        self._ws: Any = None
        self._connect_lock = asyncio.Lock()
        self._audio = bytearray()
        self._early = bytearray()
        self._batch = max(1, append_frames)
        self._frames = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._connect_error = ""

    async def _url(self) -> str:
        s = self.settings
        if s.elevenlabs_signed_url:
            from elevenlabs.client import AsyncElevenLabs

            client = AsyncElevenLabs(api_key=s.elevenlabs_api_key, base_url=s.elevenlabs_base_url)
            resp = await client.conversational_ai.conversations.get_signed_url(agent_id=s.elevenlabs_agent_id)
            return str(resp.signed_url)
        base = ws_base_url(s.elevenlabs_base_url)
        return f"{base}/v1/convai/conversation?agent_id={quote(s.elevenlabs_agent_id)}"

    async def _connect(self) -> bool:
        # One connection per call even when ``start`` runs while the early ``prepare`` connect is in flight.
        async with self._connect_lock:
            if self._ws is not None:
                return True
            from websockets.asyncio.client import connect

            headers = {"xi-api-key": self.settings.elevenlabs_api_key} if self.settings.elevenlabs_api_key else {}
            try:
                url = await asyncio.wait_for(self._url(), self.connect_timeout_s)
                self._ws = await asyncio.wait_for(
                    connect(url, additional_headers=headers, max_size=16 * 1024 * 1024, compression=None),
                    self.connect_timeout_s,
                )
            except Exception as exc:
                self._connect_error = f"{type(exc).__name__}: {exc}"
                return False
            if self._closing:  # closed while the handshake was in flight: nothing may outlive close()
                ws, self._ws = self._ws, None
                await close_quietly(ws)
                self._connect_error = "closed while connecting"
                return False
            return True

    async def prepare(self) -> None:
        await self._connect()

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        self.core.attach(sink)
        if not await self._connect():
            self.core.fault("connect", f"ElevenLabs agent connect failed: {self._connect_error}", True)
            return
        self.core.queue_initiation(call)
        self._tasks = [
            asyncio.create_task(self._receive(), name="elevenlabs-agent-recv"),
            asyncio.create_task(self._sender(), name="elevenlabs-agent-send"),
        ]
        ticker_for().add(self._watchdog)
        self._wake.set()

    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        data = self.core.caller_audio(ulaw, pcm)
        if data is None:
            if not self.core.input_format and len(self._early) < EARLY_AUDIO_LIMIT:
                self._early += pcm  # keep int16 until the agent says which format it wants
            return
        self._audio += data
        self._frames += 1
        if self._frames >= self._batch:
            self._frames = 0
            self._wake.set()

    def barge_in(self, heard: Heard | None) -> None:
        self.core.barge_in(heard)

    async def _sender(self) -> None:
        outbox = self.core.outbox
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if self._early and self.core.input_format:
                self._flush_early()
            try:
                while outbox:
                    await self._ws.send(outbox[0])
                    outbox.popleft()
                if self._audio:
                    msg = CHUNK_PREFIX + base64.b64encode(self._audio).decode("ascii") + CHUNK_SUFFIX
                    self._audio.clear()
                    await self._ws.send(msg)
            except Exception:
                await asyncio.sleep(0.05)  # the receiver sees the close and reports it

    def _flush_early(self) -> None:
        early = bytes(self._early)
        self._early.clear()
        for off in range(0, len(early) - 319, 320):
            pcm = memoryview(early[off : off + 320]).cast("h")
            data = self.core.caller_audio(_ulaw_of(pcm), pcm)
            if data is not None:
                self._audio += data

    def _watchdog(self, now: float) -> None:
        """Every ``WATCHDOG_PERIOD_S`` (the loop's shared :mod:`rtvoice.agents.ticker`): a stalled agent."""
        if not self._closing:
            self.core.check_stall(now)

    async def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        loop = asyncio.get_running_loop()
        core = self.core
        while not self._closing:
            try:
                raw = await self._ws.recv()
            except ConnectionClosed as exc:
                if self._closing:
                    return
                rcvd = exc.rcvd
                if isinstance(exc, ConnectionClosedOK) and rcvd is not None and rcvd.code == 1000:
                    # The agent ended the conversation (e.g. its end_call tool): end the call cleanly.
                    core.close_item()
                    if core.sink is not None:
                        core.sink.hang_up(f"ElevenLabs agent ended the conversation: {rcvd.reason}")
                    return
                code = rcvd.code if rcvd is not None else 1006
                reason = rcvd.reason if rcvd is not None else "connection lost"
                core.close_item()
                # A ConvAI conversation cannot be resumed: a new one would start over with the first message.
                core.fault("dropped", f"ElevenLabs agent connection closed ({code}: {reason})", True)
                return
            try:
                msg = json.loads(raw)
            except ValueError:
                core.fault("bad_event", "ElevenLabs agent sent a non-JSON message", False)
                continue
            if not isinstance(msg, dict):
                continue
            try:
                core.feed(msg, loop.time())
            except Exception as exc:
                log.warning("elevenlabs agent message %s not handled: %r", msg.get("type"), exc)
            if core.outbox or (self._early and core.input_format):
                self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        ticker_for().remove(self._watchdog)
        await cancel_all(self._tasks)
        self._tasks = []
        await close_quietly(self._ws)
        self._ws = None


def _ulaw_of(pcm: memoryview) -> bytes:
    from rtvoice.audio import ulaw_encode

    return bytes(ulaw_encode(pcm))
