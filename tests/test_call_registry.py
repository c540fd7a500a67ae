"""CallRegistry: agents prepared at webhook time, handed to the stream, expired when unused; the duplicate
stream rule (the newer stream replaces the older)."""

from __future__ import annotations

import asyncio

from call_fakes import RecordingAgent
from rtvoice.call.registry import CallRegistry
from rtvoice.config import Settings

SETTINGS = Settings(twilio_auth_token="secret-token")


class PreparingAgent(RecordingAgent):
    def __init__(self) -> None:
        super().__init__()
        self.prepared = asyncio.Event()

    async def prepare(self) -> None:
        self.prepared.set()


class Stream:
    def __init__(self) -> None:
        self.replaced = False
        self.shut = False

    def replace(self) -> None:
        self.replaced = True

    async def shutdown(self) -> None:
        self.shut = True


async def test_prepare_opens_the_agent_early_and_take_hands_it_over() -> None:
    made: list[PreparingAgent] = []
    reg = CallRegistry(SETTINGS, agent_factory=lambda s: made.append(PreparingAgent()) or made[-1])
    reg.prepare("CA1", "+1555", "+1666", "inbound")
    await asyncio.wait_for(made[0].prepared.wait(), 5)  # prepare() ran at webhook time
    assert reg.take_prepared("CA1") is made[0]
    assert reg.take_prepared("CA1") is None  # taken once
    assert not made[0].closed
    await reg.shutdown()


async def test_unused_prepared_agent_is_closed_after_the_ttl() -> None:
    made: list[PreparingAgent] = []
    reg = CallRegistry(SETTINGS, agent_factory=lambda s: made.append(PreparingAgent()) or made[-1],
                       prepared_ttl_s=0.05)
    reg.prepare("CA2", "", "", "inbound")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if made[0].closed:
            break
    assert made[0].closed
    assert reg.take_prepared("CA2") is None


async def test_call_ending_before_the_stream_frees_the_prepared_agent() -> None:
    made: list[PreparingAgent] = []
    reg = CallRegistry(SETTINGS, agent_factory=lambda s: made.append(PreparingAgent()) or made[-1])
    reg.prepare("CA3", "", "", "inbound")
    reg.call_status("CA3", "no-answer", {"CallStatus": "no-answer"})
    await reg.drain()
    assert made[0].closed
    assert reg.status_of("CA3") is not None and reg.status_of("CA3").status == "no-answer"  # type: ignore[union-attr]


async def test_newer_stream_replaces_the_older_one() -> None:
    reg = CallRegistry(SETTINGS, agent_factory=lambda s: RecordingAgent())
    first, second = Stream(), Stream()
    reg.stream_started("CA4", first)
    assert reg.active_calls == 1
    reg.stream_started("CA4", second)
    assert first.replaced and not second.replaced
    assert reg.active_calls == 1
    reg.stream_ended("CA4", first)  # the old stream's late end does not remove the new one
    assert reg.active_calls == 1
    reg.stream_ended("CA4", second)
    assert reg.active_calls == 0


async def test_shutdown_closes_prepared_agents_and_streams() -> None:
    made: list[PreparingAgent] = []
    reg = CallRegistry(SETTINGS, agent_factory=lambda s: made.append(PreparingAgent()) or made[-1])
    reg.prepare("CA5", "", "", "inbound")
    stream = Stream()
    reg.stream_started("CA6", stream)
    await reg.shutdown()
    assert made[0].closed and stream.shut
    reg.prepare("CA7", "", "", "inbound")  # refused once closed
    assert reg.prepared_count == 0
