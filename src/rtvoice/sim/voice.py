"""A deterministic synthetic "voice" for the vendor emulators.

The emulators must send audio that a real VAD (webrtcvad) hears as speech and whose length follows the text,
so that barge-in and truncation tests have something real to measure. Each character gets a fixed slot of
``ms_per_char`` milliseconds of a voiced, vowel-like sound (a harmonic series on a ~120 Hz glottal pitch
shaped by two formants chosen from the character). Timing is therefore exact: character ``i`` starts at ``i *
ms_per_char``, which is what the alignment data (ElevenLabs) and the transcript truncation (OpenAI) rely on.

Everything is synthesized directly at the requested sample rate (no resampling) and is pure: same text, same
rate, same bytes. Codecs and resampling come from the compiled audio core (:mod:`rtvoice.audio`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]

#: (F1, F2) formant pairs in Hz; a character picks one by its code point (vowels get their textbook formants)
_VOWELS: dict[str, tuple[float, float]] = {
    "a": (730.0, 1090.0),
    "e": (530.0, 1840.0),
    "i": (270.0, 2290.0),
    "o": (570.0, 840.0),
    "u": (300.0, 870.0),
}
_OTHER: tuple[tuple[float, float], ...] = ((660.0, 1720.0), (490.0, 1350.0), (400.0, 1900.0), (620.0, 1200.0))
_QUIET = frozenset(" ,;:.!?-\n\t")


def _formants(ch: str) -> tuple[float, float, float]:
    """(F1, F2, relative amplitude) of one character's slot."""
    low = ch.lower()
    if low in _VOWELS:
        f1, f2 = _VOWELS[low]
        return f1, f2, 1.0
    f1, f2 = _OTHER[ord(low) % len(_OTHER)]
    # Spaces and punctuation stay voiced but quieter: a real voice does not drop to digital silence between
    # words, and keeping them voiced makes "duration scales with text" hold for VADs as well.
    return f1, f2, 0.45 if ch in _QUIET else 0.8


@functools.lru_cache(maxsize=64)
def _render_cached(text: str, rate: int, ms_per_char: float, amplitude: float) -> bytes:
    n_per_char = round(rate * ms_per_char / 1000.0)
    total = n_per_char * len(text)
    if total == 0:
        return b""
    t = np.arange(total, dtype=np.float64)
    # Slow pitch contour (declination plus a little vibrato) so the sound is not a steady tone.
    f0 = 125.0 - 15.0 * (t / max(total, 1)) + 6.0 * np.sin(2 * math.pi * 3.0 * t / rate)
    phase = 2 * math.pi * np.cumsum(f0) / rate
    nyquist = rate / 2.0
    max_harm = int(min(3800.0, nyquist - 200.0) // 110.0)
    out = np.zeros(total, dtype=np.float64)
    # Per-character harmonic weights: Gaussian resonances around F1 and F2.
    weights = np.zeros((len(text), max_harm), dtype=np.float64)
    gains = np.zeros(len(text), dtype=np.float64)
    harm_f = 120.0 * np.arange(1, max_harm + 1)
    for i, ch in enumerate(text):
        f1, f2, gain = _formants(ch)
        w = np.exp(-(((harm_f - f1) / 180.0) ** 2)) + 0.6 * np.exp(-(((harm_f - f2) / 250.0) ** 2)) + 0.05
        weights[i] = w / np.sqrt(np.sum(w * w))
        gains[i] = gain
    # Interpolate the weights per sample (linearly between slot centres) to avoid clicks at slot borders.
    slot = np.minimum(t / n_per_char - 0.5, len(text) - 1).clip(0.0)
    lo = slot.astype(np.int64)
    hi = np.minimum(lo + 1, len(text) - 1)
    frac = slot - lo
    for k in range(max_harm):
        wk = weights[lo, k] * (1.0 - frac) + weights[hi, k] * frac
        out += wk * np.sin((k + 1) * phase)
    gain_t = gains[lo] * (1.0 - frac) + gains[hi] * frac
    out *= gain_t
    peak = float(np.max(np.abs(out))) or 1.0
    out *= amplitude * 32767.0 / peak
    # 5 ms fade in/out so the clip starts and ends without a click.
    ramp = min(total // 2, max(1, rate // 200))
    env = np.ones(total)
    env[:ramp] = np.linspace(0.0, 1.0, ramp)
    env[-ramp:] = np.linspace(1.0, 0.0, ramp)
    out *= env
    return np.round(out).astype("<i2").tobytes()


def render(text: str, rate: int, ms_per_char: float = 60.0, amplitude: float = 0.5) -> Int16Array:
    """Render ``text`` as voiced 16-bit mono PCM at ``rate`` Hz; ``len(text) * ms_per_char`` ms long."""
    if rate <= 0 or ms_per_char <= 0:
        raise ValueError("rate and ms_per_char must be positive")
    return np.frombuffer(
        _render_cached(text, rate, float(ms_per_char), float(amplitude)), dtype="<i2"
    ).astype(np.int16)


def char_timings(text: str, ms_per_char: float) -> tuple[list[int], list[int]]:
    """Start times and durations (ms) of each character of ``render(text, ...)``."""
    starts = [round(i * ms_per_char) for i in range(len(text))]
    durations = [round((i + 1) * ms_per_char) - starts[i] for i in range(len(text))]
    return starts, durations
