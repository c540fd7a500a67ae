"""One phone call as a sans-I/O state machine: Twilio events in, Twilio messages and agent calls out.

The :class:`Call` is fed parsed Media Streams events (:meth:`Call.on_start`, :meth:`Call.on_media`,
:meth:`Call.on_mark`, :meth:`Call.on_dtmf`, :meth:`Call.on_stop`) and is the agent's :class:`AgentSink`. What it
wants sent to Twilio goes to the ``send`` callable (the session passes ``WebSocket.send_text``; tests pass
``list.append``); when it wants the stream closed it calls ``close(code, reason)``. No sockets, no tasks, no
clock: the call's time is Twilio's inbound media timestamp (the end of the last inbound frame), and every inbound
frame is the tick that drives pacing, hang-up and the heard-position interpolation.

Per inbound frame (the hot path): decode μ-law once into a preallocated buffer, run the VAD, hand both forms to
the agent, top up Twilio's queue. Per barge-in: ``clear`` to Twilio, drop the unsent bot audio, tell the agent
what the caller heard (``Heard`` from the ledger, or None when nothing was cut off), cut the transcript.

Inbound ordering is checked inline with the ``media.chunk`` counter rather than through
:class:`rtvoice.audio.InboundJitter`: one WebSocket over TCP cannot reorder, so a missing chunk number is a
frame Twilio dropped (31930), never a late one, and holding later frames for a reorder window would only add
up to 60 ms of latency to the VAD and the vendor. Duplicates/old chunks are dropped (``frames_late``); a hole
of up to ``MAX_GAP_FILL_FRAMES`` is filled with μ-law silence for the agent so its audio clock stays aligned.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rtvoice import metrics
from rtvoice.agents.base import Agent, CallInfo, Heard
from rtvoice.audio import ulaw_decode
from rtvoice.call.bargein import BargeIn, BargeInController, BargeInGate
from rtvoice.call.ledger import BYTES_PER_MS, MarkAck, PlaybackLedger
from rtvoice.call.pacing import Pacer
from rtvoice.config import Settings
from rtvoice.echo import FrameGate, make_gate
from rtvoice.twilio.media import Dtmf, Mark, Media, MessageWriter, Start, Stop
from rtvoice.vad import FRAME_MS, SpeechEnd, SpeechStart, VoiceActivity

log = logging.getLogger("rtvoice.call")

FRAME_BYTES = 160  # one 20 ms μ-law frame
ULAW_SILENCE_FRAME = b"\xff" * FRAME_BYTES
#: Inbound gaps (frames Twilio dropped) up to this long are filled with silence for the agent so its audio
#: clock
#: stays aligned; longer gaps are not filled (the stream was stalled; silence would only add delay).
MAX_GAP_FILL_FRAMES = 10
#: Caller audio kept while the agent is still starting (1 s = 50 frames, ~24 KiB with the decoded copies): the
#: caller's first "hello?" is not lost when the vendor session is slow to open.
MAX_EARLY_FRAMES = 50
#: After a hang-up request, how long past the estimated end of playback to wait for the last mark echo.
HANGUP_MARK_GRACE_MS = 2000


class CallState(enum.Enum):
    CONNECTING = "connecting"  # WebSocket open, no ``start`` yet
    STREAMING = "streaming"
    ENDED = "ended"


class Outcome(enum.StrEnum):
    """How a call ended (the ``outcome`` label of ``rtvoice_calls_total``)."""

    COMPLETED = "completed"  # Twilio sent ``stop`` (caller hung up or the call ended)
    BOT_HANGUP = "bot_hangup"  # the agent ended the call
    AGENT_FAULT = "agent_fault"  # a fatal vendor fault: apology played, stream closed
    DISCONNECTED = "disconnected"  # the WebSocket went away without ``stop``
    REJECTED = "rejected"  # bad token / protocol violation before the call ran
    REPLACED = "replaced"  # a newer stream for the same CallSid took over
    SHUTDOWN = "shutdown"  # server draining


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One turn of the conversation. Bot text is cut to what the caller heard when they barged in."""

    role: str  # "caller" or "bot"
    text: str
    start_ms: int
    end_ms: int
    item_id: str = ""
    interrupted: bool = False


