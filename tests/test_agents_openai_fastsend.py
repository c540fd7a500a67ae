"""RealtimeLink's direct send (``_send_now``) against the SDK's ``send_raw``: the OpenAI Realtime emulator (real
SDK, real sockets) receives the same client events, in the same order, with the fast path on and off; and the
fast path is really taken for the audio appends."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from agents_vendor_testutil import speak, speech_ulaw, start_agent, wait_until
from rtvoice.agents.base import CallInfo
from rtvoice.agents.openai_realtime import OpenAIRealtimeAgent
from rtvoice.config import Settings
from rtvoice.sim.openai_emulator import OpenAIEmulatorConfig, OpenAIRealtimeEmulator, Reply

CALL = CallInfo(call_sid="CA" + "0" * 32, stream_sid="MZ" + "0" * 32, from_number="+15550001111")


async def _session(
    fast: bool, audio_format: str, monkeypatch: pytest.MonkeyPatch, flush: str = "immediate"
) -> tuple[list[Any], int]:
    monkeypatch.setenv("RTVOICE_FASTPATH", "1" if fast else "0")
    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", flush)
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


@pytest.mark.parametrize("flush", ["immediate", "iteration"])
@pytest.mark.parametrize("audio_format", ["pcmu", "pcm"])
async def test_fast_send_delivers_what_send_raw_does(
    audio_format: str, flush: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_events, n_fast = await _session(True, audio_format, monkeypatch, flush)
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


# --- the per-iteration flush (RealtimeLink._pend / _Flusher) ---------------------------------------------------


def _marker(i: int) -> bytes:
    """One 20 ms μ-law frame that identifies itself (a byte no speech frame of these tests is made of)."""
    return bytes([0x10 + i]) * 160


def _appended(events: list[Any]) -> list[bytes]:
    return [base64.b64decode(e["audio"]) for e in events if e["type"] == "input_audio_buffer.append"]


def _index_of_audio(events: list[Any], audio: bytes) -> int:
    for i, e in enumerate(events):
        if e["type"] == "input_audio_buffer.append" and base64.b64decode(e["audio"]) == audio:
            return i
    raise AssertionError(f"append of {audio[:2]!r}... not received")


@pytest.mark.parametrize("sender_first", [False, True])
async def test_queued_append_leaves_before_cancel_and_truncate(
    sender_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append queued for the end of the iteration is never overtaken by a client event queued after it (a
    barge-in's ``response.cancel`` + ``conversation.item.truncate``); audio pushed after the barge-in follows
    them. ``sender_first``: the sender task was woken before the append was queued, so it runs before the
    iteration's flush and must send the queued append itself, first."""
    from rtvoice.agents.base import Heard

    monkeypatch.setenv("RTVOICE_FASTPATH", "1")
    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", "iteration")
    script = [Reply("Our opening hours are nine to five, every day of the week.", user_transcript="Hours?")]
    async with OpenAIRealtimeEmulator(script, config=OpenAIEmulatorConfig(ms_per_char=40.0, speed=1.0)) as emu:
        settings = Settings(agent="openai", openai_api_key="sk-test", openai_websocket_base_url=emu.url)
        agent, sink = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        try:
            sess = await emu.wait_for_session()
            await speak(agent, speech_ulaw())
            await wait_until(lambda: len(sink.audio()) >= 1600)  # the bot is talking: a response to cancel
            await wait_until(lambda: not agent.core.outbox and not agent.link._pend)
            item_id = sink.of("bot_audio")[0][1]
            assert agent.core.active_response is not None, [e["type"] for e in sess.sent[-5:]]
            link = agent.link
            if sender_first:
                link.kick()
            # one full batch: queued for the iteration's flush, not written yet
            agent.send_audio(_marker(1), memoryview(b""))
            agent.send_audio(_marker(2), memoryview(b""))
            assert link._pend, "the append should wait for the end of the iteration"
            agent.barge_in(Heard(item_id, 100))  # cancel + truncate queued while the append is pending
            agent.send_audio(_marker(3), memoryview(b""))
            agent.send_audio(_marker(4), memoryview(b""))
            await emu.wait_for(lambda: _marker(4) in b"".join(_appended(sess.received)))
            events = sess.received
            a = _index_of_audio(events, _marker(1) + _marker(2))
            types = [e["type"] for e in events]
            cancel = types.index("response.cancel")
            truncate = types.index("conversation.item.truncate")
            b = next(i for i, e in enumerate(events) if e["type"] == "input_audio_buffer.append"
                     and _marker(3) in base64.b64decode(e["audio"]))
            assert a < cancel < truncate < b
            assert b"".join(_appended(events)).endswith(_marker(1) + _marker(2) + _marker(3) + _marker(4))
            assert sess.rejected == []
        finally:
            await agent.close()


