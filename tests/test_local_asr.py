"""The local agent's recogniser front end: whole-buffer resampling with rtvoice's Resampler, the domain
model's pronunciations, and word accuracy on the committed caller fixtures (real pocketsphinx)."""

from __future__ import annotations

import tomllib
from importlib import resources

import numpy as np
import pytest

from rtvoice.agents.local.asr import (
    NOISE_FLOOR_RMS,
    Recognizer,
    build_model,
    phone_band_variants,
    slot_phrases,
    with_noise_floor,
    word_errors,
)
from rtvoice.agents.local.dialog import load_scenario
from rtvoice.agents.local.dsp import resample
from rtvoice.audio import ulaw_decode


def _tone(rate: int, hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.mark.parametrize(("a", "b"), [(8000, 16000), (22050, 8000)])
@pytest.mark.parametrize("n", [1, 7, 160, 441, 22050, 12345])
def test_resample_length_is_exact(a: int, b: int, n: int) -> None:
    out = resample(np.ones(n, dtype=np.int16), a, b)
    assert out.dtype == np.int16 and out.size == round(n * b / a)


@pytest.mark.parametrize(("a", "b"), [(8000, 16000), (22050, 8000)])
def test_resample_removes_the_group_delay(a: int, b: int) -> None:
    # a smooth pulse in the middle comes out where it went in (within one output sample): word timings hold
    x = np.zeros(a // 5, dtype=np.int16)
    p = a // 10
    x[p - 3 : p + 4] = [2000, 6000, 12000, 16000, 12000, 6000, 2000]
    y = resample(x, a, b)
    assert abs(int(np.argmax(y)) - p * b / a) <= 1


@pytest.mark.parametrize(("a", "b", "hz"), [(8000, 16000, 1000.0), (8000, 16000, 3300.0), (22050, 8000, 1000.0)])
def test_resample_keeps_the_passband(a: int, b: int, hz: float) -> None:
    y = resample(_tone(a, hz, 0.5), a, b).astype(np.float64)
    ref = _tone(b, hz, 0.5).astype(np.float64)[: y.size]
    core = slice(b // 20, y.size - b // 20)  # away from the edges
    err = y[core] - ref[core]
    snr_db = 10 * np.log10(np.sum(ref[core] ** 2) / (np.sum(err**2) + 1e-9))
    assert snr_db > 30, snr_db  # same phase and amplitude: the delay is gone, nothing attenuated


def test_resample_removes_images_and_aliases() -> None:
    # 22050 -> 8000: a 6 kHz tone is above the new Nyquist and must not fold back to 2 kHz
    y = resample(_tone(22050, 6000.0, 0.5), 22050, 8000).astype(np.float64)[400:-400]  # not the edges
    assert np.sqrt(np.mean(y**2)) < 8000 / np.sqrt(2) * 10 ** (-60 / 20)
    # 8000 -> 16000: no image of a 3 kHz tone at 5 kHz
    z = resample(_tone(8000, 3000.0, 0.5), 8000, 16000).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(z * np.hanning(z.size)))
    freqs = np.fft.rfftfreq(z.size, 1 / 16000)
    assert spectrum[np.argmin(np.abs(freqs - 5000))] < spectrum.max() * 10 ** (-60 / 20)


def test_resample_same_rate_and_empty() -> None:
    x = np.arange(10, dtype=np.int16)
    assert np.array_equal(resample(x, 8000, 8000), x)
    assert resample(np.zeros(0, dtype=np.int16), 8000, 16000).size == 0


def test_phone_band_variants() -> None:
    entries = {
        "seven": [["S", "EH", "V", "AH", "N"]],
        "four": [["F", "AO", "R"]],
        "or": [["AO", "R"]],
        "so": [["S", "OW"]],
        "table": [["T", "EY", "B", "AH", "L"]],
    }
    variants = phone_band_variants(entries)
    # "four" without /f/ would be "or"; "so" without /s/ is a single vowel: too short to be safe
    assert variants == [("seven", ["EH", "V", "AH", "N"])]


def test_slot_phrases_treat_every_value_alike() -> None:
    phrases = slot_phrases()
    for hour in ("one", "seven", "twelve"):
        with_hour = [p for p in phrases if f" at {hour}" in p and "table for" in p]
        assert len(with_hour) == 12  # one per party size
    assert any(p.endswith("tonight") for p in phrases)


def test_noise_floor_is_faint_and_deterministic() -> None:
    silence = np.zeros(16000, dtype=np.int16)
    a, b = with_noise_floor(silence), with_noise_floor(silence)
    assert np.array_equal(a, b)
    rms = float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    assert 0.5 * NOISE_FLOOR_RMS < rms < 2 * NOISE_FLOOR_RMS < 100  # about -60 dBFS


@pytest.mark.slow
def test_word_accuracy_on_the_fixtures() -> None:
    """Each fixture as the agent hears it in a call: with its pre-roll before and end-of-turn silence after."""
    from rtvoice.agents.local.agent import END_OF_TURN_MS, PREROLL_MS

    manifest = tomllib.loads(resources.files("rtvoice").joinpath("fixtures/manifest.toml").read_text())
    rec = Recognizer(build_model(load_scenario().corpus()))
    before = np.zeros(PREROLL_MS * 8, dtype=np.int16)
    after = np.zeros(END_OF_TURN_MS * 8, dtype=np.int16)
    errors = words = 0
    hyps = {}
    for u in manifest["utterance"]:
        ulaw = resources.files("rtvoice").joinpath(f"fixtures/{u['file']}").read_bytes()
        pcm = np.concatenate((before, ulaw_decode(ulaw), after))
        hyps[u["id"]] = hyp = rec.recognize_8k(pcm.tobytes())
        e, n = word_errors(u["text"], hyp)
        errors += e
        words += n
    # 98.4 % when this was written (90.5 % before the noise floor, phone-band pronunciations and slot
    # combinations)
    assert 1 - errors / words >= 0.95, hyps
    assert hyps["book"] == "i would like to book a table for four at seven thirty"
    assert "at seven thirty tonight" in hyps["interrupt"], hyps["interrupt"]
    assert hyps["yes"] == "yes please"