@dataclass(slots=True)
class TurnLatency:
    """Stamps (stream ms) of one caller -> bot turn."""

    caller_end_ms: int
    first_audio_sent_ms: int | None = None
    first_heard_ms: int | None = None
    item_id: str = ""

    @property
    def to_first_audio_ms(self) -> int | None:
        """Caller end of speech (VAD) -> first bot audio sent to Twilio."""
        return None if self.first_audio_sent_ms is None else self.first_audio_sent_ms - self.caller_end_ms

    @property
    def to_heard_ms(self) -> int | None:
        """Caller end of speech -> first bot audio confirmed played (first mark echo)."""
        return None if self.first_heard_ms is None else self.first_heard_ms - self.caller_end_ms


class CallObserver(Protocol):
    """Receives the call's record as it happens (a ``rtvoice.records`` recorder, metrics, tests)."""

    def call_started(self, info: CallInfo) -> None: ...

    def turn(self, role: str, text: str, start_ms: int, end_ms: int) -> None: ...

    def barge_in(self, heard: Heard | None, reaction_ms: int) -> None: ...

    def latency(self, turn: TurnLatency) -> None: ...

    def call_ended(self, outcome: str) -> None: ...


class LegSink(Protocol):
    """Where both legs of the call's audio go when recording is on (``rtvoice.records.LegRecorder``)."""

    def caller_audio(self, ulaw: bytes | memoryview) -> None: ...

    def bot_audio(self, ulaw: bytes | memoryview) -> None: ...


class NullObserver:
    """The default observer: records nothing."""

    def call_started(self, info: CallInfo) -> None:
        pass

    def turn(self, role: str, text: str, start_ms: int, end_ms: int) -> None:
        pass

    def barge_in(self, heard: Heard | None, reaction_ms: int) -> None:
        pass

    def latency(self, turn: TurnLatency) -> None:
        pass

    def call_ended(self, outcome: str) -> None:
        pass


