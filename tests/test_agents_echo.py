"""EchoAgent: one item per caller utterance, replayed after echo_delay_ms of stream time; barge-in cuts it."""

from __future__ import annotations

import pytest

from call_fakes import SILENCE, NullSink, frames, voiced
from rtvoice.agents.base import CallInfo, Heard
from rtvoice.agents.echo import LEAD_FRAMES, EchoAgent
from rtvoice.agents.registry import agent_class, create_agent
from rtvoice.audio import ulaw_decode
from rtvoice.config import ConfigError, Settings


class Sink(NullSink):
    def __init__(self, agent: EchoAgent) -> None:
        self.agent = agent
        self.audio: list[tuple[int, str, bytes]] = []  # (tick it arrived, item, bytes)
        self.done: list[tuple[int, str]] = []

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        self.audio.append((self.agent._tick - 1, item_id, ulaw))

    def bot_audio_done(self, item_id: str) -> None:
        self.done.append((self.agent._tick - 1, item_id))


async def started(delay_ms: int = 200) -> tuple[EchoAgent, Sink]:
    agent = EchoAgent(Settings(echo_delay_ms=delay_ms, vad_onset_frames=3, vad_hangover_frames=5))
    sink = Sink(agent)
    await agent.start(CallInfo("CA1", "MZ1"), sink)
    return agent, sink


def feed(agent: EchoAgent, audio: bytes) -> None:
    for f in frames(audio):
        pcm = bytearray(320)
        ulaw_decode(f, pcm)
        agent.send_audio(f, memoryview(pcm).cast("h"))


async def test_each_utterance_is_echoed_once_after_the_delay() -> None:
    agent, sink = await started(200)
    words1, words2 = voiced(300, seed=1), voiced(200, seed=2)
    feed(agent, SILENCE * 10 + words1 + SILENCE * 20 + words2 + SILENCE * 30)
    items = [item for _, item, _ in sink.audio]
    assert sorted(set(items)) == ["echo-1", "echo-2"]
    echo1 = b"".join(a for _, i, a in sink.audio if i == "echo-1")
    # From the first speech frame on (the pre-roll keeps the onset), plus the hangover frames.
    assert echo1.startswith(words1)
    assert len(echo1) == len(words1) + 5 * 160
    first_tick = next(t for t, i, _ in sink.audio if i == "echo-1")
    assert first_tick == 10 + 200 // 20  # the speech began at frame 10: heard back 200 ms later
    assert [i for _, i in sink.done] == ["echo-1", "echo-2"]
    # Silence is never echoed: nothing between the utterances.
    assert all(a != SILENCE for _, _, a in sink.audio[:3])


async def test_frames_after_the_first_come_a_little_early_for_jitter() -> None:
    agent, sink = await started(300)
    feed(agent, SILENCE * 5 + voiced(400) + SILENCE * 30)
    ticks = [t for t, i, _ in sink.audio if i == "echo-1"]
    # Frame k of the utterance is due at first + k; it arrives at most LEAD_FRAMES earlier, never later.
    for k, t in enumerate(ticks):
        assert ticks[0] + k - LEAD_FRAMES <= t <= ticks[0] + k


async def test_barge_in_drops_the_rest_of_the_echo() -> None:
    agent, sink = await started(400)
    feed(agent, SILENCE * 5 + voiced(600) + SILENCE * 12)
    before = len(sink.audio)
    agent.barge_in(Heard("echo-1", 100))
    feed(agent, SILENCE * 40)
    assert all(i != "echo-1" for _, i, _ in sink.audio[before:])
    assert agent.barge_ins == [Heard("echo-1", 100)]
    await agent.close()
    assert agent.closed


def test_create_agent_by_mode() -> None:
    settings = Settings(agent="echo")
    assert isinstance(create_agent(settings), EchoAgent)
    assert isinstance(create_agent(Settings(agent="local"), "echo"), EchoAgent)
    assert agent_class("openai").__name__ == "OpenAIRealtimeAgent"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        create_agent(Settings(agent="openai"))
    with pytest.raises(ConfigError, match="RTVOICE_AGENT"):
        agent_class("nope")
