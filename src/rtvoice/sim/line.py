"""The phone line between the simulated caller and Twilio: echo, noise and frame loss.

A speakerphone caller's microphone picks up the bot's voice from the loudspeaker: what the caller *heard*
comes back, delayed and attenuated, mixed with the caller's own speech and background noise. This module
renders that, deterministically from a seed, one 20 ms frame at a time:

* echo of the heard bot audio: bulk delay 20-300 ms, echo return loss (ERL) 0-30 dB, a short dispersive echo
  path (three taps), an optional mild loudspeaker nonlinearity (soft clipping) and an optional slowly varying
  path (gain and reflection taps drifting at ~0.1-0.2 Hz);
* background noise: white, or babble mixed from the bundled fixture utterances, at an SNR relative to the
  caller's active speech level (:data:`SPEECH_RMS`);
* frame loss and late (reordered) frames at given rates (:meth:`LineModel.deliver`).

Sans-I/O: :meth:`LineModel.mic_frame` takes the caller's own μ-law frame, the heard timeline (μ-law, byte
``8 * t`` is stream time ``t`` ms, as :class:`rtvoice.sim.twilio.PlayoutEmulator` keeps it) and the frame's
stream time, and returns what the microphone sends. The simulated Twilio and the quality benchmark both use
it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import numpy as np
import numpy.typing as npt

from rtvoice.audio import ulaw_decode, ulaw_encode

FRAME = 160  # samples per 20 ms frame at 8 kHz
RATE = 8000
#: RMS of active caller speech in the bundled fixtures (measured on frames above -40 dBFS); SNRs refer to it.
SPEECH_RMS = 3100.0
NoiseKind = Literal["none", "white", "babble"]


@dataclass(frozen=True, slots=True)
class LineConfig:
    """Impairments of one simulated line. ``echo_delay_ms=None`` means no echo (a handset)."""

    echo_delay_ms: float | None = None
    erl_db: float = 12.0
    #: loudspeaker drive of the soft clipper (0 = linear; 1-3 is a mild, audible distortion)
    nonlinearity: float = 0.0
    #: depth of the slow echo-path variation (0 = fixed path; 0.3 = gain and reflections drift by ±30 %)
    path_variation: float = 0.0
    noise: NoiseKind = "none"
    snr_db: float = 20.0
    loss_rate: float = 0.0
    late_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.echo_delay_ms is not None and not 0 <= self.echo_delay_ms <= 1000:
            raise ValueError(f"echo_delay_ms must be 0..1000, got {self.echo_delay_ms}")
        if not 0 <= self.erl_db <= 60:
            raise ValueError(f"erl_db must be 0..60, got {self.erl_db}")
        if not 0 <= self.loss_rate < 1 or not 0 <= self.late_rate < 1:
            raise ValueError("loss_rate and late_rate must be in [0, 1)")
        if self.noise not in ("none", "white", "babble"):
            raise ValueError(f"noise must be none, white or babble, got {self.noise!r}")


@functools.cache
def _fixture_speech() -> tuple[npt.NDArray[np.float32], ...]:
    folder = resources.files("rtvoice") / "fixtures"
    out = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".ulaw"):
            out.append(np.asarray(ulaw_decode(entry.read_bytes()), dtype=np.float32))
    return tuple(out)


@functools.cache
def babble(seconds: float = 20.0, voices: int = 6, seed: int = 1234) -> npt.NDArray[np.float32]:
    """A loop of babble: ``voices`` fixture utterances at random offsets, summed, scaled to unit RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    mix = np.zeros(n, dtype=np.float64)
    speech = _fixture_speech()
    for _ in range(voices):
        track = np.zeros(n, dtype=np.float64)
        pos = int(rng.integers(0, RATE))
        while pos < n:
            clip = speech[int(rng.integers(0, len(speech)))]
            k = min(len(clip), n - pos)
            track[pos : pos + k] += clip[:k] * rng.uniform(0.6, 1.0)
            pos += k + int(rng.integers(0, RATE // 4))
        mix += track
    rms = float(np.sqrt(np.mean(mix**2))) or 1.0
    return (mix / rms).astype(np.float32)


class LineModel:
    """Renders the microphone signal of one simulated caller (see the module docstring)."""

    def __init__(self, config: LineConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        c = config
        self._delay = 0 if c.echo_delay_ms is None else round(c.echo_delay_ms * RATE / 1000)
        self._gain = 10.0 ** (-c.erl_db / 20.0)
        self._noise_rms = SPEECH_RMS / 10.0 ** (c.snr_db / 20.0) if c.noise != "none" else 0.0
        self._babble = babble() if c.noise == "babble" else None
        self._babble_pos = int(self._rng.integers(0, RATE * 10))
        # a short dispersive path: direct sound plus two reflections (relative gains, delays in samples)
        self._refl = ((0.35, 7 + int(self._rng.integers(0, 6))), (-0.2, 19 + int(self._rng.integers(0, 10))))
        self._phase = float(self._rng.uniform(0, 2 * math.pi))
        self._held: tuple[int, bytes] | None = None
        #: the echo component of the last frame (float, before noise and caller speech), for measurements
        self.last_echo = np.zeros(FRAME, dtype=np.float32)
        self._mic = np.zeros(FRAME, dtype=np.float32)

    def _heard_pcm(self, heard: bytes | bytearray, start: int, n: int) -> npt.NDArray[np.float32]:
        """Samples ``start .. start+n`` of the heard timeline (silence outside it)."""
        out = np.zeros(n, dtype=np.float32)
        lo, hi = max(start, 0), min(start + n, len(heard))
        if hi > lo:
            out[lo - start : hi - start] = ulaw_decode(bytes(heard[lo:hi]))
        return out

    def echo(self, heard: bytes | bytearray, t_ms: float) -> npt.NDArray[np.float32]:
        """The echo reaching the microphone during the frame that starts at ``t_ms``."""
        c = self.config
        if c.echo_delay_ms is None:
            return np.zeros(FRAME, dtype=np.float32)
        n0 = round(t_ms * RATE / 1000) - self._delay
        longest = max(d for _, d in self._refl)
        x = self._heard_pcm(heard, n0 - longest, FRAME + longest)
        if c.nonlinearity > 0:
            drive = c.nonlinearity
            x = (np.tanh(drive * x / 32768.0) / drive * 32768.0).astype(np.float32)
        y = x[longest:].copy()
        t = t_ms / 1000.0
        gain = self._gain
        refl: tuple[tuple[float, int], ...] = self._refl
        if c.path_variation > 0:
            depth = c.path_variation
            gain *= 1.0 + depth * 0.5 * math.sin(2 * math.pi * 0.13 * t + self._phase)
            refl = tuple(
                (g * (1.0 + depth * math.sin(2 * math.pi * 0.19 * t + self._phase + k)), d)
                for k, (g, d) in enumerate(refl)
            )
        for g, d in refl:
            y += g * x[longest - d : longest - d + FRAME]
        out: npt.NDArray[np.float32] = (y * gain).astype(np.float32)
        return out

    def noise(self) -> npt.NDArray[np.float32]:
        """One frame of background noise at the configured level."""
        if self._noise_rms == 0.0:
            return np.zeros(FRAME, dtype=np.float32)
        if self._babble is not None:
            b = self._babble
            idx = (self._babble_pos + np.arange(FRAME)) % len(b)
            self._babble_pos = (self._babble_pos + FRAME) % len(b)
            return (b[idx] * self._noise_rms).astype(np.float32)
        return self._rng.normal(0.0, self._noise_rms, FRAME).astype(np.float32)

    def mic_frame(self, speech: bytes, heard: bytes | bytearray, t_ms: float) -> bytes:
        """μ-law frame the microphone sends at ``t_ms``: caller speech + echo of the heard bot + noise."""
        if len(speech) != FRAME:
            raise ValueError(f"speech frame must be {FRAME} μ-law bytes, got {len(speech)}")
        echo = self.echo(heard, t_ms)
        self.last_echo = echo
        mic = np.asarray(ulaw_decode(speech), dtype=np.float32) + echo + self.noise()
        np.clip(mic, -32768, 32767, out=mic)
        return bytes(ulaw_encode(mic.astype(np.int16)))

    def deliver(self, chunk: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Frames that reach Twilio now: none (lost, or held back to arrive late), one, or two (a late one
        after the current one)."""
        c = self.config
        out: list[tuple[int, bytes]] = []
        roll = float(self._rng.random())
        if roll < c.loss_rate:
            pass
        elif roll < c.loss_rate + c.late_rate and self._held is None:
            self._held = (chunk, payload)
            return out
        else:
            out.append((chunk, payload))
        if self._held is not None and (not out or out[0][0] != self._held[0]):
            out.append(self._held)
            self._held = None
        return out


__all__ = ["SPEECH_RMS", "LineConfig", "LineModel", "NoiseKind", "babble"]
