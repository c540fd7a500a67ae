"""Resampler: exact counts, chunking invariance (hypothesis), measured quality, errors.

Quality is measured on int16 tones fed in 20 ms chunks, by least-squares fits of sine/cosine pairs over the
steady-state part of the output, against the issue's targets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtvoice.audio import SUPPORTED_PAIRS, Resampler

CALL_RATES = (8000, 16000, 24000)


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 16000.0) -> np.ndarray:
    n = np.arange(int(rate * seconds))
    return np.round(amp * np.sin(2 * np.pi * freq * n / rate)).astype(np.int16)


def in_chunks(r: Resampler, x: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([r.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def amplitude(y: np.ndarray, freq: float, rate: int) -> float:
    """Least-squares amplitude of a sinusoid at ``freq`` in ``y``."""
    n = np.arange(len(y))
    basis = np.stack([np.sin(2 * np.pi * freq * n / rate), np.cos(2 * np.pi * freq * n / rate)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    return float(math.hypot(*coef))


def db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-12))


def steady(y: np.ndarray, rate: int) -> np.ndarray:
    return y[rate // 10 :]  # skip the first 100 ms (filter warm-up)


# ---- counts and streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), sorted(SUPPORTED_PAIRS))
def test_exact_counts_per_chunk(a: int, b: int) -> None:
    r = Resampler(a, b)
    L, M = r.ratio
    assert L * a == M * b
    chunk = M * max(1, a // (50 * M))  # about 20 ms, a multiple of the ratio's denominator
    for _ in range(10):
        assert len(r.process(np.zeros(chunk, np.int16))) == chunk * b // a


@pytest.mark.parametrize("a", [11025, 22050, 44100])
def test_running_total_within_one_sample_one_chunk_per_chunk(a: int) -> None:
    r = Resampler(a, 8000)
    total_in = total_out = 0
    for _ in range(200):
        n = a // 50  # 20 ms, not a multiple of the denominator (441)
        got = len(r.process(np.ones(n, np.int16)))
        total_in += n
        total_out += got
        assert got > 0
        assert abs(total_out - total_in * 8000 / a) <= 1


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(sorted(SUPPORTED_PAIRS)),
    sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_streaming_equals_one_shot(pair: tuple[int, int], sizes: list[int], seed: int) -> None:
    x = np.random.default_rng(seed).integers(-32768, 32768, sum(sizes), dtype=np.int16)
    one = Resampler(*pair).process(x)
    r = Resampler(*pair)
    parts, i = [], 0
    for n in sizes:
        out = np.empty(r.output_size(n), np.int16)
        assert r.process(x[i : i + n], out) is out
        parts.append(out)
        i += n
    assert np.array_equal(np.concatenate(parts), one)


def test_large_one_shot_equals_20ms_chunks() -> None:
    x = np.random.default_rng(3).integers(-20000, 20000, 48000, dtype=np.int16)
    for pair in [(8000, 24000), (24000, 8000), (22050, 8000), (48000, 16000)]:
        assert np.array_equal(Resampler(*pair).process(x), in_chunks(Resampler(*pair), x, pair[0] // 50))


def test_reset_restarts_the_stream() -> None:
    x = tone(440, 8000, 0.1)
    r = Resampler(8000, 24000)
    first = r.process(x)
    r.process(x[:37])
    r.reset()
    assert np.array_equal(r.process(x), first)


def test_any_buffer_and_out_types() -> None:
    x = tone(440, 8000, 0.02)
    ref = Resampler(8000, 16000).process(x)
    assert np.array_equal(Resampler(8000, 16000).process(x.tobytes()), ref)
    assert np.array_equal(Resampler(8000, 16000).process(bytearray(x.tobytes())), ref)
    ba = bytearray(2 * len(ref))
    Resampler(8000, 16000).process(memoryview(x.tobytes()), memoryview(ba))
    assert bytes(ba) == ref.tobytes()


def test_errors() -> None:
    with pytest.raises(ValueError, match="unsupported resampling 8000 -> 44100"):
        Resampler(8000, 44100)
    with pytest.raises(ValueError, match="unsupported"):
        Resampler(8000, 8000)
    r = Resampler(8000, 24000)
    with pytest.raises(ValueError, match="odd byte length"):
        r.process(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="exactly 960 bytes"):
        r.process(np.zeros(160, np.int16), np.zeros(479, np.int16))
    # a failed call consumed nothing
    assert len(r.process(np.zeros(160, np.int16))) == 480


def test_clipping_saturates() -> None:
    square = np.tile(np.r_[np.full(4, 32767), np.full(4, -32768)].astype(np.int16), 100)
    y = Resampler(8000, 24000).process(square)
    assert y.max() == 32767
    assert y.min() == -32768


# ---- quality (the targets) ----------------------------------------------------------------------


def test_up_8k_24k_flat_within_0_1_db_to_3400() -> None:
    worst = 0.0
    for f in [100, 300, 500, 1000, 2000, 3000, 3300, 3400]:
        y = steady(in_chunks(Resampler(8000, 24000), tone(f, 8000), 160), 24000)
        gain = db(amplitude(y, f, 24000) / 16000)
        worst = max(worst, abs(gain))
    print(f"8k->24k passband deviation: {worst:.4f} dB")
    assert worst <= 0.1


def test_up_8k_24k_image_of_1k_below_minus_90_dbc() -> None:
    y = steady(in_chunks(Resampler(8000, 24000), tone(1000, 8000), 160), 24000)
    ref = amplitude(y, 1000, 24000)
    images = [db(amplitude(y, f, 24000) / ref) for f in (7000, 9000)]
    print(f"8k->24k images of 1 kHz at 7/9 kHz: {images[0]:.1f} / {images[1]:.1f} dBc")
    assert max(images) <= -90


@pytest.mark.parametrize(("f", "alias"), [(5000, 3000), (6500, 1500), (9000, 1000)])
def test_down_24k_8k_aliasing_below_minus_80_db(f: int, alias: int) -> None:
    y = steady(in_chunks(Resampler(24000, 8000), tone(f, 24000), 480), 8000)
    leak = db(amplitude(y, alias, 8000) / 16000)
    print(f"24k->8k: {f} Hz leaks {leak:.1f} dB at {alias} Hz")
    assert leak <= -80


def test_down_24k_8k_passband_flat() -> None:
    for f in [300, 1000, 3400]:
        y = steady(in_chunks(Resampler(24000, 8000), tone(f, 24000), 480), 8000)
        assert abs(db(amplitude(y, f, 8000) / 16000)) <= 0.1


def _band_noise(n: int, rate: int, lo: float, hi: float, rms: float, seed: int) -> np.ndarray:
    """Periodic (period n) noise with a flat spectrum between lo and hi Hz, as float64."""
    rng = np.random.default_rng(seed)
    spec = np.zeros(n // 2 + 1, complex)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    band = (freqs >= lo) & (freqs <= hi)
    spec[band] = np.exp(2j * np.pi * rng.random(band.sum()))
    x = np.fft.irfft(spec, n)
    return x * (rms / x.std())


def test_round_trip_8k_24k_8k_snr_at_least_70_db() -> None:
    period = 8000
    ref = _band_noise(period, 8000, 300, 3400, 5000, seed=7)
    x = np.round(np.tile(ref, 3)).astype(np.int16)
    up, down = Resampler(8000, 24000), Resampler(24000, 8000)
    y = np.concatenate([down.process(up.process(x[i : i + 160])) for i in range(0, len(x), 160)])
    delay = (up.delay_ms + down.delay_ms) * 8  # in 8 kHz samples (fractional)
    # the ideal output: the periodic reference delayed by exactly `delay` samples (phase shift in frequency)
    spec = np.fft.rfft(ref) * np.exp(-2j * np.pi * np.fft.rfftfreq(period) * delay)
    ideal = np.fft.irfft(spec, period)
    got = y[2 * period : 3 * period].astype(np.float64)
    snr = 10 * math.log10(np.sum(ideal**2) / np.sum((got - ideal) ** 2))
    print(f"8k->24k->8k round trip SNR: {snr:.1f} dB (delay {delay:.3f} samples)")
    assert snr >= 70


@pytest.mark.parametrize(("a", "b"), [(a, b) for a in CALL_RATES for b in CALL_RATES if a != b])
def test_group_delay_at_most_2_5_ms_and_as_reported(a: int, b: int) -> None:
    r = Resampler(a, b)
    assert r.delay_ms <= 2.5
    f = 100.0  # period 10 ms: the phase lag is unambiguous
    x = tone(f, a)
    y = steady(in_chunks(r, x, a // 50), b)
    n = np.arange(len(y)) + b // 10
    basis = np.stack([np.sin(2 * np.pi * f * n / b), np.cos(2 * np.pi * f * n / b)], axis=1)
    (s, c), *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    measured_ms = -math.atan2(c, s) / (2 * np.pi * f) * 1000  # phase lag of the output tone
    assert measured_ms == pytest.approx(r.delay_ms, abs=0.01)


@pytest.mark.parametrize(
    ("a", "b"), [(8000, 24000), (8000, 16000), (24000, 8000), (16000, 8000), (22050, 8000)]
)
def test_fused_ulaw_paths_equal_the_two_step_chains(a: int, b: int) -> None:
    from rtvoice.audio import ulaw_decode, ulaw_encode

    x = np.random.default_rng(5).integers(-20000, 20000, a, dtype=np.int16)
    codes = bytes(ulaw_encode(x))
    r1, r2, r3, r4 = Resampler(a, b), Resampler(a, b), Resampler(a, b), Resampler(a, b)
    step = a // 50
    for i in range(0, a, step):
        c = codes[i : i + step]
        assert np.array_equal(r1.process_ulaw(c), r2.process(ulaw_decode(c)))
        s = x[i : i + step]
        out = bytearray(r3.output_size(len(s)))
        assert r3.process_to_ulaw(s, out) is out
        assert out == ulaw_encode(r4.process(s))


@pytest.mark.parametrize(("a", "b"), [(a, b) for a in CALL_RATES for b in CALL_RATES if a != b])
def test_every_call_rate_pair_is_flat_and_rejects_aliases(a: int, b: int) -> None:
    low = min(a, b)
    for f in (0.05 * low, 0.25 * low, 0.425 * low):  # passband, up to 3.4 kHz at 8 kHz
        y = steady(in_chunks(Resampler(a, b), tone(f, a), a // 50), b)
        assert abs(db(amplitude(y, f, b) / 16000)) <= 0.1, f
    if a > b:  # decimation: a tone above the new band (5 kHz -> 8 kHz) must not fold back into it
        f = 0.625 * low
        alias = b - f
        y = steady(in_chunks(Resampler(a, b), tone(f, a), a // 50), b)
        assert db(amplitude(y, alias, b) / 16000) <= -80
    else:  # interpolation: the image of a 1/8-band tone stays below -90 dBc
        f = 0.125 * low
        y = steady(in_chunks(Resampler(a, b), tone(f, a), a // 50), b)
        image = a - f
        assert db(amplitude(y, image, b) / amplitude(y, f, b)) <= -90
