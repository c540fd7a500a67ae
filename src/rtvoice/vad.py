"""Voice activity on the caller's audio: webrtcvad per 20 ms frame plus an onset/hangover state machine.

webrtcvad classifies single frames and blips on clicks, breaths and line noise. A barge-in must not fire on a blip
(the peers' bug: clearing the greeting on every VAD flicker), so speech *starts* only after ``onset_frames``
consecutive speech frames and *ends* only after ``hangover_frames`` consecutive non-speech frames. The reported
onset time is the stream time of the first speech frame of the run, not of the frame that confirmed it, so barge-in
reaction time and turn latency are measured from when the caller really started or stopped talking.

webrtcvad also keeps its own hangover: after even one speech frame it keeps answering "speech" for several
more frames (4-8 at 20 ms, depending on the mode), so a 20 ms click would look like a 100+ ms run and pass any
small onset threshold. A level gate removes that: a frame counts as speech only if webrtcvad says so *and* its
mean absolute level is above ``max(MIN_SPEECH_LEVEL, NOISE_RATIO x noise floor)``, where the noise floor
follows the frames webrtcvad calls non-speech. The hangover frames after a click are at noise level and fail
the gate, so the onset counter sees the click for what it is; speech ends closer to where it really ended.

Sans-I/O: :meth:`VoiceActivity.process` takes one decoded frame and its stream time and returns an event or
None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

# the C extension behind webrtcvad.Vad: called directly to skip the wrapper's per-call checks
import _webrtcvad  # type: ignore[import-not-found]
import webrtcvad

from rtvoice._dsp import frame_abs_sum  # one C call per frame (numpy's abs + sum made three temporaries)

if TYPE_CHECKING:
    from rtvoice.config import Settings

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160 samples = 320 bytes of int16
#: Mean absolute sample level below which a frame is never speech (about -50 dBFS): digital or line silence.
MIN_SPEECH_LEVEL = 100
#: A speech frame must be this many times louder (mean absolute level) than the noise floor (~10 dB).
NOISE_RATIO = 3.0
#: Noise floor smoothing per non-speech frame (time constant ~0.4 s at 20 ms frames).
NOISE_ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """The caller started speaking; ``onset_ms`` is the stream time of the first speech frame of the run."""

    onset_ms: int


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The caller stopped speaking; ``end_ms`` is the stream time just after the last speech frame."""

    onset_ms: int
    end_ms: int


VadEvent = SpeechStart | SpeechEnd


class VoiceActivity:
    """webrtcvad + onset/hangover hysteresis for one call's inbound audio (8 kHz int16, 20 ms frames)."""

    __slots__ = (
        "_handle",
        "_last_speech_end_ms",
        "_run",
        "_run_start_ms",
        "_silence",
        "_vad",
        "frames",
        "hangover_frames",
        "last_ms",
        "noise_floor",
        "onset_frames",
        "onset_ms",
        "speaking",
        "speech_frames",
    )

    def __init__(self, aggressiveness: int = 2, onset_frames: int = 3, hangover_frames: int = 15) -> None:
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"vad aggressiveness must be 0..3, got {aggressiveness}")
        if onset_frames < 1 or hangover_frames < 1:
            raise ValueError("onset_frames and hangover_frames must be >= 1")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._handle = self._vad._vad
        self.onset_frames = onset_frames
        self.hangover_frames = hangover_frames
        #: True between a SpeechStart and the following SpeechEnd.
        self.speaking = False
        self._run = 0  # consecutive speech frames while not speaking
        self._run_start_ms = 0
        self._silence = 0  # consecutive non-speech frames while speaking
        self._last_speech_end_ms = 0
        #: Onset time of the current (or last) speech run.
        self.onset_ms = 0
        #: Frames classified, and how many of them were speech (for tests and stats).
        self.frames = 0
        self.speech_frames = 0
        #: Stream time of the last frame fed (``update``'s ``t_ms``).
        self.last_ms = 0
        #: Mean absolute level of recent non-speech frames.
        self.noise_floor = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> VoiceActivity:
        """Build from ``vad_aggressiveness``, ``vad_onset_frames`` and ``vad_hangover_frames``."""
        return cls(settings.vad_aggressiveness, settings.vad_onset_frames, settings.vad_hangover_frames)

    def is_speech(self, pcm: memoryview | bytes | bytearray) -> bool:
        """Classify one 20 ms frame (160 int16 samples). Any bytes-like works; a writable buffer is not
        copied."""
        return bool(_webrtcvad.process(self._handle, SAMPLE_RATE, pcm, FRAME_SAMPLES))

    def process(self, pcm: memoryview | bytes | bytearray, t_ms: int) -> VadEvent | None:
        """Feed one frame starting at stream time ``t_ms``; return a speech start/end event when one happens.

        ``pcm`` must hold at least 320 bytes (160 int16 samples); frames of another length are the caller's
        job.
        """
        speech = _webrtcvad.process(self._handle, SAMPLE_RATE, pcm, FRAME_SAMPLES)
        level = frame_abs_sum(pcm, FRAME_SAMPLES) / FRAME_SAMPLES
        if speech:
            gate = self.noise_floor * NOISE_RATIO
            speech = level >= (gate if gate > MIN_SPEECH_LEVEL else MIN_SPEECH_LEVEL)
        else:
            self.noise_floor += NOISE_ALPHA * (level - self.noise_floor)
        return self.update(bool(speech), t_ms)

    def update(self, speech: bool, t_ms: int) -> VadEvent | None:
        """Advance the state machine with an already-classified frame (the seam for an echo-aware gate)."""
        self.frames += 1
        self.last_ms = t_ms
        if speech:
            self.speech_frames += 1
            if self.speaking:
                self._silence = 0
                self._last_speech_end_ms = t_ms + FRAME_MS
                return None
            if self._run == 0:
                self._run_start_ms = t_ms
            self._run += 1
            if self._run >= self.onset_frames:
                self.speaking = True
                self._run = 0
                self._silence = 0
                self.onset_ms = self._run_start_ms
                self._last_speech_end_ms = t_ms + FRAME_MS
                return SpeechStart(self.onset_ms)
            return None
        if not self.speaking:
            self._run = 0  # a blip shorter than the onset threshold is forgotten
            return None
        self._silence += 1
        if self._silence >= self.hangover_frames:
            self.speaking = False
            self._silence = 0
            return SpeechEnd(self.onset_ms, self._last_speech_end_ms)
        return None

    def reset(self) -> None:
        """Forget the current run (e.g. after a stream restart)."""
        self.speaking = False
        self._run = 0
        self._silence = 0
