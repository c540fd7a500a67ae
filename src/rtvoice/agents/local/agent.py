"""``RTVOICE_AGENT=local``: an offline agent (webrtcvad endpointing, pocketsphinx, a scenario, espeak-ng).

Per call: caller frames go through a :class:`~rtvoice.vad.VoiceActivity` with a longer hangover than barge-in
uses (:data:`END_OF_TURN_MS`: a comma pause must not end the turn). When an utterance ends, its 8 kHz audio is
recognised in the shared worker pool (:mod:`.pool`), the :class:`~.dialog.DialogEngine` picks the reply, and
the reply is synthesised sentence by sentence in the pool and handed to the call in 100 ms chunks, so the
first sentence plays while the rest is made. The call paces the audio to Twilio.

Barge-in: the call decides (its gated VAD and controller, as for every vendor) and calls :meth:`barge_in`; the
agent stops the reply and cuts the dialog history to the words whose audio started before the heard position
(espeak-ng word events). An utterance that starts while the bot is talking is only answered if the call
confirmed a barge-in for it; otherwise it is taken for line echo of the bot and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.agents.local.asr import AsrModel, build_model
from rtvoice.agents.local.dialog import DialogEngine, Reply, Scenario, load_scenario
from rtvoice.agents.local.tts import BOT_VOICE, Speech, heard_text
from rtvoice.config import Settings
from rtvoice.vad import FRAME_MS, SpeechEnd, SpeechStart, VoiceActivity

log = logging.getLogger("rtvoice.agents.local")

#: Silence that ends the caller's turn. Shorter answers faster; below ~400 ms a pause at a comma splits it.
END_OF_TURN_MS = 500
#: An utterance longer than this is cut and answered (a caller who never pauses, or a noisy line).
MAX_UTTERANCE_MS = 15_000
#: Audio kept from before the VAD confirmed speech, so the recogniser hears the first phoneme.
PREROLL_MS = 200
#: Bot audio is handed to the call in chunks of this size (100 ms of μ-law).
CHUNK_BYTES = 800
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(slots=True)
class TurnTiming:
    """When one caller turn ended and when the reply's first audio left the agent."""

    caller_text: str
    reply_text: str
    #: Stream time (ms) of the end of caller speech, and of the frame on which the turn was detected.
    speech_end_ms: int
    detected_ms: int
    #: Stream time of the inbound frame during which the first bot audio was handed to the call.
    first_audio_ms: int | None = None
    #: Wall-clock seconds from end-of-turn detection to recognition done and to first bot audio.
    asr_s: float = 0.0
    first_audio_s: float | None = None


@dataclass(slots=True)
class _Item:
    item_id: str
    text: str
    sentences: list[tuple[int, Speech]] = field(default_factory=list)  # (start ms in the item, speech)
    audio_ms: int = 0
    cut: bool = False

    def heard(self, heard_ms: int) -> str:
        parts = []
        for start, speech in self.sentences:
            if heard_ms <= start:
                break
            parts.append(heard_text(speech, heard_ms - start))
        return " ".join(p for p in parts if p)


class _Runtime:
    """What all local calls of one scenario share: the scenario and the recogniser's domain model."""

    def __init__(self, scenario: Scenario, model: AsrModel) -> None:
        self.scenario = scenario
        self.model = model


_runtimes: dict[str, _Runtime] = {}
_loading: dict[tuple[int, str], asyncio.Future[_Runtime]] = {}


def _scenario_key(path: str) -> str:
    return os.path.abspath(path) if path else ""


async def load_runtime(scenario_path: str = "", *, warm: bool = True) -> _Runtime:
    """Load (once per process and scenario) the scenario and its language model, and start the worker pool.

    Raises :class:`~.dialog.ScenarioError` for a bad scenario file. Concurrent callers share one load.
    """
    key = _scenario_key(scenario_path)
    runtime = _runtimes.get(key)
    if runtime is not None:
        return runtime
    loop = asyncio.get_running_loop()
    loading_key = (id(loop), key)
    fut = _loading.get(loading_key)
    if fut is not None:
        return await asyncio.shield(fut)
    fut = _loading[loading_key] = loop.create_future()
    try:
        scenario = load_scenario(scenario_path or None)
        model = await asyncio.to_thread(build_model, scenario.corpus())
        if warm:
            from rtvoice.agents.local import pool

            await asyncio.gather(*(asyncio.wrap_future(f) for f in pool.start_workers(model)))
        runtime = _runtimes[key] = _Runtime(scenario, model)
        fut.set_result(runtime)
        return runtime
    except BaseException as exc:
        fut.set_exception(exc)
        fut.exception()  # retrieved: asyncio must not log it again when nobody else awaited
        raise
    finally:
        del _loading[loading_key]


