"""End to end per vendor mode: the real server on loopback, the simulated Twilio, the vendor emulators.

For each mode (``openai`` with ``pcmu`` and ``pcm`` audio, ``openai-elevenlabs``, ``elevenlabs-agent``):

* a turn: the caller asks, the bot answers; the caller heard the bot's audio (byte-identical to what the
  emulator rendered when the path is μ-law pass-through), the call record holds the caller's and the bot's
  text; a second question asked after the bot finished is no barge-in (no clear, no cancel, no truncate);
* a barge-in: the caller speaks 1.5 s into a ~6 s answer; the call decides within 120 ms (stream time) of the
  caller's speech onset, sends ``clear`` with that frame, and the vendor is told what the caller had heard by
  then (OpenAI: ``response.cancel`` + ``conversation.item.truncate`` within ±2 frames of the simulator's heard
  timeline at the deciding frame; OpenAI -> ElevenLabs:
  ``close_context`` + the OpenAI conversation corrected to the heard text; ElevenLabs agent: the emulator's
  ``interruption``).

Timing assertions are in stream time (the simulator's clock, which waits for frames when the machine is
busy). The emulators run in wall time: their configured delays are zero so that stream-time latencies are
rtvoice's own plus the emulated VAD's end-of-turn silence.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents_vendor_testutil import speech_ulaw
from e2e_testutil import TOKEN, PlayoutTimeline, serving, stamp_barge_ins
from rtvoice.agents.vendor_common import Alignment
from rtvoice.records import CallRecords
from rtvoice.sim.elevenlabs_emulator import ElevenLabsConfig, ElevenLabsEmulator
from rtvoice.sim.openai_emulator import OpenAIEmulatorConfig, OpenAIRealtimeEmulator, Reply
from rtvoice.sim.twilio import CallResult, CallScript, SimulatedCall, SimulatedTwilio

SPEED = 3.0  # stream time runs 3x faster than wall time
TIMEOUT = 90.0
MS_PER_CHAR = 60.0
VENDOR_SILENCE_MS = 500  # the emulated server VAD's end-of-turn silence (rtvoice's session.update asks 500)
FRAME = 160
FRAME_MS = 20

MODES = ["openai-pcmu", "openai-pcm", "openai-elevenlabs", "elevenlabs-agent"]

Q1 = "When are you open?"
A1 = "We open at nine."
Q2 = "And on Sunday?"
A2 = "Sunday we are closed."
LONG = (
    "Thank you for calling. Our kitchen opens at noon, the dining room at six, "
    "and we close at eleven every night."
)  # ~6.2 s at 60 ms per character
INTERRUPT = "Wait, one question."
A3 = "Of course."


@dataclass
class Rig:
    mode: str
    twilio: SimulatedTwilio
    records: CallRecords
    oa: OpenAIRealtimeEmulator | None
    el: ElevenLabsEmulator | None
    #: the call's stream time at each barge-in (e2e_testutil.stamp_barge_ins)
    decided: list[int]


@asynccontextmanager
async def rig_for(mode: str, replies: list[Reply], tmp_path: Path) -> AsyncIterator[Rig]:
    settings: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        oa: OpenAIRealtimeEmulator | None = None
        el: ElevenLabsEmulator | None = None
        if mode.startswith("openai"):
            oa = await stack.enter_async_context(
                # audio generated at 2x the stream's playout (as OpenAI does, faster than real time): a long
                # answer is still in progress when the caller barges in, so there is a response to cancel
                OpenAIRealtimeEmulator(
                    replies, config=OpenAIEmulatorConfig(ms_per_char=MS_PER_CHAR, speed=2 * SPEED)
                )
            )
            settings.update(agent="openai", openai_api_key="sk-test", openai_websocket_base_url=oa.url)
            if mode != "openai-elevenlabs":
                settings["openai_audio_format"] = mode.split("-")[1]
        if mode == "openai-elevenlabs":
            # TTS paced at 2x the stream's playout: a long answer is still being generated when the caller
            # barges in (so its context is open and must be closed), while playout never starves.
            el = await stack.enter_async_context(
                ElevenLabsEmulator(config=ElevenLabsConfig(ms_per_char=MS_PER_CHAR, speed=2 * SPEED))
            )
            settings.update(agent="openai-elevenlabs", elevenlabs_api_key="xi-test", elevenlabs_base_url=el.base_url)
        if mode == "elevenlabs-agent":
            el = await stack.enter_async_context(
                ElevenLabsEmulator(replies, config=ElevenLabsConfig(ms_per_char=MS_PER_CHAR, ping_interval_s=None))
            )
            settings.update(
                agent="elevenlabs-agent",
                elevenlabs_agent_id="agent_test",
                elevenlabs_api_key="xi-test",
                elevenlabs_base_url=el.base_url,
            )
        srv = await stack.enter_async_context(
            serving(record=True, db_path=str(tmp_path / "calls.sqlite3"), **settings)
        )
        assert srv.records is not None
        decided: list[int] = []
        make = srv.registry.agent_factory
        srv.registry.agent_factory = lambda s: stamp_barge_ins(make(s), decided)
        twilio = SimulatedTwilio(f"http://127.0.0.1:{srv.port}", auth_token=TOKEN, speed=SPEED)
        yield Rig(mode, twilio, srv.records, oa, el, decided)


# --- what the emulators sent and received ---------------------------------------------------------------


def openai_received(rig: Rig, etype: str) -> list[dict[str, Any]]:
    assert rig.oa is not None
    return [e for e in rig.oa.received if e["type"] == etype]


def rendered_items(rig: Rig) -> list[tuple[str, bytes]]:
    """(item/context id, audio) of every bot answer the emulators rendered, in order; μ-law 8 kHz except in
    the ``openai-pcm`` mode (24 kHz PCM)."""
    out: dict[str, bytearray] = {}
    if rig.mode in ("openai-pcmu", "openai-pcm"):
        assert rig.oa is not None
        for s in rig.oa.sessions:
            for e in s.sent:
                if e["type"] == "response.output_audio.delta":
                    out.setdefault(e["item_id"], bytearray()).extend(base64.b64decode(e["delta"]))
    elif rig.mode == "openai-elevenlabs":
        assert rig.el is not None
        for t in rig.el.tts_sessions:
            for m in t.sent:
                if m.get("audio"):
                    out.setdefault(str(m.get("contextId")), bytearray()).extend(base64.b64decode(m["audio"]))
    else:
        assert rig.el is not None
        for c in rig.el.conversations:
            n = 0
            for m in c.sent:
                if m["type"] == "agent_response":
                    n += 1
                elif m["type"] == "audio":
                    data = base64.b64decode(m["audio_event"]["audio_base_64"])
                    out.setdefault(f"response-{n}", bytearray()).extend(data)
    return [(k, bytes(v)) for k, v in out.items()]


def bytes_per_ms(rig: Rig) -> int:
    return 48 if rig.mode == "openai-pcm" else 8


def assert_heard_verbatim(heard: bytes, audio: bytes, start: int = 0) -> tuple[int, int]:
    """Every 20 ms frame of ``audio`` is in ``heard``, in order, from byte ``start``; returns the positions of
    the first and the last frame. (Frames rather than one run: a late frame on a busy machine is a gap in
    the timeline, not a change of the audio.)"""
    positions: list[int] = []
    pos = start
    for off in range(0, len(audio) - FRAME + 1, FRAME):
        found = heard.find(audio[off : off + FRAME], pos)
        assert found >= 0, f"frame at {off / 8:.0f} ms of the bot's audio was never heard"
        positions.append(found)
        pos = found + FRAME
    assert positions
    return positions[0], positions[-1]


async def finished_record(records: CallRecords, sid: str) -> dict[str, Any]:
    for _ in range(400):
        await records.flush()
        rec = records.get(sid)
        if rec is not None and rec["ended_at"] is not None:
            return rec
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished record for {sid}")


def report(mode: str, **figures: float) -> None:
    # shown with -s (and in the failure output): the figures the closing note asks for
    print(f"[{mode}] " + ", ".join(f"{k}={v:.1f}" for k, v in figures.items()))


# --- a turn ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_turn_and_a_turn_after_the_bot_finished(mode: str, tmp_path: Path) -> None:
    replies = [Reply(A1, user_transcript=Q1), Reply(A2, user_transcript=Q2)]
    async with rig_for(mode, replies, tmp_path) as rig:
        script = (
            CallScript()
            .say(speech_ulaw(Q1), at_ms=500)
            # well after the answer ended (also in the ElevenLabs agent emulator's wall-clock notion of
            # when its agent stops speaking, which does not know the stream runs 3x faster)
            .say(speech_ulaw(Q2), after_bot_silence_ms=2500)
            .hangup(after_bot_silence_ms=1500)
        )
        result: CallResult = await rig.twilio.call(script, timeout_s=TIMEOUT, max_duration_ms=40_000)
        assert result.violations == []
        assert result.outcome != "timeout", result.format_summary()
        assert len(result.said) == 2

        # The caller heard both answers, each after the question it answers, and no clear was ever sent.
        assert result.clears == []
        items = rendered_items(rig)
        assert len(items) == 2, [k for k, _ in items]
        heard = bytes(result.heard)
        if mode == "openai-pcm":
            # 24 kHz PCM resampled to μ-law: the caller heard as much bot audio as was rendered
            for (_, audio), (_, s1) in zip(items, result.said, strict=True):
                ms = len(audio) / bytes_per_ms(rig)
                heard_ms = sum(
                    max(0.0, min(b, s1 + 4000) - max(a, s1)) for a, b in result.bot_segments
                )
                assert heard_ms > 0.7 * ms, (heard_ms, ms)
        else:
            first, _ = assert_heard_verbatim(heard, items[0][1])
            assert first / 8 >= result.said[0][1]
            second, _ = assert_heard_verbatim(heard, items[1][1], first)
            assert second / 8 >= result.said[1][1]

        # End of the caller's speech -> first bot audio at Twilio, less the emulated VAD's end-of-turn
        # silence (the emulators' time to first audio is configured 0): what rtvoice and the loopback add.
        assert result.first_bot_media_received_ms is not None
        gap = result.first_bot_media_received_ms - result.said[0][1]
        report(mode, eos_to_first_bot_media_ms=gap, server_added_ms=gap - VENDOR_SILENCE_MS)

        # Nothing was cut off: no cancel, no truncate, no correction, no interruption.
        if rig.oa is not None:
            assert openai_received(rig, "response.cancel") == []
            assert openai_received(rig, "conversation.item.truncate") == []
            assert openai_received(rig, "conversation.item.delete") == []
        if mode == "elevenlabs-agent":
            assert rig.el is not None and rig.el.conversations[0].interruptions == 0

        # The call record's transcript: caller, bot, caller, bot, with the texts the vendor produced.
        rec = await finished_record(rig.records, result.call_sid)
        turns = [(t["role"], t["text"].strip()) for t in rec["turns"] if t["text"].strip()]
        assert turns == [("caller", Q1), ("bot", A1), ("caller", Q2), ("bot", A2)], turns


# --- a barge-in -----------------------------------------------------------------------------------------


def expected_heard_text(text: str, heard_ms: float) -> str:
    """The words of ``text`` the caller heard ``heard_ms`` into its synthetic audio (characters at
    ``MS_PER_CHAR`` each, cut back to a whole word: rtvoice's rule)."""
    a = Alignment()
    a.add_chunk(
        {
            "chars": list(text),
            "charStartTimesMs": [int(i * MS_PER_CHAR) for i in range(len(text))],
            "charsDurationsMs": [int(MS_PER_CHAR)] * len(text),
        },
        len(text) * MS_PER_CHAR,
    )
    return a.heard_text(heard_ms)


@pytest.mark.parametrize("mode", MODES)
async def test_barge_in_during_a_long_answer(mode: str, tmp_path: Path) -> None:
    replies = [Reply(LONG, user_transcript=Q1), Reply(A3, user_transcript=INTERRUPT)]
    async with rig_for(mode, replies, tmp_path) as rig:
        script = (
            CallScript()
            .say(speech_ulaw(Q1), at_ms=500)
            .say(speech_ulaw(INTERRUPT), after_bot_audio_ms=1500)
            .hangup(after_bot_silence_ms=1500)
        )
        call: SimulatedCall = rig.twilio.start_call(script, max_duration_ms=40_000)
        timeline = PlayoutTimeline(call.playout)
        clear = await call.wait_clear(1, TIMEOUT)
        # What the caller had heard of the bot when the clear arrived: all of it belongs to the long answer
        # (the answer to the interruption cannot start before the caller stops speaking).
        heard_at_clear = call.playout.played_total / 8
        result = await call.wait_done(TIMEOUT)
        assert result.violations == []
        # Stream time, on the frame the call decided on: the reaction, and what the caller had heard by the
        # end of that frame (what the vendor must be told). Not when the clear happened to reach the
        # simulated Twilio: on a busy machine it may play a few more frames first.
        assert len(rig.decided) == 1, rig.decided
        decided = rig.decided[0]
        onset = result.said[1][0]
        reaction = decided - onset
        assert 0 <= reaction <= 120, (onset, decided)
        assert clear.at_ms >= decided - FRAME_MS, (clear, decided)
        heard_ms = timeline.played_ms_at(decided)

        items = rendered_items(rig)
        assert len(items) >= 1
        long_id, long_audio = items[0]
        rendered_ms = len(long_audio) / bytes_per_ms(rig)
        assert heard_at_clear < rendered_ms - 1000  # really cut off, well before its end
        if mode != "openai-pcm":
            # Cross-check against the heard timeline: the long answer's frames up to the clear.
            before_clear = result.heard_until(clear.at_ms)
            start, _ = assert_heard_verbatim(before_clear, long_audio[: int(heard_at_clear) * 8 - FRAME])
            assert abs(start / 8 - result.bot_segments[0][0]) <= 40
            # The playout never ran ahead of the stream clock. (Gaps before the clear are reported, not failed:
            # the emulated vendors pace their audio on the wall clock, so a stalled test process underruns the
            # playout; assert_heard_verbatim already allows for them.)
            gap_ms = clear.at_ms - (start / 8 + heard_at_clear)
            assert gap_ms >= -1, (start, heard_at_clear, clear)
        figures: dict[str, float] = {"onset_to_decision_ms": reaction, "heard_ms": heard_ms}
        if mode != "openai-pcm":
            figures["playout_gap_ms"] = gap_ms

        if mode in ("openai-pcmu", "openai-pcm"):
            cancels = openai_received(rig, "response.cancel")
            truncates = openai_received(rig, "conversation.item.truncate")
            assert len(cancels) == 1, cancels
            assert len(truncates) == 1, truncates
            assert truncates[0]["item_id"] == long_id
            error = truncates[0]["audio_end_ms"] - heard_ms
            figures["truncate_error_ms"] = error
            # within the two frames the protocol leaves open: the call places a mark echo between the end of
            # the frame it arrived after and one frame later, and a simulated Twilio that fell behind echoes
            # it at its next frame
            assert abs(error) <= 2 * FRAME_MS, (truncates[0], heard_ms)
            assert rig.oa is not None and not rig.oa.sessions[0].rejected, rig.oa.sessions[0].rejected
        elif mode == "openai-elevenlabs":
            assert rig.el is not None
            tts = rig.el.tts_sessions[0]
            closes = [m for m in tts.received if m.get("close_context")]
            assert any(m["context_id"] == long_id for m in closes), closes
            assert long_id in tts.closed_contexts
            # the generation was still running: the cut context's audio stops short of the full answer
            assert rendered_ms < len(LONG) * MS_PER_CHAR - 500
            # OpenAI's conversation now holds the words the caller heard instead of the whole answer.
            creates = [
                e["item"]
                for e in openai_received(rig, "conversation.item.create")
                if e["item"].get("role") == "assistant"
            ]
            assert len(openai_received(rig, "conversation.item.delete")) == 1
            assert len(creates) == 1, creates
            said = creates[0]["content"][0]["text"]
            assert LONG.startswith(said) and said
            lo = expected_heard_text(LONG, heard_ms - 2 * FRAME_MS)  # the same two frames as the truncate
            hi = expected_heard_text(LONG, heard_ms + 2 * FRAME_MS)
            assert len(lo) <= len(said) <= len(hi), (said, lo, hi)
            figures["heard_chars"] = len(said)
            assert rig.oa is not None and not rig.oa.sessions[0].rejected, rig.oa.sessions[0].rejected
        else:
            assert rig.el is not None
            assert rig.el.conversations[0].interruptions == 1
        report(mode, **figures)

        # The interruption was answered after the caller stopped, and the record cut the bot's text.
        assert any(seg[0] > result.said[1][1] for seg in result.bot_segments)
        rec = await finished_record(rig.records, result.call_sid)
        bot = [t["text"].strip() for t in rec["turns"] if t["role"] == "bot"]
        assert bot and bot[0] != LONG and LONG.startswith(bot[0]), bot
        assert bot[-1] == A3
