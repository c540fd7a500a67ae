"""Whole-buffer resampling for the local agent (synthesis output and recogniser input).

The streaming :class:`rtvoice.audio.Resampler` is built for 20 ms frames on the call's hot path, with state
and a group delay. Here whole utterances are converted at once in a worker process, so a zero-phase
windowed-sinc filter over the whole buffer is simpler: no delay to trim, no tail to flush, and word timings stay aligned.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_HALF_TAPS = 16  # each side of the kernel: ~-60 dB stopband with the Hann window, plenty for speech


def resample(samples: npt.NDArray[np.int16], in_rate: int, out_rate: int) -> npt.NDArray[np.int16]:
    """Resample a whole int16 signal from ``in_rate`` to ``out_rate`` (anti-aliased; int16 out)."""
    if in_rate == out_rate or samples.size == 0:
        return samples.astype(np.int16, copy=True)
    x = samples.astype(np.float32)
    n_out = samples.size * out_rate // in_rate
    ratio = out_rate / in_rate
    cutoff = min(1.0, ratio) * 0.92  # of the input Nyquist: a transition band below the lower Nyquist
    out = np.empty(n_out, dtype=np.float32)
    offsets = np.arange(-_HALF_TAPS + 1, _HALF_TAPS + 1)
    block = 8192  # bounds the temporary (block x 32 taps) matrices
    for start in range(0, n_out, block):
        pos = np.arange(start, min(n_out, start + block)) / ratio  # output times in input samples
        base = np.floor(pos).astype(np.int64)
        t = offsets[None, :] - (pos - base)[:, None]
        window = 0.5 + 0.5 * np.cos(np.pi * t / _HALF_TAPS)
        kernel = (cutoff * np.sinc(cutoff * t) * window).astype(np.float32)
        idx = base[:, None] + offsets[None, :]
        taps = np.where((idx >= 0) & (idx < x.size), x[np.clip(idx, 0, x.size - 1)], np.float32(0.0))
        out[start : start + pos.size] = np.sum(taps * kernel, axis=1)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
