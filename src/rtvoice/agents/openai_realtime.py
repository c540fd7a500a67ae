"""``RTVOICE_AGENT=openai``: OpenAI Realtime (GA interface) speech-to-speech over the openai SDK's WebSocket.

Layers, sans-I/O first:

* :class:`RealtimeCore` turns OpenAI server events (decoded JSON dicts) into
:class:`~rtvoice.agents.base.AgentSink`
  calls and queues client events (JSON text) in :attr:`RealtimeCore.outbox`. It owns everything that needs
  deciding: which response is active, how much audio each item produced (a truncate is clamped to it), which
  late audio to drop after a barge-in, usage totals, the conversation history used to rebuild context after a
  reconnect, first-byte stall detection and which ``error`` codes are fatal. Tested without sockets.
* :class:`RealtimeLink` is the thin I/O edge: it connects with
``AsyncOpenAI(...).realtime.connect(model=...)``,
  runs a receiver, a sender and a watchdog task, and reconnects (new session + context replay) after a drop or the
  60-minute session limit.
* :class:`OpenAIRealtimeAgent` wires both to the :class:`~rtvoice.agents.base.Agent` interface.

Audio paths (``OPENAI_AUDIO_FORMAT``): ``pcmu`` sends Twilio's μ-law bytes untouched both ways (zero transcoding);
``pcm`` sends 24 kHz int16 through the compiled resampler (8k->24k in, 24k->8k out + μ-law encode).

Uplink batching: ``send_audio`` only appends the frame to a bytearray; the sender task base64-encodes everything
queued once ``append_frames`` frames (default 2 = 40 ms) are there, in one ``input_audio_buffer.append``. One
frame per message halves the batching delay (20 ms less worst-case latency to the server's VAD) but doubles the
messages, JSON/base64 work and syscalls per call; 40 ms is the middle ground (the OpenAI Agents SDK's Twilio
example buffers 50 ms). Server VAD waits ~500 ms of silence anyway, so 20 ms of batching is ~4 % of the turn
gap.

Uplink writes: when nothing else is queued and the sender is idle, a full batch is written at once, during the
frame that completes it; the sender task sends anything else. (Writing one event-loop iteration's appends
together at its end, to wake the vendor's process once per burst, was tried and measured not to pay: see
docs/performance.md.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from binascii import b2a_base64
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns as _perf_ns
from typing import TYPE_CHECKING, Any, ClassVar

from websockets.protocol import State as _WsState

from rtvoice import metrics
from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.agents.ticker import ticker_for
from rtvoice.agents.vendor_common import (
    FromPcm8k,
    ToUlaw8k,
    Usage,
    b64decode,
    cancel_all,
    clamp_audio_end_ms,
    close_quietly,
)
from rtvoice.server.clientframes import text_frame

if TYPE_CHECKING:
    from rtvoice.config import Settings

log = logging.getLogger(__name__)

_WS_OPEN = _WsState.OPEN
APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
APPEND_SUFFIX = '"}'
_APPEND_PREFIX_B = APPEND_PREFIX.encode()
_APPEND_SUFFIX_B = APPEND_SUFFIX.encode()

#: ``error`` codes that are expected and harmless (e.g. our cancel raced the server's own VAD cancel).
HARMLESS_ERROR_CODES = frozenset({"response_cancel_not_active"})
#: ``error`` codes after which the session cannot serve the call.
FATAL_ERROR_CODES = frozenset(
    {
        "invalid_api_key",
        "beta_api_shape_disabled",
        "insufficient_quota",
        "model_not_found",
        "invalid_model",
        "account_deactivated",
    }
)
FATAL_ERROR_TYPES = frozenset({"authentication_error", "permission_error"})
#: How many conversation turns are replayed into a new session after a reconnect.
REPLAY_TURNS = 40


@dataclass(slots=True)
class Turn:
    """One message of the conversation, kept as text so that it can be replayed into a new session."""

    item_id: str
    role: str  # "user" | "assistant" | "system"
    text: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made (``response.function_call_arguments.done``)."""

    call_id: str
    name: str
    arguments: str
    response_id: str


@dataclass(slots=True)
class BotItem:
    """An assistant item of the current session."""

    item_id: str
    response_id: str
    produced_ms: float = 0.0
    audio_open: bool = False
    audio_done: bool = False
    text: str = ""
    previous_item_id: str | None = None
    turn: Turn | None = None


