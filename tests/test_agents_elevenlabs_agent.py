"""End to end: ElevenLabsAgent (ConvAI, real sockets) against the ElevenLabs emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from agents_vendor_testutil import RecordingSink, running, speak, speech_ulaw, wait_until
from rtvoice.agents.base import CallInfo
from rtvoice.agents.elevenlabs_agent import ElevenLabsAgent
from rtvoice.audio import ulaw_encode
from rtvoice.config import Settings
from rtvoice.sim import voice
from rtvoice.sim.elevenlabs_emulator import ElevenLabsConfig, ElevenLabsEmulator, Reply

CALL = CallInfo(call_sid="CA" + "2" * 32, stream_sid="MZ" + "2" * 32, from_number="+15550001111",
                to_number="+15559998888")  # fmt: skip
ANSWER = "We are open from nine to five."


@pytest.fixture
async def emu() -> AsyncIterator[ElevenLabsEmulator]:
    cfg = ElevenLabsConfig(ms_per_char=60.0, ping_interval_s=0.1)
    async with ElevenLabsEmulator([Reply(ANSWER, user_transcript="When are you open?")], config=cfg) as e:
        yield e


def make_settings(emu: ElevenLabsEmulator, **kw: Any) -> Settings:
    return Settings(agent="elevenlabs-agent", elevenlabs_agent_id="agent_test", elevenlabs_api_key="xi-test",
                    elevenlabs_base_url=emu.base_url, **kw)  # fmt: skip


def started(settings: Settings) -> AbstractAsyncContextManager[tuple[ElevenLabsAgent, RecordingSink]]:
    return running(ElevenLabsAgent(settings), CALL)


async def test_turn_ulaw_passthrough_variables_pings(emu: ElevenLabsEmulator) -> None:
    async with started(make_settings(emu)) as (agent, sink):
        await emu.wait_for(lambda: bool(emu.conversations) and bool(emu.conversations[0].dynamic_variables))
        conv = emu.conversations[0]
        assert conv.dynamic_variables == {"caller_number": "+15550001111", "called_number": "+15559998888",
                                          "call_sid": CALL.call_sid}  # fmt: skip
        await wait_until(lambda: agent.core.input_format == "ulaw_8000")
        await speak(agent, speech_ulaw())
        await wait_until(lambda: sink.of("bot_audio") and len(sink.audio()) >= len(ANSWER) * 60 * 8)
        (item,) = {c[1] for c in sink.of("bot_audio")}
        assert item.startswith("el-")
        assert sink.audio() == ulaw_encode(voice.render(ANSWER, 8000, 60.0))  # untouched μ-law
        assert ("caller_text", "When are you open?", True) in sink.calls
        assert ("bot_text", item, ANSWER, True) in sink.calls
        # the caller's μ-law reached the agent untouched
        sent = b"".join(__import__("base64").b64decode(m["user_audio_chunk"]) for m in conv.received
                        if "user_audio_chunk" in m)  # fmt: skip
        assert sent.startswith(speech_ulaw()[:1600])
        await wait_until(lambda: len(conv.pongs) >= 2)  # every ping answered with its event_id
        assert conv.close_code is None and sink.faults() == []


async def test_greeting_and_prompt_overrides(emu: ElevenLabsEmulator) -> None:
    settings = make_settings(emu, greeting="Hello {{caller_number}}!", instructions="Be Ada.")
    async with started(settings) as (_agent, sink):
        await wait_until(lambda: any(c[3] for c in sink.of("bot_text")))
        conv = emu.conversations[0]
        assert conv.overrides == {"agent": {"prompt": {"prompt": "Be Ada."},
                                            "first_message": "Hello {{caller_number}}!"}}  # fmt: skip
        assert [c[2] for c in sink.of("bot_text")] == ["Hello +15550001111!"]


async def test_pcm16_formats_are_transcoded(emu: ElevenLabsEmulator) -> None:
    from rtvoice.audio import Resampler, ulaw_encode

    emu.config.agent_output_audio_format = "pcm_16000"
    emu.config.user_input_audio_format = "pcm_16000"
    async with started(make_settings(emu)) as (agent, sink):
        await wait_until(lambda: agent.core.input_format == "pcm_16000")
        await speak(agent, speech_ulaw())
        await wait_until(lambda: len(sink.audio()) >= len(ANSWER) * 60 * 8)
        pcm16 = voice.render(ANSWER, 16000, 60.0)
        assert sink.audio() == bytes(ulaw_encode(Resampler(16000, 8000).process(pcm16)))
        assert ("caller_text", "When are you open?", True) in sink.calls  # its VAD heard our 16 kHz audio


async def test_interruption_clears_and_drops_old_audio(emu: ElevenLabsEmulator) -> None:
    emu.config.speed = 1.0  # real-time paced agent audio, so the caller can talk over it
    emu.script.replies[0] = Reply("z" * 100, user_transcript="Tell me more.")
    async with started(make_settings(emu)) as (agent, sink):
        await wait_until(lambda: agent.core.input_format == "ulaw_8000")
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio")))
        await speak(agent, speech_ulaw("stop please"), silence_ms=100, pace_s=0.02)
        await wait_until(lambda: bool(sink.of("interrupt")))
        conv = emu.conversations[0]
        assert conv.interruptions == 1
        n = len(sink.audio())
        assert n < 100 * 60 * 8  # the rest of the answer never reached the call
        assert agent.core.last_interrupt_id >= 1


async def test_private_agent_through_signed_url(emu: ElevenLabsEmulator) -> None:
    emu.config.private_agent = True
    async with started(make_settings(emu, elevenlabs_signed_url=True)) as (agent, sink):
        await wait_until(lambda: agent.core.input_format == "ulaw_8000")
        assert sink.faults() == []
        assert emu.signed  # a signature was issued by the REST endpoint and used


async def test_refused_connection_is_fatal(emu: ElevenLabsEmulator) -> None:
    emu.faults.refuse_connections = True
    async with started(make_settings(emu)) as (_agent, sink):
        assert sink.faults() == [("connect", True)]


async def test_mid_call_drop_is_fatal(emu: ElevenLabsEmulator) -> None:
    emu.faults.drop_after_audio_ms = 400
    async with started(make_settings(emu)) as (agent, sink):
        await wait_until(lambda: agent.core.input_format == "ulaw_8000")
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.faults()))
        assert sink.faults() == [("dropped", True)]


async def test_stalled_agent_is_reported(emu: ElevenLabsEmulator) -> None:
    emu.faults.stall_first_audio = True
    emu.config.first_audio_delay_ms = 1.0  # reply in a task so the session keeps reading
    async with started(make_settings(emu, vendor_first_byte_timeout_s=0.5)) as (agent, sink):
        await wait_until(lambda: agent.core.input_format == "ulaw_8000")
        await speak(agent, speech_ulaw())
        await wait_until(lambda: ("stall", True) in sink.faults())
        assert sink.faults() == [("stall", False), ("stall", True)]


async def test_start_during_prepare_opens_one_conversation(emu: ElevenLabsEmulator) -> None:
    """``start`` arriving while the webhook's early connect is in flight reuses that connection."""
    import asyncio

    agent = ElevenLabsAgent(make_settings(emu))
    sink = RecordingSink()
    early = asyncio.create_task(agent.prepare())
    await asyncio.sleep(0)  # prepare is inside connect, its socket not open yet
    try:
        await agent.start(CALL, sink)
        await early
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio")))
        assert len(emu.conversations) == 1
    finally:
        await agent.close()
