"""The simulated Twilio's playout buffer and caller script, sans-I/O (no sockets, no clock)."""

from __future__ import annotations

import numpy as np
import pytest

from rtvoice.audio import ulaw_encode
from rtvoice.sim.twilio import CallResult, CallScript, PlayoutEmulator, caller_audio


def test_plays_in_real_time_and_records_the_timeline() -> None:
    p = PlayoutEmulator()
    assert p.advance(100) == []
    assert bytes(p.heard) == b"\xff" * 800  # 100 ms of silence before any bot audio
    p.enqueue(100, b"\x01" * 400)  # 50 ms of bot audio arrives at t=100
    p.advance(130)
    assert p.playing and p.buffered_bytes == 160
    p.advance(200)
    assert not p.playing
    assert bytes(p.heard[800:1200]) == b"\x01" * 400
    assert bytes(p.heard[1200:1600]) == b"\xff" * 400
    assert p.segments == [[100.0, 150.0]]
    assert p.first_audio_ms == 100.0 and p.idle_since_ms == 150.0
    assert p.position_ms == 200.0


def test_audio_arriving_during_playback_continues_the_segment() -> None:
    p = PlayoutEmulator()
    p.enqueue(0, b"\x01" * 160)
    p.advance(10)
    p.enqueue(10, b"\x02" * 160)
    p.advance(100)
    assert p.segments == [[0.0, 40.0]]
    assert bytes(p.heard[:320]) == b"\x01" * 160 + b"\x02" * 160


def test_marks_return_when_their_audio_has_played() -> None:
    p = PlayoutEmulator()
    assert p.mark(0, "empty") == ["empty"]  # nothing buffered: returned at once
    p.enqueue(0, b"\x01" * 800)  # 100 ms
    assert p.mark(0, "a") == []
    p.enqueue(0, b"\x02" * 800)
    assert p.mark(0, "b") == []
    assert p.next_mark_due_ms() == 100.0
    assert p.advance(99.9) == []
    assert p.advance(100) == ["a"]
    assert p.next_mark_due_ms() == 200.0
    assert p.advance(250) == ["b"]
    assert p.mark(250, "c") == ["c"]


def test_clear_drops_audio_and_returns_pending_marks() -> None:
    p = PlayoutEmulator()
    p.enqueue(0, b"\x01" * 8000)  # 1 s
    p.mark(0, "a")
    p.enqueue(0, b"\x02" * 800)
    p.mark(0, "b")
    due, returned, dropped = p.clear(300)
    assert due == [] and returned == ["a", "b"]
    assert dropped == 8800 - 2400
    assert p.discarded_total == dropped and not p.playing
    p.advance(400)
    assert bytes(p.heard[2400:3200]) == b"\xff" * 800  # nothing plays after the clear
    assert p.segments == [[0.0, 300.0]]


def test_result_helpers() -> None:
    r = CallResult("CA1", "AC1", "+1", "+2")
    r.heard = bytearray(b"\xff" * 80 + b"\x01" * 80)
    r.bot_segments = [[10.0, 20.0], [30.0, 35.0]]
    assert r.heard_until(10) == b"\xff" * 80
    assert r.bot_heard_ms() == 15.0 and r.bot_heard_ms(until_ms=15) == 5.0
    assert "outcome: pending" in r.format_summary()
    assert r.summary()["bot_heard_ms"] == 15.0


def test_caller_audio_inputs() -> None:
    assert caller_audio(b"\x01\x02") == b"\x01\x02"
    pcm = (np.sin(np.arange(800) / 5) * 8000).astype(np.int16)
    assert caller_audio(pcm) == bytes(ulaw_encode(pcm.tobytes()))
    with pytest.raises(ValueError):
        caller_audio(pcm.astype(np.float32))  # type: ignore[arg-type]


def test_script_validation() -> None:
    s = CallScript().say(b"\x01" * 160, at_ms=0).dtmf("1#", after_ms=100).hangup(after_bot_silence_ms=500)
    assert [step.kind for step in s.steps] == ["say", "dtmf", "hangup"]
    with pytest.raises(ValueError):
        CallScript().say(b"", at_ms=0, after_ms=10)
    with pytest.raises(ValueError):
        CallScript().dtmf("x")


def test_caller_audio_from_wav_of_any_rate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rtvoice.audio import write_wav

    t = np.arange(16000) / 16000.0
    pcm = (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)
    write_wav(tmp_path / "a16.wav", pcm.tobytes(), 16000)
    ulaw = caller_audio(tmp_path / "a16.wav")
    assert abs(len(ulaw) - 8000) <= 1  # 1 s at 8 kHz μ-law
    write_wav(tmp_path / "a8.wav", pcm[::2].copy().tobytes(), 8000)
    assert caller_audio(str(tmp_path / "a8.wav")) == bytes(ulaw_encode(pcm[::2].copy().tobytes()))
    assert len(caller_audio(pcm, rate=16000)) == len(ulaw)
