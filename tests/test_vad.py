"""VoiceActivity: the real webrtcvad plus the onset/hangover state machine."""

from __future__ import annotations

import numpy as np
import pytest

from call_fakes import SILENCE, frames, voiced
from rtvoice.audio import ulaw_decode, ulaw_encode
from rtvoice.config import Settings
from rtvoice.vad import SpeechEnd, SpeechStart, VoiceActivity


def pcm_frames(audio: bytes) -> list[bytearray]:
    out = []
    for f in frames(audio):
        buf = bytearray(320)
        ulaw_decode(f, buf)
        out.append(buf)
    return out


def feed(vad: VoiceActivity, audio: bytes, t0: int = 0) -> list[SpeechStart | SpeechEnd]:
    events = []
    for i, pcm in enumerate(pcm_frames(audio)):
        ev = vad.process(pcm, t0 + 20 * i)
        if ev is not None:
            events.append(ev)
    return events


def test_webrtcvad_classifies_the_test_signals() -> None:
    assert all(VoiceActivity(2).is_speech(p) for p in pcm_frames(voiced(400)))
    assert not any(VoiceActivity(2).is_speech(p) for p in pcm_frames(SILENCE * 20))
    # webrtcvad's own hangover: after a 20 ms click it keeps saying "speech" for several frames ...
    raw = VoiceActivity(2)
    assert sum(raw.is_speech(p) for p in pcm_frames(voiced(20) + SILENCE * 20)) >= 3


def test_a_click_is_not_a_speech_start_despite_webrtcvad_hangover() -> None:
    # ... which the level gate removes: a 40 ms burst never makes 3 gated speech frames.
    for mode in range(4):
        vad = VoiceActivity(mode, onset_frames=3, hangover_frames=5)
        assert feed(vad, SILENCE * 10 + voiced(40) + SILENCE * 20) == []


def test_onset_over_line_noise() -> None:
    rng = np.random.default_rng(7)
    noise = (rng.normal(0, 60, 8000 * 2)).astype(np.int16)
    speech = np.frombuffer(bytes(ulaw_decode(voiced(600))), np.int16)
    mix = noise.copy()
    mix[8000 : 8000 + len(speech)] += speech
    vad = VoiceActivity(2, onset_frames=3, hangover_frames=10)
    events = feed(vad, bytes(ulaw_encode(mix)))
    assert isinstance(events[0], SpeechStart)
    assert 1000 <= events[0].onset_ms <= 1060
    assert isinstance(events[1], SpeechEnd)
    assert 1600 <= events[1].end_ms <= 1700


def test_onset_reports_the_first_speech_frame_and_hangover_ends() -> None:
    vad = VoiceActivity(2, onset_frames=3, hangover_frames=5)
    audio = SILENCE * 10 + voiced(300) + SILENCE * 10
    events = feed(vad, audio, t0=1000)
    assert events[0] == SpeechStart(onset_ms=1000 + 200)  # frame 10 starts at 1200, confirmed at frame 12
    assert isinstance(events[1], SpeechEnd)
    assert events[1].onset_ms == 1200
    assert events[1].end_ms == 1200 + 300
    assert len(events) == 2
    assert not vad.speaking


def test_blip_shorter_than_onset_is_ignored() -> None:
    vad = VoiceActivity(2, onset_frames=4, hangover_frames=5)
    blip = voiced(60)  # 3 speech frames < 4
    events = feed(vad, SILENCE * 5 + blip + SILENCE * 5 + blip + SILENCE * 5)
    assert events == []
    assert vad.speech_frames >= 6  # webrtcvad did see speech; the state machine rejected it


def test_short_pause_inside_speech_does_not_end_it() -> None:
    vad = VoiceActivity(2, onset_frames=2, hangover_frames=10)
    events = feed(vad, voiced(200) + SILENCE * 5 + voiced(200, seed=3) + SILENCE * 12)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]


def test_from_settings_and_validation() -> None:
    vad = VoiceActivity.from_settings(Settings(vad_aggressiveness=3, vad_onset_frames=5,
    vad_hangover_frames=7))
    assert (vad.onset_frames, vad.hangover_frames) == (5, 7)
    with pytest.raises(ValueError):
        VoiceActivity(4)
    with pytest.raises(ValueError):
        VoiceActivity(2, 0, 1)
