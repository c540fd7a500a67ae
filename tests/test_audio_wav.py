"""WAV helpers: PCM widths, channel mixing, G.711 WAVs, round trips (stdlib wave writes the fixtures)."""

from __future__ import annotations

import audioop
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from rtvoice.audio import WavError, read_wav, to_ulaw_8k, ulaw_decode, write_ulaw_wav, write_wav


def _tone(n: int = 800, amp: int = 12000) -> np.ndarray:
    return (amp * np.sin(np.arange(n) * 0.05)).astype(np.int16)


def _write_pcm(path: Path, frames: bytes, width: int, channels: int, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)


def test_write_then_read_16bit(tmp_path: Path) -> None:
    x = _tone()
    write_wav(tmp_path / "a.wav", x, 16000)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000
    assert y.dtype == np.int16
    assert np.array_equal(x, y)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_other_pcm_widths_keep_the_high_bits(tmp_path: Path, width: int) -> None:
    x = _tone()
    if width == 1:
        frames = audioop.bias(audioop.lin2lin(x.tobytes(), 2, 1), 1, 128)  # 8-bit WAV is unsigned
        expect = (x >> 8) << 8
    else:
        frames = audioop.lin2lin(x.tobytes(), 2, width)
        expect = x
    _write_pcm(tmp_path / "w.wav", frames, width, 1, 22050)
    y, rate = read_wav(tmp_path / "w.wav")
    assert rate == 22050
    assert np.array_equal(y, expect)


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left, right = _tone(), np.full(800, 1000, np.int16)
    inter = np.stack([left, right], axis=1).reshape(-1)
    _write_pcm(tmp_path / "s.wav", inter.tobytes(), 2, 2, 8000)
    y, _ = read_wav(tmp_path / "s.wav")
    assert np.array_equal(y, ((left.astype(np.int32) + right) // 2).astype(np.int16))


def test_ulaw_wav_round_trip(tmp_path: Path) -> None:
    codes = bytes(range(256)) * 3 + b"\x01"  # odd length exercises the RIFF pad byte
    write_ulaw_wav(tmp_path / "u.wav", codes)
    y, rate = read_wav(tmp_path / "u.wav")
    assert rate == 8000
    assert y.tobytes() == audioop.ulaw2lin(codes, 2)


def test_unsupported_files_raise_wav_error(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"not a wav at all")
    with pytest.raises(WavError):
        read_wav(tmp_path / "x.wav")
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)  # IEEE float
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 4) + bytes(4)
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(ValueError, match="format tag 0x0003"):
        read_wav(tmp_path / "f.wav")


def test_extensible_pcm_wav(tmp_path: Path) -> None:
    x = _tone(400)
    # WAVE_FORMAT_EXTENSIBLE: cbSize 22, 16 valid bits, mono mask, SubFormat GUID starting with PCM's tag 1
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 16000, 32000, 2, 16, 22, 16, 4)
    fmt += struct.pack("<H", 1) + bytes(14)
    data = x.astype("<i2").tobytes()
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "e.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    y, rate = read_wav(tmp_path / "e.wav")
    assert rate == 16000
    assert np.array_equal(x, y)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 44100, 48000])
def test_to_ulaw_8k_from_any_supported_rate(rate: int) -> None:
    f = 1037.0  # not commensurate with 8 kHz, so μ-law's quantisation error averages out
    n = np.arange(rate)  # one second
    x = np.round(10000 * np.sin(2 * np.pi * f * n / rate)).astype(np.int16)
    codes = to_ulaw_8k(x, rate)
    assert isinstance(codes, bytes)
    assert len(codes) == 8000
    y = ulaw_decode(codes).astype(np.float64)[400:]  # past the filter warm-up
    k = np.arange(400, 8000)
    fit = np.linalg.lstsq(
        np.stack([np.sin(2 * np.pi * f * k / 8000), np.cos(2 * np.pi * f * k / 8000)], 1), y, rcond=None
    )[0]
    assert float(np.hypot(*fit)) == pytest.approx(10000, rel=0.01)  # μ-law error is ~1%; the tone survives


def test_to_ulaw_8k_rejects_unsupported_rates() -> None:
    with pytest.raises(ValueError, match="unsupported resampling 12345 -> 8000"):
        to_ulaw_8k(np.zeros(100, np.int16), 12345)
