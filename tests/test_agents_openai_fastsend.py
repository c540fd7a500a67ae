"""RealtimeLink's direct send (``_send_now``) against the SDK's ``send_raw``: the OpenAI Realtime emulator (real
SDK, real sockets) receives the same client events, in the same order, with the fast path on and off; and the
fast path is really taken for the audio appends."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agents_vendor_testutil import speak, speech_ulaw, start_agent, wait_until
from rtvoice.agents.base import CallInfo
from rtvoice.agents.openai_realtime import OpenAIRealtimeAgent
from rtvoice.config import Settings
from rtvoice.sim.openai_emulator import OpenAIEmulatorConfig, OpenAIRealtimeEmulator, Reply

CALL = CallInfo(call_sid="CA" + "0" * 32, stream_sid="MZ" + "0" * 32, from_number="+15550001111")


async def _session(fast: bool, audio_format: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], int]:
    monkeypatch.setenv("RTVOICE_FASTPATH", "1" if fast else "0")
    script = [Reply("Our opening hours are nine to five.", user_transcript="When are you open?")]
    async with OpenAIRealtimeEmulator(script, config=OpenAIEmulatorConfig(ms_per_char=20.0)) as emu:
        settings = Settings(
            agent="openai", openai_api_key="sk-test", openai_websocket_base_url=emu.url,
            openai_audio_format=audio_format,
        )
        agent, sink = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        try:
            sess = await emu.wait_for_session()
            await speak(agent, speech_ulaw())
            await wait_until(lambda: bool(sink.of("bot_audio_done")))
            await wait_until(lambda: agent.usage.responses == 1)
            n_fast = agent.link.fast_sent
            assert sess.rejected == [] and sink.faults() == []
            events = [
                {k: v for k, v in e.items() if k != "event_id"} for e in sess.received
            ]
        finally:
            await agent.close()
    return events, n_fast


@pytest.mark.parametrize("audio_format", ["pcmu", "pcm"])
async def test_fast_send_delivers_what_send_raw_does(audio_format: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_events, n_fast = await _session(True, audio_format, monkeypatch)
    slow_events, n_slow = await _session(False, audio_format, monkeypatch)
    assert n_slow == 0
    appends = [e for e in fast_events if e["type"] == "input_audio_buffer.append"]
    assert n_fast >= len(appends) - 2  # (nearly) every append went the direct way
    # same audio, byte for byte, and the same other events in the same order
    # (decoded per message: the slow path may batch differently when its task wakes late)
    audio = lambda evs: b"".join(  # noqa: E731
        base64.b64decode(e["audio"]) for e in evs if e["type"] == "input_audio_buffer.append"
    )
    others = lambda evs: [e for e in evs if e["type"] != "input_audio_buffer.append"]  # noqa: E731
    assert audio(fast_events) == audio(slow_events)
    assert others(fast_events) == others(slow_events)


# --- each append is written during the frame that completes it ------------------------------------------------


def _marker(i: int) -> bytes:
    """One 20 ms μ-law frame that identifies itself (a byte no speech frame of these tests is made of)."""
    return bytes([0x10 + i]) * 160


def _appended(events: list[Any]) -> list[bytes]:
    return [base64.b64decode(e["audio"]) for e in events if e["type"] == "input_audio_buffer.append"]


async def test_default_writes_each_append_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An append is written during the frame that completes it (not left to the sender task)."""
    monkeypatch.setenv("RTVOICE_FASTPATH", "1")
    async with OpenAIRealtimeEmulator([], config=OpenAIEmulatorConfig()) as emu:
        settings = Settings(agent="openai", openai_api_key="sk-test", openai_websocket_base_url=emu.url)
        agent, _sink = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        try:
            sess = await emu.wait_for_session()
            await wait_until(lambda: not agent.core.outbox)
            sent = agent.link.fast_sent
            agent.send_audio(_marker(0), memoryview(b""))
            agent.send_audio(_marker(1), memoryview(b""))
            assert agent.link.fast_sent == sent + 1
            await emu.wait_for(lambda: _marker(0) + _marker(1) in _appended(sess.received))
        finally:
            await agent.close()