#: ``listener(kind, data)``: "caller" (a :class:`TurnTiming` once recognised), "bot" (item id, text),
#: "first_audio" (the :class:`TurnTiming`), "barge_in" (item id, the heard text or None).
Listener = Callable[[str, object], None]


class LocalAgent(Agent):
    """The offline agent. One instance per call; the models and worker pool are shared.

    ``listener`` (optional) is told about turns as they happen; the demo prints from it.
    """

    name = "local"

    def __init__(self, settings: Settings, listener: Listener | None = None) -> None:
        self.settings = settings
        self.listener = listener
        self.vad = VoiceActivity(
            settings.vad_aggressiveness, settings.vad_onset_frames, max(1, END_OF_TURN_MS // FRAME_MS)
        )
        self.sink: AgentSink | None = None
        self.info: CallInfo | None = None
        self.dialog: DialogEngine | None = None
        self._runtime: _Runtime | None = None
        self._tick = 0
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_MS // FRAME_MS + settings.vad_onset_frames)
        self._utterance: bytearray | None = None
        self._utterance_onset_ms = 0
        self._queue: asyncio.Queue[tuple[bytes, int, int, float]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._speaking: asyncio.Task[None] | None = None
        self._current: _Item | None = None
        self._recent: dict[str, _Item] = {}
        self._items = 0
        #: Stream time until which bot audio handed to the call is still playing (an estimate: the call
        #: starts playing at once and paces in real time).
        self._bot_until_ms = 0
        self._barged_at_ms: int | None = None
        self._closed = False
        #: One entry per answered caller turn (the demo prints these; tests read them).
        self.turns: list[TurnTiming] = []
        #: Utterances dropped as echo of the bot (no barge-in confirmed while the bot was talking).
        self.dropped_as_echo = 0

    @classmethod
    def preflight(cls, settings: Settings) -> None:
        """Check at server start-up what would otherwise fail at the first call.

        Parses and validates the scenario file (``RTVOICE_SCENARIO``, default: the bundled receptionist) and
        checks that the ``local`` extra (pocketsphinx, espeak-ng) is installed. Fast: no model is built.
        Raises :class:`~rtvoice.config.ConfigError` with the file and entry at fault.
        """
        from rtvoice.agents.local.dialog import ScenarioError
        from rtvoice.config import ConfigError

        try:
            load_scenario(settings.scenario_path or None)
        except ScenarioError as exc:
            raise ConfigError(f"RTVOICE_SCENARIO: {exc}") from None
        import importlib.util

        missing = [m for m in ("pocketsphinx", "espeakng_loader") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"RTVOICE_AGENT=local needs {', '.join(missing)}: pip install 'rtvoice[local]'")

    @property
    def stream_ms(self) -> int:
        """Stream time of the end of the last inbound frame."""
        return self._tick * FRAME_MS

    async def prepare(self) -> None:
        self._runtime = await load_runtime(self.settings.scenario_path)

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        if self._runtime is None:
            await self.prepare()
        assert self._runtime is not None
        self.info = call
        self.sink = sink
        self.dialog = DialogEngine(self._runtime.scenario)
        self._task = asyncio.create_task(self._run(), name=f"local-agent-{call.call_sid}")
        self._speaking = asyncio.create_task(self._speak(self.dialog.greeting(), None))

    # --- caller audio (hot path: no logging, no awaits) -----------------------------------------------------

    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        t_ms = self._tick * FRAME_MS
        self._tick += 1
        if self._closed or pcm.nbytes != 320:
            return
        event = self.vad.process(pcm, t_ms)
        utt = self._utterance
        if utt is not None:
            utt += pcm
            if isinstance(event, SpeechEnd) or len(utt) >= MAX_UTTERANCE_MS * 16:
                end_ms = event.end_ms if isinstance(event, SpeechEnd) else t_ms + FRAME_MS
                self._end_utterance(bytes(utt), end_ms)
        elif isinstance(event, SpeechStart):
            self._utterance_onset_ms = event.onset_ms
            self._utterance = bytearray(b"".join(self._preroll))
            self._utterance += pcm
        self._preroll.append(bytes(pcm))

    def _end_utterance(self, pcm: bytes, end_ms: int) -> None:
        self._utterance = None
        if self.vad.speaking:
            self.vad.reset()
        onset = self._utterance_onset_ms
        # Began while the bot was talking and the call did not see a barge-in: the bot's own echo.
        if onset < self._bot_until_ms and (self._barged_at_ms is None or self._barged_at_ms < onset - 1000):
            self.dropped_as_echo += 1
            return
        self._queue.put_nowait((pcm, end_ms, self.stream_ms, time.perf_counter()))

    # --- the turn loop --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        from rtvoice.agents.local import pool

        assert self._runtime is not None and self.dialog is not None and self.sink is not None
        loop = asyncio.get_running_loop()
        executor = pool.get_pool(self._runtime.model)
        while not self._closed:
            pcm, end_ms, detected_ms, t0 = await self._queue.get()
            try:
                text = await loop.run_in_executor(executor, pool.recognize, self._runtime.model, pcm)
            except Exception as exc:  # a dead worker: the call plays its apology
                self.sink.fault("asr", f"speech recognition failed: {exc!r}", True)
                return
            asr_s = time.perf_counter() - t0
            text = text.strip()
            if not text or self._closed:
                continue  # noise the recogniser made nothing of: no turn
            self.sink.caller_text(text, True)
            if self.dialog.finished:
                continue
            reply = self.dialog.respond(text)
            timing = TurnTiming(text, reply.text, end_ms, detected_ms, asr_s=asr_s)
            self.turns.append(timing)
            if self.listener is not None:
                self.listener("caller", timing)
            # A new reply replaces whatever is still being spoken (the caller has moved on).
            if self._speaking is not None and not self._speaking.done():
                await self._stop_speaking()
            self._speaking = asyncio.create_task(self._speak(reply, (timing, t0)))

    async def _stop_speaking(self) -> None:
        task = self._speaking
        if self._current is not None:
            self._current.cut = True
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _speak(self, reply: Reply, timing: tuple[TurnTiming, float] | None) -> None:
        from rtvoice.agents.local import pool

        assert self._runtime is not None and self.sink is not None
        sink = self.sink
        self._items += 1
        item = _Item(f"local-{self._items}", reply.text)
        self._current = item
        # All audio is handed over long before it has played: a barge-in usually refers to a finished item.
        self._recent[item.item_id] = item
        while len(self._recent) > 4:
            del self._recent[next(iter(self._recent))]
        loop = asyncio.get_running_loop()
        executor = pool.get_pool(self._runtime.model)
        sink.bot_text(item.item_id, reply.text, True)
        if self.listener is not None:
            self.listener("bot", (item.item_id, reply.text))
        try:
            for sentence in _SENTENCE.split(reply.text):
                if not sentence.strip():
                    continue
                try:
                    speech = await loop.run_in_executor(executor, pool.speak, sentence, BOT_VOICE)
                except Exception as exc:
                    sink.fault("tts", f"speech synthesis failed: {exc!r}", True)
                    return
                if item.cut or self._closed:
                    return
                item.sentences.append((item.audio_ms, speech))
                if item.audio_ms == 0 and timing is not None:
                    turn, t0 = timing
                    turn.first_audio_ms = self.stream_ms
                    turn.first_audio_s = time.perf_counter() - t0
                    if self.listener is not None:
                        self.listener("first_audio", turn)
                if item.audio_ms == 0:
                    self._bot_until_ms = max(self._bot_until_ms, self.stream_ms)
                data = speech.ulaw
                for i in range(0, len(data), CHUNK_BYTES):
                    sink.bot_audio(item.item_id, data[i : i + CHUNK_BYTES])
                item.audio_ms += speech.duration_ms
                self._bot_until_ms += speech.duration_ms
            sink.bot_audio_done(item.item_id)
        finally:
            if self._current is item:
                self._current = None
        if reply.action == "hang_up":
            sink.hang_up("goodbye")
        elif reply.action == "transfer":
            # TODO(ops): a real transfer (<Dial> via the REST update) needs the outbound module's hook; until
            # then the agent says it will transfer and ends the call.
            sink.hang_up("transfer")

    # --- call events ----------------------------------------------------------------------------------------

    def barge_in(self, heard: Heard | None) -> None:
        self._barged_at_ms = self.stream_ms
        self._bot_until_ms = self.stream_ms
        item = self._current
        if item is not None:
            item.cut = True
        if self._speaking is not None and not self._speaking.done():
            self._speaking.cancel()
        text = None
        if heard is not None and self.dialog is not None:
            text = self._heard_text(heard)
            if text is not None:
                self.dialog.heard(text)
        if self.listener is not None:
            self.listener("barge_in", (heard.item_id if heard else None, text))

    def _heard_text(self, heard: Heard) -> str | None:
        item = self._recent.get(heard.item_id)
        return None if item is None else item.heard(heard.audio_end_ms)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._speaking, self._task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