class RealtimeCore:
    """Sans-I/O OpenAI Realtime client logic for one call (see the module docstring)."""

    def __init__(self, settings: Settings, *, text_only: bool = False) -> None:
        self.settings = settings
        self.text_only = text_only
        self.pcmu = settings.openai_audio_format == "pcmu"
        self.outbox: deque[str] = deque()
        self.sink: AgentSink | None = None
        self.usage = Usage()
        self.active_response: str | None = None
        self.items: dict[str, BotItem] = {}
        self.history: list[Turn] = []
        self._turns: dict[str, Turn] = {}
        self._discarded: set[str] = set()
        self._out = None if text_only else ToUlaw8k("ulaw_8000" if self.pcmu else "pcm_24000")
        self._early_faults: list[tuple[str, str, bool]] = []
        self._seq = 0
        self.session_event_id = ""
        # First-byte watchdog: when we started waiting for output (loop time), and how often it stalled in a
        # row.
        self.awaiting_since: float | None = None
        self.stalls = 0
        self.stall_timeout_s = settings.vendor_first_byte_timeout_s
        #: Seconds from receiving ``speech_stopped`` (or sending the greeting request) to the first output
        #: handed
        #: to the sink, per turn: the part of the first-byte latency spent in OpenAI and in this client.
        self.first_output_latencies: list[float] = []
        self.failed = False
        self.session_expired = False
        # Tools (function calling): offered in session.update, run by the agent (``on_tool_call``), answered
        # with a function_call_output item and a new response once the producing response is done.
        from rtvoice import tools

        self.tool_config = tools.ToolConfig.from_settings(settings)
        self.tool_definitions: list[dict[str, Any]] = []
        for name in self.tool_config.tools:
            try:
                self.tool_definitions.extend(tools.definitions(only=[name]))
            except KeyError:
                log.warning("profile tool %r is not registered; not offered to the model", name)
        #: Called with each new :class:`ToolCall`; the agent runs it and answers with :meth:`tool_result`.
        self.on_tool_call: Callable[[ToolCall], None] | None = None
        self.tool_calls: list[ToolCall] = []
        self._tool_call_ids: set[str] = set()
        self._tools_running = 0
        self._respond_after_tools = False
        #: ``end_call`` ran: no further response is requested (the call hangs up after the queued audio).
        self.ending = False

    # --- output helpers -------------------------------------------------------------------------------------
    def fault(self, kind: str, message: str, fatal: bool) -> None:
        if fatal:
            self.failed = True
        if self.sink is None:
            self._early_faults.append((kind, message, fatal))
        else:
            self.sink.fault(kind, message, fatal)

    def attach(self, sink: AgentSink) -> None:
        """Start delivering to ``sink`` (faults that happened before, e.g. during ``prepare``, are
        replayed).
        """
        self.sink = sink
        early, self._early_faults = self._early_faults, []
        for kind, message, fatal in early:
            sink.fault(kind, message, fatal)

    def _event_id(self, what: str) -> str:
        self._seq += 1
        return f"rtv_{what}_{self._seq}"

    def _send(self, event: dict[str, Any]) -> None:
        self.outbox.append(json.dumps(event, separators=(",", ":")))

    # --- client events --------------------------------------------------------------------------------------
    def session_config(self) -> dict[str, Any]:
        """The GA ``session`` object: type, model, instructions, modalities, audio formats, server VAD,
        voice.
        """
        fmt: dict[str, Any] = {"type": "audio/pcmu"} if self.pcmu else {"type": "audio/pcm", "rate": 24000}
        audio: dict[str, Any] = {
            "input": {
                "format": fmt,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                },
                "transcription": {"model": self.settings.openai_transcription_model},
            }
        }
        if not self.text_only:
            audio["output"] = {"format": fmt, "voice": self.settings.openai_voice}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.settings.openai_model,
            "instructions": self.settings.instructions,
            "output_modalities": ["text"] if self.text_only else ["audio"],
            "audio": audio,
        }
        if self.tool_definitions:
            session["tools"] = self.tool_definitions
            session["tool_choice"] = "auto"
        return session

    def queue_session_update(self) -> None:
        self.session_event_id = self._event_id("session")
        self._send(
            {"type": "session.update", "event_id": self.session_event_id, "session": self.session_config()}
        )

    def queue_greeting(self, now: float) -> None:
        """Make the AI speak first: a system instruction item, then ``response.create``."""
        greeting = self.settings.greeting
        if not greeting:
            return
        text = f"Start the call now by greeting the caller with exactly these words: {greeting}"
        self._send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        self._send({"type": "response.create"})
        self.awaiting_since = now

    def queue_context_replay(self) -> None:
        """After a reconnect: re-create the conversation so far as text items in the new session."""
        for turn in self.history[-REPLAY_TURNS:]:
            if not turn.text.strip():
                continue
            if turn.role == "assistant":
                content = [{"type": "output_text", "text": turn.text}]
            else:
                content = [{"type": "input_text", "text": turn.text}]
            self._send(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "message", "role": turn.role, "content": content},
                }
            )

    # --- the call's inputs ----------------------------------------------------------------------------------
    def barge_in(self, heard: Heard | None) -> None:
        """Cancel the active response (if any) and truncate ``heard.item_id`` to what was heard (if anything
        was cut).
        """
        self.awaiting_since = None
        rid = self.active_response
        if rid is not None and rid not in self._discarded:
            self._discarded.add(rid)
            self._send({"type": "response.cancel", "response_id": rid})
            for it in self.items.values():
                if it.response_id == rid:
                    self._close_audio(it)
        if heard is None:
            return
        heard_item = self.items.get(heard.item_id)
        if heard_item is None or heard_item.produced_ms <= 0:
            return  # not an item of this session (or no audio): nothing OpenAI could truncate
        end = clamp_audio_end_ms(heard.audio_end_ms, heard_item.produced_ms)
        if heard_item.audio_done and rid != heard_item.response_id and end >= int(heard_item.produced_ms):
            return  # the whole item was heard: nothing was cut off
        self.truncated(heard_item, end)

    def truncated(self, it: BotItem, end_ms: int) -> None:
        """Send the truncate and cut the replay text in proportion (OpenAI cuts its own transcript
        exactly).
        """
        self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": it.item_id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            }
        )
        if it.turn is not None and it.produced_ms > 0:
            keep = int(len(it.turn.text) * min(1.0, end_ms / it.produced_ms))
            it.turn.text = it.turn.text[:keep]

    # --- server events --------------------------------------------------------------------------------------
    def feed(self, ev: dict[str, Any], now: float) -> None:
        """Handle one server event."""
        handler = self._handlers.get(ev.get("type", ""))
        if handler is not None:
            handler(self, ev, now)

    def _turn_for(self, item_id: str, role: str) -> Turn:
        turn = self._turns.get(item_id)
        if turn is None:
            turn = Turn(item_id, role)
            self._turns[item_id] = turn
            self.history.append(turn)
        return turn

    def _on_item_added(self, ev: dict[str, Any], now: float) -> None:
        item = ev.get("item") or {}
        if item.get("type") != "message" or not item.get("id"):
            return
        role = str(item.get("role") or "")
        turn = self._turn_for(str(item["id"]), role)
        if role == "assistant":
            it = self.items.get(turn.item_id)
            if it is not None:
                it.previous_item_id = ev.get("previous_item_id")
        elif not turn.text:
            for part in item.get("content") or []:
                text = part.get("text") or part.get("transcript")
                if text:
                    turn.text += str(text)

    def _on_output_item_added(self, ev: dict[str, Any], now: float) -> None:
        item = ev.get("item") or {}
        if item.get("type") != "message" or not item.get("id"):
            return
        item_id = str(item["id"])
        self._bot_item(item_id, str(ev.get("response_id") or self.active_response or ""))

    def _bot_item(self, item_id: str, response_id: str) -> BotItem:
        it = self.items.get(item_id)
        if it is None:
            it = BotItem(item_id, response_id)
            it.turn = self._turn_for(item_id, "assistant")
            self.items[item_id] = it
        return it

    def _on_response_created(self, ev: dict[str, Any], now: float) -> None:
        self.active_response = str((ev.get("response") or {}).get("id") or "") or None

    def _first_output(self, now: float) -> None:
        if self.awaiting_since is not None:
            self.first_output_latencies.append(now - self.awaiting_since)
            self.awaiting_since = None
        self.stalls = 0

    def _on_audio_delta(self, ev: dict[str, Any], now: float) -> None:
        rid = ev.get("response_id")
        if rid in self._discarded or self._out is None:
            return  # late audio of a response the caller interrupted: the call already flushed it
        it = self._bot_item(str(ev.get("item_id")), str(rid or ""))
        if it.audio_done:
            return
        data = b64decode(ev.get("delta") or "")
        it.produced_ms += self._out.source_ms(len(data))
        ulaw = self._out.convert(data)
        if not it.audio_open:
            it.audio_open = True
        if ulaw and self.sink is not None:
            self._first_output(now)
            self.sink.bot_audio(it.item_id, ulaw)

    def _close_audio(self, it: BotItem) -> None:
        if it.audio_open and not it.audio_done and self.sink is not None:
            self.sink.bot_audio_done(it.item_id)
        it.audio_done = True
        it.audio_open = False
        if self._out is not None:
            self._out.reset()

    def _on_audio_done(self, ev: dict[str, Any], now: float) -> None:
        it = self.items.get(str(ev.get("item_id")))
        if it is not None:
            self._close_audio(it)

    def _on_transcript_delta(self, ev: dict[str, Any], now: float) -> None:
        if ev.get("response_id") in self._discarded:
            return
        it = self._bot_item(str(ev.get("item_id")), str(ev.get("response_id") or ""))
        delta = str(ev.get("delta") or "")
        it.text += delta
        if it.turn is not None:
            it.turn.text += delta
        if self.sink is not None and delta:
            self.sink.bot_text(it.item_id, delta, False)

    def _on_transcript_done(self, ev: dict[str, Any], now: float) -> None:
        it = self._bot_item(str(ev.get("item_id")), str(ev.get("response_id") or ""))
        text = str(ev.get("transcript") if "transcript" in ev else ev.get("text") or "")
        if ev.get("response_id") in self._discarded:
            return
        it.text = text
        if it.turn is not None:
            it.turn.text = text
        if self.sink is not None:
            self.sink.bot_text(it.item_id, text, True)

    def _on_response_done(self, ev: dict[str, Any], now: float) -> None:
        resp = ev.get("response") or {}
        rid = resp.get("id")
        self.usage.add_openai(resp.get("usage"))
        if rid == self.active_response:
            self.active_response = None
        for it in self.items.values():
            if it.response_id == rid:
                self._close_audio(it)
        if resp.get("status") == "failed":
            details = resp.get("status_details") or {}
            err = details.get("error") or {}
            self.fault("response_failed", f"response {rid} failed: {err.get('code') or details}", False)
        # A function call whose arguments event we did not see still ends up in the response's output.
        for out in resp.get("output") or ():
            if not isinstance(out, dict) or out.get("type") != "function_call":
                continue
            if out.get("status") == "completed":
                self._function_call(out, str(rid or ""), now)
        self._maybe_respond(now)

    # --- tools ----------------------------------------------------------------------------------------------
    def _on_function_call_done(self, ev: dict[str, Any], now: float) -> None:
        self._function_call(ev, str(ev.get("response_id") or ""), now)

    def _function_call(self, ev: dict[str, Any], response_id: str, now: float) -> None:
        call_id = str(ev.get("call_id") or "")
        if not call_id or call_id in self._tool_call_ids or response_id in self._discarded:
            return
        self._tool_call_ids.add(call_id)
        # The model answered (with a call, not speech): the first-byte watchdog must not retry it.
        self._first_output(now)
        call = ToolCall(call_id, str(ev.get("name") or ""), str(ev.get("arguments") or ""), response_id)
        self.tool_calls.append(call)
        self._tools_running += 1
        if self.on_tool_call is not None:
            self.on_tool_call(call)
        else:
            self.tool_result(call, {"error": "tools are not available in this call"}, now)

    def tool_result(self, call: ToolCall, output: dict[str, Any], now: float) -> None:
        """The agent ran ``call``: give the model the output, then ask for a response (not after a successful
        ``end_call``: the call ends once what is queued has played)."""
        self._tools_running = max(0, self._tools_running - 1)
        self._send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call.call_id,
                    "output": json.dumps(output, separators=(",", ":"), default=str),
                },
            }
        )
        if call.name == "end_call" and "error" not in output:
            self.ending = True
        else:
            self._respond_after_tools = True
        self._maybe_respond(now)

    def _maybe_respond(self, now: float) -> None:
        # response.create while a response is active is an error: wait for its response.done.
        if (
            self._respond_after_tools
            and self._tools_running == 0
            and self.active_response is None
            and not self.ending
            and not self.failed
        ):
            self._respond_after_tools = False
            self._send({"type": "response.create"})
            self.awaiting_since = now

    def _on_speech_started(self, ev: dict[str, Any], now: float) -> None:
        self.awaiting_since = None
        if self.sink is not None:
            self.sink.speech_started()

    def _on_speech_stopped(self, ev: dict[str, Any], now: float) -> None:
        self.awaiting_since = now

    def _on_caller_delta(self, ev: dict[str, Any], now: float) -> None:
        delta = str(ev.get("delta") or "")
        if delta and self.sink is not None:
            self.sink.caller_text(delta, False)

    def _on_caller_done(self, ev: dict[str, Any], now: float) -> None:
        text = str(ev.get("transcript") or "")
        turn = self._turn_for(str(ev.get("item_id")), "user")
        turn.text = text
        if self.sink is not None:
            self.sink.caller_text(text, True)

    def _on_error(self, ev: dict[str, Any], now: float) -> None:
        err = ev.get("error") or {}
        code = err.get("code")
        if code in HARMLESS_ERROR_CODES:
            return
        if code == "session_expired":
            # The session limit (60 min): the server closes the socket next; the link reconnects then.
            self.session_expired = True
            return
        fatal = (
            code in FATAL_ERROR_CODES
            or err.get("type") in FATAL_ERROR_TYPES
            or (bool(self.session_event_id) and err.get("event_id") == self.session_event_id)
        )
        self.fault("error_event", f"{code or err.get('type')}: {err.get('message')}", fatal)

    def check_stall(self, now: float) -> None:
        """Called periodically: no output ``stall_timeout_s`` after the caller's turn ended is a fault.

        The first stall retries (cancel whatever is stuck, request a new response); a second one in a row is
        fatal.
        """
        if self.awaiting_since is None or now - self.awaiting_since < self.stall_timeout_s or self.failed:
            return
        self.stalls += 1
        waited = now - self.awaiting_since
        if self.stalls >= 2:
            self.awaiting_since = None
            self.fault("stall", f"no output {waited:.1f} s after the caller's turn (after a retry)", True)
            return
        self.fault("stall", f"no output {waited:.1f} s after the caller's turn; retrying", False)
        if self.active_response is not None:
            self._discarded.add(self.active_response)
            self._send({"type": "response.cancel", "response_id": self.active_response})
        self._send({"type": "response.create"})
        self.awaiting_since = now

    def disconnected(self) -> None:
        """The session is gone: close open audio, forget per-session state (items keep their replay text)."""
        for it in self.items.values():
            self._close_audio(it)
        self.active_response = None
        self.items.clear()
        self._discarded.clear()
        self.awaiting_since = None

    _handlers: ClassVar[dict[str, Callable[[RealtimeCore, dict[str, Any], float], None]]] = {
        "conversation.item.added": _on_item_added,
        "conversation.item.created": _on_item_added,
        "response.output_item.added": _on_output_item_added,
        "response.created": _on_response_created,
        "response.output_audio.delta": _on_audio_delta,
        "response.output_audio.done": _on_audio_done,
        "response.output_audio_transcript.delta": _on_transcript_delta,
        "response.output_audio_transcript.done": _on_transcript_done,
        "response.done": _on_response_done,
        "response.function_call_arguments.done": _on_function_call_done,
        "input_audio_buffer.speech_started": _on_speech_started,
        "input_audio_buffer.speech_stopped": _on_speech_stopped,
        "conversation.item.input_audio_transcription.delta": _on_caller_delta,
        "conversation.item.input_audio_transcription.completed": _on_caller_done,
        "error": _on_error,
    }


