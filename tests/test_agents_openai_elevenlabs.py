"""End to end: OpenAIElevenLabsAgent against the OpenAI Realtime emulator (text output) and the ElevenLabs
multi-stream-input TTS emulator, on loopback with the real SDK and real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from agents_vendor_testutil import RecordingSink, running, speak, speech_ulaw, wait_until
from rtvoice.agents.base import CallInfo, Heard
from rtvoice.agents.openai_elevenlabs import OpenAIElevenLabsAgent
from rtvoice.config import ConfigError, Settings
from rtvoice.sim.elevenlabs_emulator import ElevenLabsConfig, ElevenLabsEmulator
from rtvoice.sim.openai_emulator import OpenAIEmulatorConfig, OpenAIRealtimeEmulator, Reply

CALL = CallInfo(call_sid="CA" + "3" * 32, stream_sid="MZ" + "3" * 32, from_number="+15550001111")
ANSWER = "Our opening hours are nine to five."
MS = 60.0
Emus = tuple[OpenAIRealtimeEmulator, ElevenLabsEmulator]


@pytest.fixture
async def emus() -> AsyncIterator[Emus]:
    oa = OpenAIRealtimeEmulator([Reply(ANSWER, user_transcript="When are you open?")],
                                config=OpenAIEmulatorConfig(ms_per_char=MS))  # fmt: skip
    el = ElevenLabsEmulator(config=ElevenLabsConfig(ms_per_char=MS, api_key="xi-test"))
    async with oa, el:
        yield oa, el


def make_settings(oa: OpenAIRealtimeEmulator, el: ElevenLabsEmulator, **kw: Any) -> Settings:
    return Settings(agent="openai-elevenlabs", openai_api_key="sk-test", openai_websocket_base_url=oa.url,
                    elevenlabs_api_key="xi-test", elevenlabs_base_url=el.base_url, **kw)  # fmt: skip


def started(settings: Settings) -> AbstractAsyncContextManager[tuple[OpenAIElevenLabsAgent, RecordingSink]]:
    return running(OpenAIElevenLabsAgent(settings), CALL)


def test_missing_elevenlabs_key_is_a_clear_startup_error() -> None:
    with pytest.raises(ConfigError, match="ELEVENLABS_API_KEY"):
        Settings(agent="openai-elevenlabs", openai_api_key="k").check_agent_credentials()


async def test_text_turn_spoken_by_elevenlabs(emus: Emus) -> None:
    oa, el = emus
    async with started(make_settings(oa, el)) as (agent, sink):
        upd = await oa.wait_for_event("session.update")
        assert upd["session"]["output_modalities"] == ["text"]
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio_done")))
        assert {c[1] for c in sink.of("bot_audio")} == {"ctx-1"}
        # every character sent (the answer plus the closing space) came back as 60 ms of μ-law
        assert len(sink.audio("ctx-1")) == (len(ANSWER) + 1) * MS * 8
        assert [c[2] for c in sink.of("bot_text") if c[3]] == [ANSWER]
        assert ("caller_text", "When are you open?", True) in sink.calls
        tts = el.tts_sessions[0]
        assert tts.multi and tts.output_format == "ulaw_8000" and tts.query["model_id"] == "eleven_flash_v2_5"
        assert tts.contexts["ctx-1"].text_received == ANSWER + " "
        assert any(m.get("flush") for m in tts.received)
        await el.wait_for(lambda: "ctx-1" in tts.closed_contexts)  # finished context closed (5-context limit)
        assert oa.sessions[-1].rejected == [] and tts.close_code is None and sink.faults() == []
        assert agent.usage.tts_characters == len(ANSWER) + 1
        lat = [round(x * 1000, 1) for x in agent.tts.first_audio_latencies]
        print(f"\nspeech_stopped -> first TTS audio to the call (ms, emulators with no delay): {lat}")


async def test_barge_in_keeps_only_heard_text(emus: Emus) -> None:
    oa, el = emus
    el.config.speed = 2.0  # TTS audio arrives 2x real time: the caller barges in mid-generation
    long = "We open at nine and we close at five, every day of the week except on public holidays."
    oa.script.replies[0] = Reply(long, user_transcript="When are you open?")
    async with started(make_settings(oa, el)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: len(sink.audio("ctx-1")) >= 8 * 1500)
        # the caller heard 1 s: chars 0..16 had started ("We open at nine a"); the half word is dropped
        agent.barge_in(Heard("ctx-1", 1000))
        tts = el.tts_sessions[0]
        await el.wait_for(lambda: "ctx-1" in tts.closed_contexts)
        await oa.wait_for_event("conversation.item.delete")
        created = await oa.wait_for_event("conversation.item.create")
        assert created["item"]["content"] == [{"type": "output_text", "text": "We open at nine"}]
        sess = oa.sessions[-1]
        def corrected_added() -> bool:
            return any(
                e["type"] == "conversation.item.added"
                and e["item"]["role"] == "assistant"
                and (e["item"]["content"] or [{}])[0].get("text") == "We open at nine"
                for e in sess.sent
            )

        await oa.wait_for(corrected_added)
        assert [e for e in sess.received if e["type"] == "conversation.item.truncate"] == []
        assert sess.rejected == [] and tts.close_code is None
        # the corrected item was inserted after the caller's item (the deleted one's predecessor)
        user_items = [k for k, it in sess.items.items() if it.data.get("role") == "user"]
        assert created["previous_item_id"] == user_items[-1]
        n = len(sink.audio())
        await speak(agent, b"", silence_ms=300)
        assert len(sink.audio()) == n  # nothing of the closed context reached the call afterwards


async def test_pcm16_tts_output_resampled(emus: Emus) -> None:
    oa, el = emus
    async with started(make_settings(oa, el, elevenlabs_output_format="pcm_16000")) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio_done")))
        assert el.tts_sessions[0].output_format == "pcm_16000"
        # 16 kHz int16 -> 8 kHz μ-law, exact sample count
        assert len(sink.audio("ctx-1")) == (len(ANSWER) + 1) * MS * 8


async def test_tts_refused_is_fatal(emus: Emus) -> None:
    oa, el = emus
    el.faults.refuse_connections = True
    async with started(make_settings(oa, el)) as (_agent, sink):
        assert sink.faults() == [("connect", True)]


async def test_tts_stall_is_fatal(emus: Emus) -> None:
    oa, el = emus
    el.faults.stall_first_audio = True
    el.config.first_audio_delay_ms = 1.0  # generate in a task so the emulator keeps reading
    async with started(make_settings(oa, el, vendor_first_byte_timeout_s=0.5)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: ("stall", True) in sink.faults())
        assert sink.of("bot_audio") == []


async def test_tts_drop_mid_turn_reported_and_next_turn_reconnects(
    emus: Emus,
) -> None:
    oa, el = emus
    el.faults.drop_after_audio_ms = 500
    oa.script.replies.append(Reply("Yes.", user_transcript="Really?"))
    async with started(make_settings(oa, el)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: ("dropped", False) in sink.faults())
        el.faults.drop_after_audio_ms = None
        await speak(agent, speech_ulaw("really"))
        await wait_until(lambda: len(el.tts_sessions) == 2 and bool(sink.audio("ctx-2")))
        assert all(not fatal for _, fatal in sink.faults())
