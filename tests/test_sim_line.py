"""The simulated phone line: echo delay and level, noise levels, frame loss, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rtvoice.audio import ulaw_decode, ulaw_encode
from rtvoice.sim.line import SPEECH_RMS, LineConfig, LineModel, babble

SILENT = b"\xff" * 160


def tone_timeline(ms: int, amp: float = 8000.0) -> bytearray:
    t = np.arange(ms * 8) / 8000.0
    return bytearray(ulaw_encode((amp * np.sin(2 * np.pi * 440 * t)).astype(np.int16)))


def mic(line: LineModel, heard: bytes | bytearray, frames: int, speech: bytes = SILENT) -> np.ndarray:
    out = [np.asarray(ulaw_decode(line.mic_frame(speech, heard, t * 20)), float) for t in range(frames)]
    return np.concatenate(out)


def test_no_impairments_pass_the_caller_through_unchanged() -> None:
    line = LineModel(LineConfig())
    speech = bytes(ulaw_encode((3000 * np.sin(np.arange(160) / 5)).astype(np.int16)))
    assert line.mic_frame(speech, tone_timeline(200), 0) == speech


@pytest.mark.parametrize("delay_ms", [20, 100, 300])
def test_echo_arrives_after_the_configured_delay(delay_ms: int) -> None:
    heard = bytearray(b"\xff" * 8000)
    heard[800:808] = ulaw_encode(np.full(8, 20000, dtype=np.int16))  # a click at 100 ms
    line = LineModel(LineConfig(echo_delay_ms=delay_ms, erl_db=0.0))
    y = mic(line, heard, 40)
    first = int(np.flatnonzero(np.abs(y) > 2000)[0])
    assert first == 800 + delay_ms * 8


@pytest.mark.parametrize("erl_db", [0.0, 6.0, 20.0])
def test_echo_level_follows_the_echo_return_loss(erl_db: float) -> None:
    heard = tone_timeline(2000)
    line = LineModel(LineConfig(echo_delay_ms=50, erl_db=erl_db))
    y = mic(line, heard, 100)[1000:]
    x = np.asarray(ulaw_decode(bytes(heard)), dtype=np.float64)
    # direct path plus two reflections (+0.35, -0.2 relative): within 3 dB of the nominal loss
    loss = 10 * np.log10(np.mean(x**2) / np.mean(y**2))
    assert abs(loss - erl_db) < 3.0


@pytest.mark.parametrize("kind", ["white", "babble"])
@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_noise_level_follows_the_snr(kind: str, snr_db: float) -> None:
    line = LineModel(LineConfig(noise=kind, snr_db=snr_db, seed=1))  # type: ignore[arg-type]
    y = mic(line, b"", 250)
    rms = float(np.sqrt(np.mean(y**2)))
    assert abs(20 * np.log10(SPEECH_RMS / rms) - snr_db) < 1.5


def test_same_seed_same_signal_other_seed_other_signal() -> None:
    heard = tone_timeline(1000)
    cfg = LineConfig(
        echo_delay_ms=80, erl_db=6, noise="white", snr_db=20, nonlinearity=2.0, path_variation=0.3
    )
    first, second = LineModel(cfg), LineModel(cfg)
    a = [first.mic_frame(SILENT, heard, k * 20) for k in range(30)]
    b = [second.mic_frame(SILENT, heard, k * 20) for k in range(30)]
    assert a == b
    other = LineModel(
        LineConfig(
            echo_delay_ms=80, erl_db=6, noise="white", snr_db=20, nonlinearity=2.0, path_variation=0.3, seed=9
        )
    )
    assert [other.mic_frame(SILENT, heard, k * 20) for k in range(30)] != a


def test_nonlinearity_compresses_loud_echo() -> None:
    heard = tone_timeline(1000, amp=30000)
    lin = mic(LineModel(LineConfig(echo_delay_ms=20, erl_db=0)), heard, 40)[800:]
    nl = mic(LineModel(LineConfig(echo_delay_ms=20, erl_db=0, nonlinearity=3.0)), heard, 40)[800:]
    assert np.abs(nl).max() < 0.6 * np.abs(lin).max()


def test_slowly_varying_path_changes_the_echo_level_over_seconds() -> None:
    heard = tone_timeline(12000)
    y = mic(LineModel(LineConfig(echo_delay_ms=20, erl_db=0, path_variation=0.5)), heard, 600)
    per_s = [np.sqrt(np.mean(y[i : i + 8000] ** 2)) for i in range(8000, len(y) - 8000, 8000)]
    assert max(per_s) / min(per_s) > 1.2


def test_loss_and_late_rates_and_order() -> None:
    line = LineModel(LineConfig(loss_rate=0.05, late_rate=0.05, seed=3))
    delivered: list[int] = []
    for chunk in range(1, 4001):
        delivered += [c for c, _ in line.deliver(chunk, SILENT)]
    lost = 4000 - len(set(delivered))
    late = sum(1 for a, b in itertools.pairwise(delivered) if b < a)
    assert 120 < lost < 300
    assert 100 < late < 300
    assert len(delivered) == len(set(delivered))  # nothing duplicated


def test_babble_is_unit_rms_and_deterministic() -> None:
    b = babble()
    assert abs(float(np.sqrt(np.mean(b.astype(np.float64) ** 2))) - 1.0) < 1e-3
    assert b is babble()


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        LineConfig(echo_delay_ms=-1)
    with pytest.raises(ValueError):
        LineConfig(loss_rate=1.5)
    with pytest.raises(ValueError):
        LineConfig(noise="pink")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LineModel(LineConfig()).mic_frame(b"\xff" * 10, b"", 0)