async def test_close_with_appends_pending_delivers_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends queued in the iteration the call ends in still reach the vendor, before the close."""
    monkeypatch.setenv("RTVOICE_FASTPATH", "1")
    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", "iteration")
    async with OpenAIRealtimeEmulator([], config=OpenAIEmulatorConfig()) as emu:
        settings = Settings(agent="openai", openai_api_key="sk-test", openai_websocket_base_url=emu.url)
        agent, _sink = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        sess = await emu.wait_for_session()
        await wait_until(lambda: not agent.core.outbox and not agent.link._pend)
        for i in range(4):  # two appends: both wait for the flush
            agent.send_audio(_marker(i), memoryview(b""))
        assert len(agent.link._pend) == 2
        await agent.close()
        await emu.wait_for(lambda: len(_appended(sess.received)) >= 2)
        assert _appended(sess.received)[-2:] == [_marker(0) + _marker(1), _marker(2) + _marker(3)]


async def test_drop_with_appends_pending_reconnects_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vendor socket dies while an append waits for the flush: no exception, no write to the dead socket
    counted as sent, the new session gets ``session.update`` before any audio, and the audio after the
    reconnect arrives complete and in order."""
    monkeypatch.setenv("RTVOICE_FASTPATH", "1")
    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", "iteration")
    async with OpenAIRealtimeEmulator([], config=OpenAIEmulatorConfig()) as emu:
        settings = Settings(agent="openai", openai_api_key="sk-test", openai_websocket_base_url=emu.url)
        agent, sink = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        try:
            await emu.wait_for_session()
            link = agent.link
            await wait_until(lambda: not agent.core.outbox and not link._pend)
            agent.send_audio(_marker(0), memoryview(b""))
            agent.send_audio(_marker(1), memoryview(b""))
            assert link._pend
            sent_before = link.fast_sent
            link._conn._connection.transport.abort()  # the socket dies before the flush runs
            await asyncio.sleep(0)  # the iteration ends: the flush runs
            await asyncio.sleep(0)
            assert link.fast_sent == sent_before  # nothing written to the dead socket
            second = await emu.wait_for_session(2)
            await wait_until(lambda: link.connected and link.reconnects == 1)
            await wait_until(lambda: not agent.core.outbox and not link._pend)
            for i in range(2, 8):
                agent.send_audio(_marker(i), memoryview(b""))
                await asyncio.sleep(0.005)
            await emu.wait_for(lambda: len(_appended(second.received)) >= 3)
            assert second.received[0]["type"] == "session.update"
            assert b"".join(_appended(second.received)) == b"".join(_marker(i) for i in range(2, 8))
            assert second.rejected == []
            assert sink.faults() == [("dropped", False)]
        finally:
            await agent.close()