@dataclass(slots=True)
class _Tasks:
    receiver: asyncio.Task[None] | None = None
    sender: asyncio.Task[None] | None = None


class RealtimeLink:
    """The I/O edge for one OpenAI Realtime session: connect, send, receive, watch, reconnect."""

    connect_timeout_s = 10.0
    reconnect_attempts = 2

    def __init__(
        self,
        settings: Settings,
        core: RealtimeCore,
        *,
        append_frames: int = 2,
        on_event: Callable[[dict[str, Any], float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.core = core
        self._on_event = on_event
        self._conn: Any = None
        self._ws: Any = None  # the websockets connection under the SDK's, for _send_now
        #: Messages sent by :meth:`_send_now` (the rest went through the SDK's ``send_raw``).
        self.fast_sent = 0
        self._audio = bytearray()
        #: The sender task is between taking something to send and having sent it (:meth:`push_audio` then
        #: leaves the batch to it, so that nothing is written out of order).
        self._sending = False
        #: 8 kHz PCM -> 24 kHz PCM for an ``audio/pcm`` session; None passes Twilio's μ-law through untouched.
        self._to_session = None if core.pcmu else FromPcm8k(24000)
        frame_bytes = 160 if core.pcmu else 960
        self._batch_bytes = frame_bytes * max(1, append_frames)
        self._wake = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._tasks = _Tasks()
        self._closing = False
        self.connected = False
        self.reconnects = 0

    async def _open(self) -> None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            api_key=self.settings.openai_api_key or "missing",
            websocket_base_url=self.settings.openai_websocket_base_url,
        )
        manager = client.realtime.connect(model=self.settings.openai_model)
        self._conn = await asyncio.wait_for(manager.enter(), self.connect_timeout_s)
        self._bind_fast_send()
        self.connected = True

    async def connect(self, *, report: bool = True) -> bool:
        """Open the session and queue ``session.update``; False on failure.

        With ``report`` a failure is a fatal ``connect`` fault. ``prepare`` connects without reporting: if the
        early attempt fails, ``start`` tries once more and only that outcome counts.
        """
        # ``start`` can run while the early ``prepare`` connect is still in flight (the stream often arrives
        # within a few ms of the webhook): the lock makes it wait for that connection instead of opening a
        # second one, which would leave the receiver on one socket and the audio going to the other.
        async with self._connect_lock:
            if self.connected:
                return True
            try:
                await self._open()
            except Exception as exc:
                if report:
                    msg = f"OpenAI Realtime connect failed: {type(exc).__name__}: {exc}"
                    self.core.fault("connect", msg, True)
                return False
            if self._closing:
                # closed while the handshake was in flight (the caller hung up during an early ``prepare``):
                # nothing may outlive ``close()``: no tasks, no watchdog, no open socket
                await self._close_conn()
                return False
            self.core.queue_session_update()
            self._start_tasks()
            return True

    def _start_tasks(self) -> None:
        if self._tasks.receiver is None:
            self._tasks.receiver = asyncio.create_task(self._receive(), name="openai-recv")
            self._tasks.sender = asyncio.create_task(self._sender(), name="openai-send")
            ticker_for().add(self._watchdog)
        self._wake.set()

    def send_caller_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        """Hot path: one inbound frame, in the session's input format (μ-law as is, or resampled PCM)."""
        conv = self._to_session
        self.push_audio(ulaw if conv is None else conv.convert(pcm))

    def push_audio(self, data: Any) -> None:
        """Hot path: queue one frame of audio in the session format (any buffer). A full batch is written at
        once, or, when anything is queued before it or the direct path is off, left to the sender task."""
        audio = self._audio
        audio += data
        if len(audio) >= self._batch_bytes:
            if (
                self.connected and not self.core.outbox and self._ws is not None and not self._sending
                and self._send_now_bytes(_APPEND_PREFIX_B + b2a_base64(audio, newline=False) + _APPEND_SUFFIX_B)
            ):
                audio.clear()
                return
            self._wake.set()

    def _bind_fast_send(self) -> None:
        """Find the websockets connection under the SDK's connection object, for :meth:`_send_now`; None (the
        SDK's own ``send_raw`` only) when the SDK or websockets version does not have the expected attributes,
        or with ``RTVOICE_FASTPATH=0``."""
        self._ws = None
        if os.environ.get("RTVOICE_FASTPATH", "1") == "0":
            return
        conn = self._conn
        ws = getattr(conn, "_connection", None)
        needed = (
            hasattr(conn, "_send_queue") and hasattr(conn._send_queue, "_queue")
            and hasattr(conn._send_queue, "_pending") and hasattr(conn, "_is_reconnecting")
            and hasattr(conn, "_intentionally_closed") and hasattr(ws, "protocol") and hasattr(ws, "send_data")
            and hasattr(ws, "send_in_progress") and hasattr(ws, "paused") and hasattr(ws, "transport")
        )
        if needed:
            self._ws = ws

    def _send_now(self, msg: str) -> bool:
        """Send one text message synchronously, exactly as the SDK's ``send_raw`` would end up doing when its
        own queue is empty and it is not reconnecting (websockets: ``protocol.send_text`` then
        ``send_data``), without the SDK's queue bookkeeping, the task wake-up and the async send context
        (~15 % of the event loop under load). Returns False, having sent nothing, whenever anything is not
        plain: then the caller goes through ``send_raw``, which handles reconnects, backpressure and closing.
        """
        return self._send_now_bytes(msg.encode())

    def _send_now_bytes(self, payload: bytes) -> bool:
        """:meth:`_send_now` for an already UTF-8 payload. The frame is built by
        :func:`rtvoice.server.clientframes.text_frame` (the bytes websockets' ``Frame.serialize`` makes, with
        the masking key from a pool drawn from ``os.urandom`` in 4 KiB blocks instead of one ``getrandom``
        syscall per frame) and written straight to the transport; the library's own pending writes (a pong)
        leave first. Only without extensions (none are negotiated: ``compression=None``)."""
        # the conditions under which the SDK's own send would end in exactly ``protocol.send_text`` +
        # ``send_data`` now: not closed or reconnecting, nothing queued or being flushed in its send queue, the
        # websockets connection open, no extension, no fragmented message, not paused by backpressure, the
        # transport not closing. The SendQueue's own ``bool()`` takes a threading lock (~2 % of the loop under
        # load); the async connection only touches the queue from this thread, so its two fields are read
        # directly. The send queue is the connection's for its whole life, the websockets connection is
        # looked up each time (the SDK replaces it when it reconnects itself).
        conn = self._conn
        if self._ws is None or conn is None:
            return False
        q = conn._send_queue
        ws = conn._connection
        proto = ws.protocol
        transport = ws.transport
        if (
            conn._intentionally_closed or conn._is_reconnecting or q._queue or q._pending is not None
            or proto.state is not _WS_OPEN or proto.extensions or proto.expect_continuation_frame
            or ws.send_in_progress is not None or ws.paused or transport.is_closing()
        ):
            return False
        if proto.writes:
            ws.send_data()
        transport.write(text_frame(payload))
        self.fast_sent += 1
        return True

    def kick(self) -> None:
        """Wake the sender (the core queued client events)."""
        self._wake.set()

    async def _sender(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self.connected:
                # audio during a reconnect gap cannot be delivered meaningfully
                self._audio.clear()
                continue
            try:
                await self._drain()
            except Exception:
                await asyncio.sleep(0.05)

    async def _drain(self) -> None:
        """Send, in order: the outbox, the partial audio batch. Each item leaves the queue only once sent;
        ``_sending`` keeps :meth:`push_audio` from writing around an item in flight."""
        outbox = self.core.outbox
        self._sending = True
        try:
            while outbox:
                if not self._send_now(outbox[0]):
                    await self._conn.send_raw(outbox[0])
                outbox.popleft()
            if self._audio:
                msg = APPEND_PREFIX + base64.b64encode(self._audio).decode("ascii") + APPEND_SUFFIX
                self._audio.clear()
                if not self._send_now(msg):
                    await self._conn.send_raw(msg)
        finally:
            self._sending = False

    def _watchdog(self, now: float) -> None:
        """Every ``WATCHDOG_PERIOD_S`` (the loop's shared :mod:`rtvoice.agents.ticker`): a stalled vendor, and
        client events the sender has not been woken for."""
        if self._closing:
            return
        self.core.check_stall(now)
        if self.core.outbox:
            self._wake.set()

    async def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        core = self.core
        while not self._closing:
            try:
                raw = await self._conn.recv_bytes()
            except ConnectionClosed as exc:
                if self._closing:
                    return
                if not await self._handle_drop(exc):
                    return
                continue
            except Exception as exc:
                if self._closing:
                    return
                if not await self._handle_drop(exc):
                    return
                continue
            tap = metrics.VENDOR_MESSAGES.tap
            t0 = _perf_ns() if tap is not None else 0
            try:
                ev = json.loads(raw)
            except ValueError:
                core.fault("bad_event", "OpenAI sent a non-JSON message", False)
                continue
            if not isinstance(ev, dict):
                continue
            now = loop.time()
            try:
                core.feed(ev, now)
                if self._on_event is not None:
                    self._on_event(ev, now)
            except Exception as exc:
                log.warning("openai event %s not handled: %r", ev.get("type"), exc)
            if core.outbox:
                self._wake.set()
            if tap is not None:
                tap(_perf_ns() - t0)

    async def _handle_drop(self, exc: BaseException) -> bool:
        """The socket closed under us: report, reconnect with context; returns True when a new session is
        up.
        """
        self.connected = False
        rcvd = getattr(exc, "rcvd", None)
        code = getattr(rcvd, "code", None)
        reason = getattr(rcvd, "reason", "") or str(exc)
        expired = self.core.session_expired or "maximum duration" in reason
        kind = "session_limit" if expired else "dropped"
        self.core.session_expired = False
        self.core.disconnected()
        self.core.outbox.clear()
        self.core.fault(kind, f"OpenAI Realtime connection closed ({code}: {reason}); reconnecting", False)
        last = ""
        for attempt in range(self.reconnect_attempts):
            if self._closing:
                return False
            await asyncio.sleep(0.2 * attempt)
            try:
                await self._open()
            except Exception as err:
                last = f"{type(err).__name__}: {err}"
                continue
            self.reconnects += 1
            self.core.queue_session_update()
            self.core.queue_context_replay()
            self._wake.set()
            return True
        self.core.fault(kind, f"OpenAI Realtime reconnect failed ({last})", True)
        return False

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        tasks = self._tasks
        ticker_for().remove(self._watchdog)
        await cancel_all(t for t in (tasks.receiver, tasks.sender) if t is not None)
        self._tasks = _Tasks()
        await self._close_conn()

    async def _close_conn(self) -> None:
        await close_quietly(self._conn)
        self._conn = None
        self.connected = False


class ToolRunner:
    """Runs the model's tool calls for one call (the I/O side of :meth:`RealtimeCore.tool_result`).

    Each call runs in its own task with a :class:`rtvoice.tools.ToolContext` for the call: ``hang_up`` is the
    call's :meth:`AgentSink.hang_up` (queued audio plays first), ``play_audio`` queues μ-law into the call as
    a bot item (in-band DTMF), ``twilio`` is the REST API when credentials are configured.
    """

    def __init__(self, settings: Settings, core: RealtimeCore, kick: Callable[[], None]) -> None:
        self.settings = settings
        self.core = core
        self.kick = kick
        self.call: CallInfo | None = None
        self.sink: AgentSink | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._audio_seq = 0
        core.on_tool_call = self.submit

    def bind(self, call: CallInfo, sink: AgentSink) -> None:
        self.call = call
        self.sink = sink

    def submit(self, call: ToolCall) -> None:
        task = asyncio.get_running_loop().create_task(self._run(call), name=f"tool-{call.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _play_audio(self, ulaw: bytes) -> None:
        if self.sink is None:
            return
        self._audio_seq += 1
        item_id = f"tool_audio_{self._audio_seq}"
        self.sink.bot_audio(item_id, ulaw)
        self.sink.bot_audio_done(item_id)

    def context(self) -> Any:
        from rtvoice import tools

        settings = self.settings
        rest = None
        if settings.twilio_account_sid and settings.twilio_auth_token:
            rest = tools.RestCalls(settings)
        sink = self.sink
        return tools.ToolContext(
            call_sid=self.call.call_sid if self.call is not None else "",
            hang_up=sink.hang_up if sink is not None else (lambda reason: None),
            twilio=rest,
            profile=self.core.tool_config,
            play_audio=self._play_audio if sink is not None else None,
            public_base_url=settings.effective_public_base_url,
        )

    async def _run(self, call: ToolCall) -> None:
        from rtvoice import tools

        if self.sink is None:
            result: dict[str, Any] = {"error": "the call is not connected"}
        else:
            result = await tools.run(call.name, call.arguments, self.context())
        self.core.tool_result(call, result, asyncio.get_running_loop().time())
        self.kick()

    async def close(self) -> None:
        await cancel_all(self._tasks)


class OpenAIRealtimeAgent(Agent):
    """OpenAI Realtime speech-to-speech (see the module docstring)."""

    name = "openai"

    def __init__(self, settings: Settings, *, append_frames: int = 2) -> None:
        self.settings = settings
        self.core = RealtimeCore(settings)
        self.link = RealtimeLink(settings, self.core, append_frames=append_frames)
        self.tools = ToolRunner(settings, self.core, self.link.kick)
        self._started = False

    @property
    def usage(self) -> Usage:
        """Token usage totals of the call so far (summed over ``response.done`` events)."""
        return self.core.usage

    async def prepare(self) -> None:
        await self.link.connect(report=False)

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        self.core.attach(sink)
        self.tools.bind(call, sink)
        if not await self.link.connect():
            return
        self._started = True
        self.core.queue_greeting(asyncio.get_running_loop().time())
        self.link.kick()

    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        self.link.send_caller_audio(ulaw, pcm)

    def barge_in(self, heard: Heard | None) -> None:
        self.core.barge_in(heard)
        self.link.kick()

    async def close(self) -> None:
        await self.tools.close()
        await self.link.close()
