"""A scripted agent for barge-in tests and benchmarks: long bot answers on cue, no speech recognition.

:class:`ScriptedAgent` answers with pre-rendered μ-law audio: one answer when the stream starts (like a
greeting) and then one per caller utterance that ends (found by the call's own VAD rules), each as an item
``answer-<n>`` streamed to the call in 100 ms chunks paced by the inbound frames (as a vendor streams faster
than real time: ``lead_frames`` ahead). It records what the call tells it (barge-ins with what was heard,
playback marks), so a test can compare them with what the simulated caller heard.
"""

from __future__ import annotations

from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.config import Settings
from rtvoice.vad import SpeechEnd, VoiceActivity

CHUNK = 800  # 100 ms of μ-law


class ScriptedAgent(Agent):
    """Speaks ``answers`` in turn: the first at stream start, each next one after a caller utterance."""

    name = "scripted"

    def __init__(self, settings: Settings, answers: list[bytes], lead_frames: int = 10) -> None:
        self.settings = settings
        self.answers = list(answers)
        self.lead_frames = lead_frames
        self.vad = VoiceActivity.from_settings(settings)
        self.sink: AgentSink | None = None
        self.info: CallInfo | None = None
        self._tick = 0
        self._n = 0
        self._item: str | None = None
        self._audio = b""
        self._offset = 0
        self._started_tick = 0
        self.barge_ins: list[Heard | None] = []
        self.played: dict[str, int] = {}
        self.closed = False

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        self.info = call
        self.sink = sink
        self._next_answer()

    def _next_answer(self) -> None:
        if self._n >= len(self.answers):
            return
        self._audio = self.answers[self._n]
        self._n += 1
        self._item = f"answer-{self._n}"
        self._offset = 0
        self._started_tick = self._tick

    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        self._tick += 1
        if self.closed:
            return
        ended = len(ulaw) == 160 and isinstance(self.vad.process(pcm, self._tick * 20), SpeechEnd)
        if ended and self._item is None:
            self._next_answer()
        self._stream()

    def _stream(self) -> None:
        sink, item = self.sink, self._item
        if sink is None or item is None:
            return
        # stay at most lead_frames x 20 ms ahead of real time
        allowed = (self._tick - self._started_tick + self.lead_frames) * 160
        while self._offset < min(allowed, len(self._audio)):
            sink.bot_audio(item, self._audio[self._offset : self._offset + CHUNK])
            self._offset += CHUNK
        if self._offset >= len(self._audio):
            sink.bot_audio_done(item)
            self._item = None

    def barge_in(self, heard: Heard | None) -> None:
        self.barge_ins.append(heard)
        self._item = None  # the rest of the answer is dropped

    def playback(self, item_id: str, played_ms: int) -> None:
        self.played[item_id] = max(self.played.get(item_id, 0), played_ms)

    async def close(self) -> None:
        self.closed = True
