"""EchoAgent on a call's VAD (one VAD per call): the items, frames and timing it echoes equal those of the
agent running its own VAD on the same audio; and through a real Call it runs no second VAD."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from call_fakes import SILENCE, NullSink, frames, start_event, voiced
from rtvoice.agents.base import CallInfo
from rtvoice.agents.echo import EchoAgent
from rtvoice.audio import ulaw_decode
from rtvoice.call.call import Call
from rtvoice.twilio.media import Media
from rtvoice.vad import VoiceActivity

SETTINGS_KW = {"echo_delay_ms": 200, "vad_onset_frames": 3, "vad_hangover_frames": 5}


class Sink(NullSink):
    def __init__(self, vad: VoiceActivity | None = None) -> None:
        if vad is not None:
            self.vad = vad
        self.log: list[tuple[str, str, bytes | None]] = []

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        self.log.append(("audio", item_id, ulaw))

    def bot_audio_done(self, item_id: str) -> None:
        self.log.append(("done", item_id, None))


def _settings():  # type: ignore[no-untyped-def]
    from rtvoice.config import Settings

    return Settings(**SETTINGS_KW)


async def _run(audio: bytes, shared: bool, t0_ms: int = 0) -> list[tuple[str, str, bytes | None]]:
    s = _settings()
    agent = EchoAgent(s)
    vad = VoiceActivity.from_settings(s) if shared else None
    sink = Sink(vad)
    await agent.start(CallInfo("CA1", "MZ1"), sink)
    assert (agent.vad is None) == shared
    for i, f in enumerate(frames(audio)):
        pcm = bytearray(320)
        ulaw_decode(f, pcm)
        if vad is not None:  # what the Call does: its VAD first, then the agent
            vad.process(pcm, t0_ms + i * 20)
        agent.send_audio(f, memoryview(pcm).cast("h"))
    return sink.log


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 40), st.integers(0, 5)), min_size=1, max_size=8),
    st.integers(0, 10_000).map(lambda x: x * 20),
)
async def test_shared_vad_echoes_exactly_what_the_own_vad_does(
    segments: list[tuple[bool, int, int]], t0_ms: int
) -> None:
    audio = b"".join(
        voiced(n * 20, seed=seed) if speech else SILENCE * n for speech, n, seed in segments
    ) + SILENCE * 30
    own = await _run(audio, shared=False)
    shared = await _run(audio, shared=True, t0_ms=t0_ms)
    assert shared == own


@pytest.mark.asyncio
async def test_through_a_call_the_agent_uses_the_calls_vad() -> None:
    s = _settings()
    agent = EchoAgent(s)
    call = Call(s, agent)
    call.on_start(start_event())
    await agent.start(call.info, call)  # type: ignore[arg-type]
    call.on_agent_ready()
    assert agent.vad is None  # no second VAD
    audio = SILENCE * 10 + voiced(600) + SILENCE * 40
    for i, f in enumerate(frames(audio)):
        call.on_media(Media("MZ" + "1" * 32, i + 2, "inbound", i + 1, i * 20, f))
    sent = [m for m in call.outbox if '"event":"media"' in m.replace(" ", "")]
    assert sent, "the utterance was echoed to Twilio"
    assert agent._count == 1