async def test_burst_waiting_too_long_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The end-of-iteration wait is bounded (``_Flusher.max_wait_ns``): an append queued after the oldest
    queued one has waited longer writes the whole burst then, in order, without waiting for the iteration to
    end."""
    from rtvoice.agents import openai_realtime as ort

    monkeypatch.setenv("RTVOICE_FASTPATH", "1")
    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", "iteration")
    async with OpenAIRealtimeEmulator([], config=OpenAIEmulatorConfig()) as emu:
        settings = Settings(agent="openai", openai_api_key="sk-test", openai_websocket_base_url=emu.url)
        a1, _ = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        a2, _ = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        flusher = ort._flusher(asyncio.get_running_loop())
        try:
            s1, s2 = await emu.wait_for_session(1), await emu.wait_for_session(2)
            await wait_until(lambda: not (a1.core.outbox or a2.core.outbox or a1.link._pend or a2.link._pend))
            flusher.max_wait_ns = 10**9  # within the bound: both wait for the end of the iteration
            for a, base in ((a1, 0), (a2, 2)):
                a.send_audio(_marker(base), memoryview(b""))
                a.send_audio(_marker(base + 1), memoryview(b""))
            assert a1.link._pend and a2.link._pend
            await wait_until(lambda: not (a1.link._pend or a2.link._pend))
            flusher.max_wait_ns = 0  # every append finds the oldest one waited too long
            a1.send_audio(_marker(4), memoryview(b""))
            a1.send_audio(_marker(5), memoryview(b""))
            assert a1.link._pend  # the first of a burst waits
            a2.send_audio(_marker(6), memoryview(b""))
            a2.send_audio(_marker(7), memoryview(b""))
            assert not a1.link._pend and not a2.link._pend  # written at once, both
            await emu.wait_for(lambda: len(_appended(s1.received)) >= 2 and len(_appended(s2.received)) >= 2)
            assert _appended(s1.received) == [_marker(0) + _marker(1), _marker(4) + _marker(5)]
            assert _appended(s2.received) == [_marker(2) + _marker(3), _marker(6) + _marker(7)]
        finally:
            flusher.max_wait_ns = ort._Flusher.MAX_WAIT_NS
            await a1.close()
            await a2.close()


async def test_default_writes_each_append_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default (``RTVOICE_VENDOR_FLUSH`` unset) an append is written during the frame that completes it."""
    monkeypatch.setenv("RTVOICE_FASTPATH", "1")
    monkeypatch.delenv("RTVOICE_VENDOR_FLUSH", raising=False)
    async with OpenAIRealtimeEmulator([], config=OpenAIEmulatorConfig()) as emu:
        settings = Settings(agent="openai", openai_api_key="sk-test", openai_websocket_base_url=emu.url)
        agent, _sink = await start_agent(OpenAIRealtimeAgent(settings), CALL)
        try:
            sess = await emu.wait_for_session()
            await wait_until(lambda: not agent.core.outbox)
            sent = agent.link.fast_sent
            agent.send_audio(_marker(0), memoryview(b""))
            agent.send_audio(_marker(1), memoryview(b""))
            assert agent.link.fast_sent == sent + 1 and not agent.link._pend
            await emu.wait_for(lambda: _marker(0) + _marker(1) in _appended(sess.received))
        finally:
            await agent.close()


def test_unknown_flush_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rtvoice.agents import openai_realtime as ort

    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", "sometimes")
    with pytest.raises(ValueError, match="RTVOICE_VENDOR_FLUSH must be one of immediate, iteration"):
        ort._vendor_flush_mode()


@pytest.mark.parametrize("mode", ["openai", "openai-elevenlabs"])
def test_serve_preflight_refuses_a_bad_flush_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A bad ``RTVOICE_VENDOR_FLUSH`` stops start-up with the variable's name (not every call's link)."""
    from rtvoice.agents.registry import preflight
    from rtvoice.config import ConfigError

    settings = Settings(agent=mode, openai_api_key="sk-test", elevenlabs_api_key="el-test")
    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", "sometimes")
    with pytest.raises(ConfigError, match="RTVOICE_VENDOR_FLUSH"):
        preflight(settings)
    monkeypatch.setenv("RTVOICE_VENDOR_FLUSH", "iteration")
    preflight(settings)
