"""EchoAgent's per-frame fast path (no VAD transition: one copy, release only when something can be due)
against the agent as it was (``outbound_reference.ReferenceEchoAgent``): for any script of VAD states, barge-ins
and payloads handed over as views of one reused buffer (as the call's media kernel does), both make exactly the
same sink calls with the same bytes, on the call's VAD and on their own VAD."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from call_fakes import SILENCE, frames, voiced
from outbound_reference import ReferenceEchoAgent
from rtvoice.agents.base import CallInfo, Heard
from rtvoice.agents.echo import EchoAgent
from rtvoice.audio import ulaw_decode
from rtvoice.config import Settings
from rtvoice.vad import VoiceActivity


class Sink:
    def __init__(self, vad: object | None) -> None:
        if vad is not None:
            self.vad = vad
        self.log: list[tuple[str, str, bytes | None]] = []

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        self.log.append(("audio", item_id, bytes(ulaw)))

    def bot_audio_done(self, item_id: str) -> None:
        self.log.append(("done", item_id, None))


_step = st.tuples(
    st.booleans(),  # speaking
    st.integers(0, 3),  # onset lag, frames
    st.integers(0, 255),  # payload byte
    st.sampled_from([None, None, None, None, None, None, "heard", "none"]),  # a barge-in after the frame
)


async def _drive(
    agent: EchoAgent | ReferenceEchoAgent, script: list[tuple[bool, int, int, str | None]]
) -> list[tuple[str, str, bytes | None]]:
    vad = VoiceActivity()  # the call's VAD, its state (speaking, onset, last frame) set by the script
    sink = Sink(vad)
    await agent.start(CallInfo("CA1", "MZ1"), sink)  # type: ignore[arg-type]
    assert agent.vad is None  # it reads the call's VAD
    buf = bytearray(160)  # one reused buffer: the agent must copy what it keeps
    pcm = memoryview(bytearray(320)).cast("h")
    for i, (speaking, lag, byte, barge) in enumerate(script):
        t = i * 20
        if speaking and not vad.speaking:
            vad.onset_ms = max(0, t - lag * 20)
        vad.speaking = speaking
        vad.last_ms = t
        buf[:] = bytes([byte]) * 160
        agent.send_audio(memoryview(buf), pcm)
        if barge == "heard" and sink.log:
            agent.barge_in(Heard(sink.log[-1][1], 40))
        elif barge == "none":
            agent.barge_in(None)
    return sink.log


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=120), st.sampled_from([0, 20, 200, 500]))
async def test_call_vad_fast_path_equals_reference(script: list[tuple[bool, int, int, str | None]],
                                                  delay_ms: int) -> None:
    s = Settings(echo_delay_ms=delay_ms, vad_onset_frames=3, vad_hangover_frames=5)
    fast = await _drive(EchoAgent(s), script)
    ref = await _drive(ReferenceEchoAgent(s), script)
    assert fast == ref


async def test_a_scripted_utterance_is_echoed_with_its_own_bytes() -> None:
    s = Settings(echo_delay_ms=100, vad_onset_frames=3, vad_hangover_frames=5)
    script = [(False, 0, 0, None)] * 3 + [(True, 2, 10 + i, None) for i in range(10)] + [(False, 0, 0, None)] * 20
    fast = await _drive(EchoAgent(s), script)
    assert fast == await _drive(ReferenceEchoAgent(s), script)
    audio = [e[2] for e in fast if e[0] == "audio"]
    # the onset lag's two preroll frames, the ten speech frames, the frame of the transition, then the end
    assert audio == [bytes(160)] * 2 + [bytes([10 + i]) * 160 for i in range(10)] + [bytes(160)]
    assert fast[-1] == ("done", "echo-1", None)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 30), st.integers(0, 5)), min_size=1, max_size=6))
async def test_own_vad_path_equals_reference(segments: list[tuple[bool, int, int]]) -> None:
    audio = b"".join(voiced(n * 20, seed=seed) if sp else SILENCE * n for sp, n, seed in segments) + SILENCE * 30
    s = Settings(echo_delay_ms=200, vad_onset_frames=3, vad_hangover_frames=5)
    logs = []
    for agent in (EchoAgent(s), ReferenceEchoAgent(s)):
        sink = Sink(None)
        await agent.start(CallInfo("CA1", "MZ1"), sink)  # type: ignore[arg-type]
        assert isinstance(agent.vad, VoiceActivity)
        for f in frames(audio):
            pcm = bytearray(320)
            ulaw_decode(f, pcm)
            agent.send_audio(f, memoryview(pcm).cast("h"))
        logs.append(sink.log)
    assert logs[0] == logs[1]
