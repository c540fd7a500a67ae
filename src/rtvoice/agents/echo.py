"""``RTVOICE_AGENT=echo``: plays each caller utterance back after ``RTVOICE_ECHO_DELAY_MS``, for line testing.

Each caller utterance (found with the same gated webrtcvad the call uses) becomes one bot item, ``echo-<n>``:
its frames, from the first speech frame to the end of the VAD hangover, are played back ``echo_delay_ms``
after they were heard. Silence between utterances is not echoed, so the bot is only "speaking" while it
replays speech: that is what makes barge-in testable with this agent. Speaking over an echo interrupts it
(the call clears Twilio and calls :meth:`EchoAgent.barge_in`), and the rest of that item is dropped; the new
utterance is echoed in turn.

Once an echo has started, its next frames are released up to ``LEAD_FRAMES`` early: the call then keeps ~60
ms queued at Twilio, so network jitter does not open gaps between 20 ms frames (a vendor sends faster than
real time for the same reason). The first frame is never early, so the delay itself is exact.

One VAD per call: when the sink is a :class:`rtvoice.call.call.Call` (it has a ``vad``, the call's
:class:`VoiceActivity`, already fed the frame before the agent gets it), utterances are read off the call's
VAD state instead of running a second webrtcvad on the same audio (it cost ~15 % of the event loop under load).
With an echo-aware barge-in gate the call's VAD hears the echo-reduced signal, so the bot's own echo is not
echoed back. Any other sink (tests, tools): the agent runs its own VAD as before.

No timers: the inbound frames (one every 20 ms, for the whole call) are the clock, so the delay is exact in
stream time and the simulated Twilio's faster-than-real-time mode works unchanged.
"""

from __future__ import annotations

from collections import deque

from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.config import Settings
from rtvoice.vad import FRAME_MS, SpeechEnd, SpeechStart, VoiceActivity

#: Frames of an echo already playing that are handed to the call ahead of their time (jitter cushion).
LEAD_FRAMES = 3


class EchoAgent(Agent):
    """Echoes caller utterances back as items after a fixed delay."""

    name = "echo"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.delay_frames = max(0, settings.echo_delay_ms // FRAME_MS)
        #: Own VAD, made only when the sink has none to share (see the module docstring).
        self.vad: VoiceActivity | None = None
        self._speaking = False  # the call VAD's state at the previous frame
        self.sink: AgentSink | None = None
        self.info: CallInfo | None = None
        self._tick = 0
        # The last few frames, so an utterance's echo starts at its first speech frame, not at the frame that
        # confirmed the onset.
        self._preroll: deque[bytes] = deque(maxlen=settings.vad_onset_frames + 1)
        self._item: str | None = None  # the utterance being captured
        self._count = 0
        # Frames waiting for their time: (due tick, item id, μ-law) and (due tick, item id, None) = item done.
        self._pending: deque[tuple[int, str, bytes | None]] = deque()
        self._cut: set[str] = set()
        self._started: str | None = None  # the echo whose first frame has been released
        #: What the caller heard of each interrupted echo (for tests and the line-test report).
        self.barge_ins: list[Heard | None] = []
        self.played: dict[str, int] = {}
        self.digits: list[str] = []
        self.closed = False

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        self.info = call
        self.sink = sink
        if not isinstance(getattr(sink, "vad", None), VoiceActivity):
            self.vad = VoiceActivity.from_settings(self.settings)

    def _call_vad_event(self, vad: VoiceActivity) -> SpeechStart | SpeechEnd | None:
        """The call VAD's transition at this frame, as the event its ``process`` returned."""
        speaking = vad.speaking
        if speaking == self._speaking:
            return None
        self._speaking = speaking
        if speaking:
            return SpeechStart(vad.onset_ms)
        return SpeechEnd(vad.onset_ms, vad.last_ms + FRAME_MS)

    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        tick = self._tick
        self._tick = tick + 1
        if self.closed:
            return
        own = self.vad
        sink = self.sink
        if own is None and sink is not None:
            # the call's VAD (the sink's attribute: a profile may have replaced it since start)
            vad: VoiceActivity = sink.vad  # type: ignore[attr-defined]
            if vad.speaking == self._speaking:
                # The frame of almost every tick: no VAD transition. One copy (the payload may be a view of a
                # buffer the call reuses), kept by the echo being captured and by the preroll alike.
                frame = bytes(ulaw)
                pending = self._pending
                if self._item is not None:
                    pending.append((tick + self.delay_frames, self._item, frame))
                self._preroll.append(frame)
                if pending and pending[0][0] <= tick + LEAD_FRAMES:  # else nothing can be due yet
                    self._release(tick)
                return
        self._send_audio_event(tick, bytes(ulaw), pcm)

    def _send_audio_event(self, tick: int, frame: bytes, pcm: memoryview) -> None:
        """A frame with a possible VAD transition (the call VAD's, or the agent's own VAD)."""
        event: SpeechStart | SpeechEnd | None
        back = 0
        own = self.vad
        if own is None and self.sink is not None:
            vad: VoiceActivity = self.sink.vad  # type: ignore[attr-defined]
            event = self._call_vad_event(vad)
            if type(event) is SpeechStart:
                # frames since the onset frame, in the call's stream time (this frame is the latest one seen)
                back = max(0, (vad.last_ms - event.onset_ms) // FRAME_MS)
        else:
            if own is None:
                own = self.vad = VoiceActivity.from_settings(self.settings)
            event = own.process(pcm, tick * FRAME_MS) if len(frame) == 160 else None
            if type(event) is SpeechStart:
                # Frames from the onset on: the onset frame is (tick - onset run length + 1) ... tick.
                back = tick - event.onset_ms // FRAME_MS
        due = tick + self.delay_frames
        if type(event) is SpeechStart:
            self._count += 1
            self._item = f"echo-{self._count}"
            preroll = list(self._preroll)[-back:] if back else []
            for i, earlier in enumerate(preroll):
                self._pending.append((due - len(preroll) + i, self._item, earlier))
        if self._item is not None:
            self._pending.append((due, self._item, frame))
            if type(event) is SpeechEnd:
                self._pending.append((due, self._item, None))
                self._item = None
        self._preroll.append(frame)
        self._release(tick)

    def _release(self, tick: int) -> None:
        sink = self.sink
        pending = self._pending
        cut = self._cut
        lead = tick + LEAD_FRAMES
        while pending:
            head = pending[0]
            item_id = head[1]
            if head[0] > (lead if item_id == self._started else tick):
                break
            pending.popleft()
            self._started = item_id
            if sink is None or item_id in cut:
                continue
            frame = head[2]
            if frame is None:
                sink.bot_audio_done(item_id)
            else:
                sink.bot_audio(item_id, frame)

    def send_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def barge_in(self, heard: Heard | None) -> None:
        self.barge_ins.append(heard)
        # Drop what is left of every echo already queued (the interrupted one and any after it); the utterance
        # being captured now is the caller's new turn and will be echoed.
        for _, item_id, _ in self._pending:
            if item_id != self._item:
                self._cut.add(item_id)
        if heard is not None:
            self._cut.add(heard.item_id)

    def playback(self, item_id: str, played_ms: int) -> None:
        self.played[item_id] = played_ms

    async def close(self) -> None:
        self.closed = True
        self._pending.clear()