class CallError(Exception):
    """The Media Streams peer broke the call protocol (e.g. media before start). ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(slots=True)
class _BotItem:
    item_id: str
    text: str = ""
    text_final: bool = False
    total_bytes: int = 0
    done: bool = False
    first_heard_ms: int | None = None
    heard_ms: int = 0
    closed: bool = False  # transcript entry emitted
    latency: TurnLatency | None = None
    corrections: list[str] = field(default_factory=list)


def _cut_text(text: str, heard_ms: int, total_ms: int) -> str:
    """The share of ``text`` heard, proportional to audio time, ending on a word boundary."""
    if total_ms <= 0 or heard_ms >= total_ms:
        return text
    n = int(len(text) * heard_ms / total_ms)
    cut = text[:n]
    if n < len(text) and cut and not text[n].isspace():
        cut = cut.rsplit(" ", 1)[0] if " " in cut else ""
    return cut.strip()


def _noop_close(code: int, reason: str) -> None:
    pass


class Call:
    """The state machine of one Media Stream (see the module docstring). It is also the agent's sink."""

    def __init__(
        self,
        settings: Settings,
        agent: Agent | None = None,
        send: Callable[[str], None] | None = None,
        close: Callable[[int, str], None] | None = None,
        observer: CallObserver | None = None,
        gate: BargeInGate | None = None,
        apology: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.agent = agent
        #: Messages for Twilio when no ``send`` is given (tests read them here).
        self.outbox: list[str] = []
        self._send: Callable[[str], None] = send if send is not None else self.outbox.append
        self._close = close if close is not None else _noop_close
        self.observer: CallObserver = observer if observer is not None else NullObserver()
        self.apology = apology
        self.state = CallState.CONNECTING
        self.outcome: Outcome | None = None
        self.info: CallInfo | None = None
        self.writer: MessageWriter | None = None
        #: Stream time (ms): the end of the last inbound frame.
        self.now = 0
        self.vad = VoiceActivity.from_settings(settings)
        self.ledger = PlaybackLedger(settings.mark_interval_ms)
        self.pacer = Pacer(self.ledger, None, settings.max_queued_ms)
        self.pacer.on_first_send = self._first_send
        if gate is None:
            # the RTVOICE_BARGEIN_POLICY gate (issue 6); the echo-aware one taps the bot audio sent to Twilio
            gate = make_gate(settings.bargein_policy, self.ledger)
        tap = getattr(gate, "tap", None)
        if tap is not None:
            self.pacer.on_audio = tap.sent
        #: a gate that sees every frame decides what the VAD hears (e.g. the echo-reduced signal)
        self._frontend: FrameGate | None = gate if hasattr(gate, "frame") else None  # type: ignore[assignment]
        self.bargein = BargeInController(gate)
        # Decoded-frame buffer reused for every 20 ms frame; the agent gets an int16 view of it (valid
        # during the
        # send_audio call only: an agent that keeps samples copies them).
        self._pcm = bytearray(FRAME_BYTES * 2)
        self._pcm_view = memoryview(self._pcm).cast("h")
        self._next_chunk: int | None = None
        self._early: deque[tuple[bytes, bytes]] | None = deque(maxlen=MAX_EARLY_FRAMES)
        self.agent_ready = False
        self._items: dict[str, _BotItem] = {}
        self._cut_items: set[str] = set()
        self._caller_onset = 0
        self._caller_end = 0
        self._pending_turn: TurnLatency | None = None
        self._hangup_reason: str | None = None
        self._fatal = False
        #: The conversation, in order.
        self.transcript: list[TranscriptEntry] = []
        self.latencies: list[TurnLatency] = []
        self.barge_ins: list[tuple[BargeIn, Heard | None]] = []
        self.dtmf: list[str] = []
        self.faults: list[tuple[str, str, bool]] = []
        #: Both legs' audio when recording (see :meth:`record_legs`); None: nothing recorded.
        self.legs: LegSink | None = None
        #: Inbound frames received / filled for gaps / late (duplicates), for stats.
        self.frames_in = 0
        self.frames_gap = 0
        self.frames_late = 0

    def configure(self, settings: Settings) -> None:
        """Per-call settings (e.g. the call's profile) known only when the stream starts: the VAD and the
        pacing limit follow them. Call before :meth:`on_start`."""
        self.settings = settings
        self.vad = VoiceActivity.from_settings(settings)
        self.pacer.max_queued = settings.max_queued_ms * BYTES_PER_MS

    def record_legs(self, legs: LegSink) -> None:
        """Send every inbound frame and every bot payload sent to Twilio to ``legs`` (per-call recording)."""
        self.legs = legs
        previous = self.pacer.on_audio
        if previous is None:
            self.pacer.on_audio = legs.bot_audio
        else:

            def both(payload: memoryview | bytes) -> None:
                previous(payload)
                legs.bot_audio(payload)

            self.pacer.on_audio = both

    # --- Twilio events
    # ------------------------------------------------------------------------------------------
    def on_start(self, start: Start) -> CallInfo:
        """The stream's ``start``: from now on messages may be sent to Twilio."""
        if self.state is not CallState.CONNECTING:
            raise CallError("duplicate_start", "a second start on the same stream")
        params = start.custom_parameters
        self.info = CallInfo(
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            account_sid=start.account_sid,
            from_number=params.get("from", ""),
            to_number=params.get("to", ""),
            direction=params.get("direction", "inbound") or "inbound",
            custom_parameters={k: v for k, v in params.items() if k != "token"},
        )
        self.writer = MessageWriter(start.stream_sid)
        self.pacer.writer = self.writer
        self.state = CallState.STREAMING
        self.observer.call_started(self.info)
        # Bot audio that arrived before start (an eager greeting) can go now.
        self.pacer.pump(self.now, self._send)
        return self.info

    @property
    def pcm_buffer(self) -> bytearray:
        """The call's 320-byte int16 frame buffer: a compiled media kernel may decode a 20 ms frame straight
        into it before :meth:`on_media_frame` (``pcm_ready``)."""
        return self._pcm

    def on_media(self, media: Media) -> None:
        """One inbound frame: the call's tick."""
        self.on_media_frame(media.chunk, media.timestamp, media.payload, False)

    def on_media_frame(self, chunk: int, timestamp: int, payload: bytes | memoryview, pcm_ready: bool) -> None:
        """One inbound frame from its already parsed fields (the per-frame entry: no :class:`Media` built).

        ``payload`` may be a view of a buffer reused for the next frame: everything here that keeps audio
        copies it (the agents' ``send_audio`` contract: the buffers are valid during the call only).
        ``pcm_ready``: a 160-byte payload is already decoded into :attr:`pcm_buffer`.
        """
        if self.state is not CallState.STREAMING:
            if self.state is CallState.CONNECTING:
                raise CallError("media_before_start")
            return
        expected = self._next_chunk
        if expected is not None and chunk != expected:
            if chunk < expected:
                # A duplicate or reordered frame: its time has passed, feeding it would scramble the agent's
                # audio.
                self.frames_late += 1
                metrics.FRAMES_LATE.inc()
                return
            self._fill_gap(chunk - expected, timestamp)
        self._next_chunk = chunk + 1
        self.frames_in += 1
        if self.legs is not None:
            self.legs.caller_audio(payload)  # written to the WAV file (a copy)
        n = len(payload)
        self.now = now = timestamp + n // BYTES_PER_MS
        if n == FRAME_BYTES:
            if not pcm_ready:
                ulaw_decode(payload, self._pcm)
            pcm = self._pcm_view
            front = self._frontend
            vad_in = self._pcm if front is None else front.frame(pcm, now, self._bot_active())
            event = self.vad.process(vad_in, timestamp)
            if event is not None:
                self._on_vad(event)
        else:
            pcm = self._decode_odd(payload, timestamp)
        if self.agent_ready:
            if self.agent is not None and not self._fatal:
                self.agent.send_audio(payload, pcm)
        elif self._early is not None:
            # kept until the agent is ready: copies (bytes() of a bytes payload is the same object)
            self._early.append((bytes(payload), bytes(pcm.cast("B"))))
        if self.pacer.has_audio:
            self.pacer.pump(now, self._send)
        if self._hangup_reason is not None:
            self._check_hangup()

    def on_mark(self, mark: Mark, now: int | None = None) -> None:
        """Twilio echoed one of our marks: that audio has played (unless a clear discarded it).

        ``now`` is the stream time of the echo when the I/O edge knows it better (the end of the last inbound
        frame plus the wall time since it arrived, capped at one frame). By default the echo is placed in the
        middle of the frame interval it arrived in, so its time is off by at most half a frame (10 ms).
        """
        if self.state is not CallState.STREAMING:
            return
        at = self.now + FRAME_MS // 2 if now is None else now
        ack = self.ledger.acked(mark.name, at)
        if ack is not None:
            self._on_played(ack)
        if self.pacer.has_audio:
            self.pacer.pump(self.now, self._send)
        if self._hangup_reason is not None:
            self._check_hangup()

    def on_dtmf(self, dtmf: Dtmf) -> None:
        """The caller pressed a key: forwarded to the agent."""
        if self.state is not CallState.STREAMING:
            return
        self.dtmf.append(dtmf.digit)
        if self.agent is not None and self.agent_ready and not self._fatal:
            self.agent.send_dtmf(dtmf.digit)

    def on_stop(self, stop: Stop) -> None:
        """Twilio ended the stream (the call is over)."""
        self.end(self.outcome or Outcome.COMPLETED)

    def on_agent_ready(self) -> None:
        """``agent.start`` returned: flush the caller audio kept meanwhile, then stream live."""
        if self.agent_ready:
            return
        self.agent_ready = True
        early, self._early = self._early, None
        if early and self.agent is not None and not self._fatal:
            for ulaw, pcm in early:
                self.agent.send_audio(ulaw, memoryview(pcm).cast("h"))

    def end(self, outcome: Outcome) -> None:
        """Finish the call record (idempotent): close open transcript turns, report the outcome."""
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        self.outcome = outcome
        for item in self._items.values():
            if not item.closed and item.first_heard_ms is not None:
                heard = self.ledger.heard(self.now)
                if heard is not None and heard.item_id == item.item_id:
                    item.heard_ms = heard.audio_end_ms
                    self._close_item(item, interrupted=True)
                else:
                    self._close_item(item, interrupted=False)
        self.observer.call_ended(outcome.value)

    # --- AgentSink
    # ----------------------------------------------------------------------------------------------
    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        if self.state is CallState.ENDED or item_id in self._cut_items or self._fatal:
            return  # audio of an item the caller interrupted, still in flight from the vendor: drop it
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _BotItem(item_id)
        item.total_bytes += len(ulaw)
        self.pacer.push(item_id, ulaw)
        if self.state is CallState.STREAMING:
            self.pacer.pump(self.now, self._send)

    def bot_audio_done(self, item_id: str) -> None:
        if item_id in self._cut_items:
            return
        item = self._items.get(item_id)
        if item is not None:
            item.done = True
        self.pacer.done(item_id)
        if self.state is CallState.STREAMING:
            self.pacer.pump(self.now, self._send)  # the tail and its closing mark go out now
        if item is not None and item.total_bytes == 0:
            self._close_item(item, interrupted=False)

    def bot_text(self, item_id: str, text: str, final: bool) -> None:
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _BotItem(item_id)
        if item.closed:
            # The agent's correction after a barge-in (e.g. text cut by ElevenLabs alignment): kept as is.
            item.corrections.append(text)
            return
        if final:
            item.text = text
            item.text_final = True
        elif not item.text_final:
            item.text += text

    def caller_text(self, text: str, final: bool) -> None:
        if not final or not text.strip():
            return
        start, end = self._caller_onset, self._caller_end
        if end < start:  # text before the VAD saw the end: use what is known
            end = self.now
        self.transcript.append(TranscriptEntry("caller", text.strip(), start, end))
        self.observer.turn("caller", text.strip(), start, end)

    def speech_started(self) -> None:
        if self.state is not CallState.STREAMING:
            return
        decision = self.bargein.vendor_speech_started(self.now, self._bot_active())
        if decision is not None:
            self._barge_in(decision)

    def interrupt(self) -> None:
        if self.state is not CallState.STREAMING:
            return
        decision = self.bargein.vendor_interrupt(self.now, self._bot_active())
        if decision is not None:
            self._barge_in(decision)

    def hang_up(self, reason: str) -> None:
        if self.state is CallState.ENDED or self._hangup_reason is not None:
            return
        self._hangup_reason = reason or "agent"
        if self.outcome is None:
            self.outcome = Outcome.BOT_HANGUP
        self._check_hangup()

    def fault(self, kind: str, message: str, fatal: bool) -> None:
        self.faults.append((kind, message, fatal))
        metrics.ERRORS.labels(kind=f"agent_{kind}").inc()
        sid = self.info.call_sid if self.info is not None else ""
        log.warning(
            "agent fault",
            extra={"call_sid": sid, "kind": kind, "detail": message, "fatal": fatal},
        )
        report = getattr(self.observer, "fault", None)
        if report is not None:
            vendor = self.agent.name if self.agent is not None else ""
            report(kind, message, vendor=vendor, fatal=fatal)
        if not fatal or self._fatal or self.state is CallState.ENDED:
            return
        # No dead air: stop what the broken agent was saying, play the apology, then end the stream.
        self._fatal = True
        self.outcome = Outcome.AGENT_FAULT
        if self._bot_active():
            if self.writer is not None:
                self._send(self.writer.clear())
            self.ledger.clear(self.now)
            self.pacer.clear()
        if self.apology:
            self._fatal = False  # let the apology itself through bot_audio
            self.bot_audio("apology", self.apology)
            self.bot_audio_done("apology")
            self._fatal = True
        self._hangup_reason = f"agent fault: {kind}"
        self._check_hangup()

    # --- internals
    # ----------------------------------------------------------------------------------------------
    def _bot_active(self) -> bool:
        """Bot audio waiting here, queued at Twilio, or playing."""
        return self.pacer.has_audio or self.ledger.played_pos(self.now) < self.ledger.sent_pos

    def _fill_gap(self, missing: int, timestamp: int) -> None:
        self.frames_gap += missing
        metrics.FRAMES_DROPPED.inc(missing)
        if missing > MAX_GAP_FILL_FRAMES or not self.agent_ready or self.agent is None or self._fatal:
            return
        silence = memoryview(bytearray(FRAME_BYTES * 2)).cast("h")
        for _ in range(missing):
            self.agent.send_audio(ULAW_SILENCE_FRAME, silence)
            # Missing frames count as non-speech for the VAD: a gap ends a run rather than extending it.
            self.vad.update(False, timestamp)

    def _decode_odd(self, payload: bytes | memoryview, timestamp: int) -> memoryview:
        """A frame that is not 20 ms (Twilio's are; the protocol allows any length): decode to a fresh
        buffer and
        run the VAD over each whole 20 ms inside it."""
        buf = bytearray(len(payload) * 2)
        if payload:
            ulaw_decode(payload, buf)
        step = FRAME_BYTES * 2
        for i in range(0, len(buf) - step + 1, step):
            event = self.vad.process(memoryview(buf)[i : i + step], timestamp + (i // 2) // BYTES_PER_MS)
            if event is not None:
                self._on_vad(event)
        return memoryview(buf).cast("h")

    def _on_vad(self, event: SpeechStart | SpeechEnd) -> None:
        if isinstance(event, SpeechStart):
            self._caller_onset = event.onset_ms
            decision = self.bargein.speech_start(event.onset_ms, self.now, self._bot_active())
            if decision is not None:
                self._barge_in(decision)
        else:
            self._caller_end = event.end_ms
            self.bargein.speech_end()
            # A new turn: its latency runs from here to the next bot item's first audio.
            self._pending_turn = TurnLatency(event.end_ms)

    def _barge_in(self, decision: BargeIn) -> None:
        now = self.now
        heard = self.ledger.clear(now)
        head = self.pacer._items[0] if self.pacer.has_audio else None
        if heard is None and head is not None:
            # Nothing queued at Twilio, but the current item has more to come: the caller heard all that was
            # sent.
            heard = Heard(head.item_id, head.offset // BYTES_PER_MS)
        if self.writer is not None:
            self._send(self.writer.clear())
        cut = {it.item_id for it in self.pacer._items}
        self.pacer.clear()
        if heard is not None:
            cut.add(heard.item_id)
        self._cut_items |= cut
        for item_id in cut:
            item = self._items.get(item_id)
            if item is None or item.closed:
                continue
            if heard is not None and item_id == heard.item_id:
                item.heard_ms = heard.audio_end_ms
                self._close_item(item, interrupted=True)
            else:
                item.closed = True  # never heard: not part of the conversation
        self.barge_ins.append((decision, heard))
        if self.agent is not None and not self._fatal:
            self.agent.barge_in(heard)
        self.observer.barge_in(heard, decision.reaction_ms)

    def _first_send(self, item_id: str, now: int) -> None:
        turn = self._pending_turn
        item = self._items.get(item_id)
        if turn is not None and item is not None and item_id != "apology":
            turn.first_audio_sent_ms = now
            turn.item_id = item_id
            item.latency = turn
            self._pending_turn = None

    def _on_played(self, ack: MarkAck) -> None:
        info = ack.mark
        item = self._items.get(info.item_id)
        if self.agent is not None and not self._fatal and info.item_id != "apology":
            self.agent.playback(info.item_id, info.item_end_ms)
        if item is None:
            return
        if info.first_of_item and item.first_heard_ms is None:
            # The first echo means the first chunk has played; it started playing one chunk earlier.
            item.first_heard_ms = ack.acked_at - info.item_end_ms
            turn = item.latency
            if turn is not None and turn.first_heard_ms is None:
                turn.first_heard_ms = ack.acked_at
                self.latencies.append(turn)
                self.observer.latency(turn)
        item.heard_ms = max(item.heard_ms, info.item_end_ms)
        if item.done and info.item_end_ms * BYTES_PER_MS >= item.total_bytes and not item.closed:
            self._close_item(item, interrupted=False)

    def _close_item(self, item: _BotItem, interrupted: bool) -> None:
        if item.closed:
            return
        item.closed = True
        total_ms = item.total_bytes // BYTES_PER_MS
        text = _cut_text(item.text, item.heard_ms, total_ms) if interrupted else item.text
        start = item.first_heard_ms if item.first_heard_ms is not None else self.now
        end = start + (item.heard_ms if interrupted else total_ms)
        if not text and not interrupted and total_ms == 0:
            return
        entry = TranscriptEntry("bot", text, start, end, item.item_id, interrupted)
        self.transcript.append(entry)
        self.observer.turn("bot", text, start, end)

    def _check_hangup(self) -> None:
        if self._hangup_reason is None or self.state is not CallState.STREAMING:
            if self._hangup_reason is not None and self.state is CallState.CONNECTING:
                self._close(1000, self._hangup_reason)
            return
        if self.pacer.has_audio:
            return
        ledger = self.ledger
        # Wait for the last echo, but not forever (a lost mark must not keep the call open).
        if ledger.pending_marks and (
            ledger.queued_ms(self.now) > 0 or self.now - ledger.last_send_t < HANGUP_MARK_GRACE_MS
        ):
            return
        reason = self._hangup_reason
        self.end(self.outcome or Outcome.BOT_HANGUP)
        self._close(1000, reason)

    @property
    def stream_time(self) -> int:
        """The call's clock: ms since the stream started (end of the last inbound frame)."""
        return self.now


__all__ = [
    "FRAME_MS",
    "Call",
    "CallError",
    "CallObserver",
    "CallState",
    "LegSink",
    "NullObserver",
    "Outcome",
    "TranscriptEntry",
    "TurnLatency",
]
