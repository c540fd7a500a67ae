"""End to end: OpenAIRealtimeAgent (real openai SDK, real sockets) against the OpenAI Realtime GA emulator."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from agents_vendor_testutil import RecordingSink, running, speak, speech_ulaw, wait_until
from rtvoice.agents.base import CallInfo, Heard
from rtvoice.agents.openai_realtime import OpenAIRealtimeAgent
from rtvoice.config import ConfigError, Settings
from rtvoice.sim import voice
from rtvoice.sim.openai_emulator import (
    OpenAIEmulatorConfig,
    OpenAIRealtimeEmulator,
    Reply,
    encode_from_pcm,
)

CALL = CallInfo(call_sid="CA" + "0" * 32, stream_sid="MZ" + "0" * 32, from_number="+15550001111")
MS_PER_CHAR = 60.0


def make_settings(emu: OpenAIRealtimeEmulator, **kw: Any) -> Settings:
    return Settings(
        agent="openai",
        openai_api_key="sk-test",
        openai_websocket_base_url=emu.url,
        **kw,
    )


@pytest.fixture
async def emu() -> AsyncIterator[OpenAIRealtimeEmulator]:
    script = [
        Reply("Our opening hours are nine to five.", user_transcript="When are you open?"),
        Reply("Goodbye.", user_transcript="Thanks, bye."),
    ]
    async with OpenAIRealtimeEmulator(script, config=OpenAIEmulatorConfig(ms_per_char=MS_PER_CHAR)) as e:
        yield e


def started(settings: Settings, **kw: Any) -> AbstractAsyncContextManager[tuple[OpenAIRealtimeAgent, RecordingSink]]:
    return running(OpenAIRealtimeAgent(settings, **kw), CALL)


def session_events(emu: OpenAIRealtimeEmulator, etype: str, session: int = -1) -> list[dict[str, Any]]:
    return [e for e in emu.sessions[session].received if e["type"] == etype]


async def test_missing_key_is_a_clear_startup_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        Settings(agent="openai").check_agent_credentials()


async def test_pcmu_turn_passthrough_transcripts_usage(emu: OpenAIRealtimeEmulator) -> None:
    async with started(make_settings(emu, instructions="You are a receptionist.")) as (agent, sink):
        sess = await emu.wait_for_session()
        upd = await emu.wait_for_event("session.update")
        assert upd["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert sess.rejected == []  # every event we sent passed the SDK-model validation
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio_done")))
        (item_id,) = {c[1] for c in sink.of("bot_audio")}
        text = "Our opening hours are nine to five."
        # pass-through: the bytes OpenAI rendered reach the call untouched
        assert sink.audio(item_id) == encode_from_pcm(voice.render(text, 8000, MS_PER_CHAR), "pcmu")
        await wait_until(lambda: any(c[3] for c in sink.of("bot_text")))
        assert [c[2] for c in sink.of("bot_text") if c[3]] == [text]
        assert "".join(c[2] for c in sink.of("bot_text") if not c[3]) == text
        assert ("caller_text", "When are you open?", True) in sink.calls
        assert sink.of("speech_started")
        await wait_until(lambda: agent.usage.responses == 1)
        assert agent.usage.output_audio_tokens > 0
        # appends carried the caller's μ-law bytes untouched, batched 2 frames (320 bytes) per message
        appends = session_events(emu, "input_audio_buffer.append")
        assert appends and all(len(e["audio"]) <= 4 * 320 // 3 + 4 for e in appends[:-1])
        assert sess.rejected == [] and sink.faults() == []


async def test_start_during_prepare_shares_one_session(emu: OpenAIRealtimeEmulator) -> None:
    """The Media Stream often starts while the webhook's early connect is still in flight: ``start`` must wait
    for that connection, not open a second one (receiver on one socket, audio sent on the other: dead air)."""
    import asyncio

    from agents_vendor_testutil import RecordingSink

    agent = OpenAIRealtimeAgent(make_settings(emu))
    sink = RecordingSink()
    early = asyncio.create_task(agent.prepare())
    await asyncio.sleep(0)  # prepare is now inside connect, before its socket is open
    try:
        await agent.start(CALL, sink)
        await early
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio_done")))
        assert len(emu.sessions) == 1
    finally:
        await agent.close()


async def test_barge_in_cancel_and_truncate_to_heard(emu: OpenAIRealtimeEmulator) -> None:
    emu.config.speed = 4.0  # stream 4x real time so the response is still active when the caller barges in
    emu.script.replies[0] = Reply("x" * 200, user_transcript="Tell me everything.")  # 12 s of audio
    async with started(make_settings(emu)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: len(sink.audio()) >= 8 * 600)  # 600 ms produced
        item_id = sink.of("bot_audio")[0][1]
        agent.barge_in(Heard(item_id, 420))
        cancel = await emu.wait_for_event("response.cancel")
        trunc = await emu.wait_for_event("conversation.item.truncate")
        assert trunc == {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                         "audio_end_ms": 420}  # fmt: skip
        assert cancel["response_id"].startswith("resp_")
        sess = emu.sessions[-1]
        await emu.wait_for(lambda: any(e["type"] == "conversation.item.truncated" for e in sess.sent))
        assert sess.rejected == []  # the emulator accepted the truncate (within the item's audio)
        assert sess.responses[-1]["status"] == "cancelled"
        assert sess.items[item_id].data["content"][0]["transcript"] == "x" * 7  # 420 ms / 60 ms per char
        n = len(sink.of("bot_audio"))
        await speak(agent, b"", silence_ms=200)
        assert len(sink.of("bot_audio")) == n  # no late audio of the cancelled response reached the call


async def test_barge_in_with_nothing_heard_sends_no_truncate(emu: OpenAIRealtimeEmulator) -> None:
    emu.config.speed = 2.0
    emu.script.replies[0] = Reply("y" * 100, user_transcript="Hi")
    async with started(make_settings(emu)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio")))
        agent.barge_in(None)
        await emu.wait_for_event("response.cancel")
        await speak(agent, b"", silence_ms=300)  # give a stray truncate time to arrive
        assert session_events(emu, "conversation.item.truncate") == []


async def test_greeting_speaks_first(emu: OpenAIRealtimeEmulator) -> None:
    emu.script.replies.insert(0, Reply("Hello, thanks for calling."))
    async with started(make_settings(emu, greeting="Hello, thanks for calling.")) as (_agent, sink):
        await wait_until(lambda: bool(sink.of("bot_audio_done")))
        assert session_events(emu, "response.create")
        assert [c[2] for c in sink.of("bot_text") if c[3]] == ["Hello, thanks for calling."]


async def test_connection_refused_is_a_fatal_fault(emu: OpenAIRealtimeEmulator) -> None:
    emu.faults.refuse_connections = True
    async with started(make_settings(emu)) as (_agent, sink):
        assert sink.faults() == [("connect", True)]


async def test_error_event_reported(emu: OpenAIRealtimeEmulator) -> None:
    async with started(make_settings(emu)) as (_agent, sink):
        await emu.wait_for_session()
        await emu.wait_for_event("session.update")
        await emu.inject_error()
        await wait_until(lambda: bool(sink.faults()))
        assert sink.faults() == [("error_event", False)]
        await emu.inject_error("Incorrect API key provided", "invalid_api_key", "invalid_request_error")
        await wait_until(lambda: len(sink.faults()) == 2)
        assert sink.faults()[1] == ("error_event", True)


async def test_stalled_first_audio_retries_then_fatal(emu: OpenAIRealtimeEmulator) -> None:
    emu.faults.stall_first_audio = True
    async with started(make_settings(emu, vendor_first_byte_timeout_s=0.5)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: ("stall", True) in sink.faults(), timeout=10)
        assert sink.faults() == [("stall", False), ("stall", True)]
        assert len(session_events(emu, "response.create")) == 1  # the retry
        assert sink.of("bot_audio") == []


async def test_failed_response_reported(emu: OpenAIRealtimeEmulator) -> None:
    emu.faults.fail_responses = True
    async with started(make_settings(emu)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.faults()))
        assert sink.faults()[0] == ("response_failed", False)


async def test_mid_call_drop_reconnects_with_context(emu: OpenAIRealtimeEmulator) -> None:
    async with started(make_settings(emu)) as (agent, sink):
        await speak(agent, speech_ulaw())
        await wait_until(lambda: any(c[3] for c in sink.of("bot_text")))
        await wait_until(lambda: agent.usage.responses == 1)
        await emu.drop()
        second = await emu.wait_for_session(2)
        await emu.wait_for_event("session.update", session=1)
        creates = lambda: [e["item"] for e in second.received if e["type"] == "conversation.item.create"]  # noqa: E731
        await emu.wait_for(lambda: len(creates()) == 2)
        items = creates()
        assert items[0]["role"] == "user" and items[0]["content"][0]["text"] == "When are you open?"
        assert items[1]["role"] == "assistant"
        assert items[1]["content"][0]["text"] == "Our opening hours are nine to five."
        assert second.rejected == []
        assert sink.faults() == [("dropped", False)]
        # the call goes on in the new session
        await speak(agent, speech_ulaw("okay thank you"))
        await wait_until(lambda: len([c for c in sink.of("bot_text") if c[3]]) == 2)
        assert len({c[1] for c in sink.of("bot_audio")}) == 2


async def test_session_limit_reconnects(emu: OpenAIRealtimeEmulator) -> None:
    emu.faults.max_session_s = 0.5
    async with started(make_settings(emu)) as (agent, sink):
        try:
            await emu.wait_for_session(2, timeout=10)
            await wait_until(lambda: agent.link.reconnects >= 1)
            assert sink.faults()[0] == ("session_limit", False)
            assert all(not fatal for _, fatal in sink.faults())
        finally:
            emu.faults.max_session_s = None  # no reconnect while the agent closes


async def test_drop_without_reconnect_is_fatal(emu: OpenAIRealtimeEmulator) -> None:
    async with started(make_settings(emu)) as (_agent, sink):
        await emu.wait_for_session()
        emu.faults.refuse_connections = True
        await emu.drop()
        await wait_until(lambda: ("dropped", True) in sink.faults())
        assert sink.faults() == [("dropped", False), ("dropped", True)]


async def test_server_added_latency(emu: OpenAIRealtimeEmulator) -> None:
    """speech_stopped received -> first bot audio handed to the call, minus the emulator's configured
    delay.
    """
    emu.config.first_audio_delay_ms = 50.0
    emu.script = type(emu.script)([Reply("Yes.", user_transcript="a")], default="Yes.")
    async with started(make_settings(emu)) as (agent, sink):
        for i in range(5):
            await speak(agent, speech_ulaw("hello there"))
            await wait_until(lambda i=i: len(sink.of("bot_audio_done")) == i + 1)
        lat = [x * 1000 - 50.0 for x in agent.core.first_output_latencies]
        assert len(lat) == 5
        print(f"\nserver-added first-audio latency (ms, excl. 50 ms emulator delay): "
              f"median {statistics.median(lat):.1f} min {min(lat):.1f} max {max(lat):.1f}")  # fmt: skip


async def test_close_during_the_early_connect_leaves_nothing_running(emu: OpenAIRealtimeEmulator) -> None:
    """The caller hangs up while the webhook-time ``prepare`` is still opening the session: the connection that
    completes after ``close()`` is closed at once; no tasks, no watchdog subscription, no socket outlive it."""
    import asyncio

    from rtvoice.agents.ticker import ticker_for

    agent = OpenAIRealtimeAgent(make_settings(emu))
    before = len(ticker_for())
    prepare = asyncio.create_task(agent.prepare())
    await asyncio.sleep(0)  # the handshake is under way
    await agent.close()
    await prepare
    link = agent.link
    assert link._conn is None and not link.connected
    assert link._tasks.receiver is None and link._tasks.sender is None
    assert len(ticker_for()) == before
    await wait_until(lambda: all(s.closed.is_set() for s in emu.sessions))  # the emulator saw it close


async def test_vendor_message_processing_is_reported_to_a_tap(emu: OpenAIRealtimeEmulator) -> None:
    """``metrics.VENDOR_MESSAGES``: with a tap set (the load probe's), every vendor message the link handles
    reports its processing time, the audio deltas that become the caller's bot audio included."""
    from rtvoice import metrics

    times: list[int] = []
    old = metrics.VENDOR_MESSAGES.tap
    metrics.VENDOR_MESSAGES.tap = times.append
    try:
        async with started(make_settings(emu)) as (agent, sink):
            await speak(agent, speech_ulaw("hello there"))
            await wait_until(lambda: bool(sink.of("bot_audio_done")))
            deltas = len([e for e in emu.sessions[-1].sent if e["type"] == "response.output_audio.delta"])
    finally:
        metrics.VENDOR_MESSAGES.tap = old
    assert deltas > 0 and len(times) >= deltas  # every message handled, deltas included
    assert all(t > 0 for t in times)


async def test_pcm24_path_through_the_compiled_resampler(emu: OpenAIRealtimeEmulator) -> None:
    from rtvoice.audio import Resampler, ulaw_encode

    async with started(make_settings(emu, openai_audio_format="pcm")) as (agent, sink):
        upd = await emu.wait_for_event("session.update")
        assert upd["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
        await speak(agent, speech_ulaw())
        await wait_until(lambda: bool(sink.of("bot_audio_done")))
        text = "Our opening hours are nine to five."
        # 24 kHz from OpenAI -> 8 kHz μ-law: identical to one-shot resampling + encoding of the same audio
        pcm24 = voice.render(text, 24000, MS_PER_CHAR)
        expected = bytes(ulaw_encode(Resampler(24000, 8000).process(pcm24)))
        assert sink.audio() == expected
        appends = session_events(emu, "input_audio_buffer.append")
        import base64

        assert sum(len(base64.b64decode(e["audio"])) for e in appends) % 960 == 0  # 24 kHz int16 frames
        assert ("caller_text", "When are you open?", True) in sink.calls  # the emulator VAD heard it
        assert emu.sessions[-1].rejected == [] and sink.faults() == []
