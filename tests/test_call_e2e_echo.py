"""End to end on loopback: the real server and routes, the simulated Twilio, the echo agent.

The caller hears its own words back; marks are echoed; speaking over an echo clears it (with the heard
position reported to the agent within 20 ms of what the simulated caller actually heard); bad tokens are
refused with 1008 while another call keeps streaming.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import pytest

from call_fakes import voiced
from e2e_testutil import TOKEN, PlayoutTimeline, serving, stamp_barge_ins, stamp_bot_audio
from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.agents.echo import EchoAgent
from rtvoice.call.registry import CallRegistry
from rtvoice.call.session import load_apology
from rtvoice.config import Settings
from rtvoice.server.http import RunningServer
from rtvoice.sim.twilio import CallScript, Faults, SimulatedTwilio

SPEED = 5.0  # stream time runs 5x faster than wall time
TIMEOUT = 60.0
FRAME_MS = 20


@dataclass
class Rig:
    settings: Settings
    server: RunningServer
    registry: CallRegistry
    twilio: SimulatedTwilio
    agents: list[Agent]
    #: the call's stream time at each barge-in (e2e_testutil.stamp_barge_ins)
    decided: list[int]
    #: the call's stream time each time the agent handed it bot audio (e2e_testutil.stamp_bot_audio)
    bot_audio_at: list[int]


@asynccontextmanager
async def running(factory: Callable[[Settings], Agent] | None = None) -> AsyncIterator[Rig]:
    """rtvoice's real app (routes, webhook, session) on loopback, and a simulated Twilio pointed at it."""
    agents: list[Agent] = []
    decided: list[int] = []
    bot_audio_at: list[int] = []

    def make(s: Settings) -> Agent:
        agent = factory(s) if factory is not None else EchoAgent(s)
        agents.append(agent)
        return stamp_bot_audio(stamp_barge_ins(agent, decided), bot_audio_at)

    async with serving(make, agent="echo", echo_delay_ms=300, vad_onset_frames=3, vad_hangover_frames=10) as srv:
        twilio = SimulatedTwilio(f"http://127.0.0.1:{srv.port}", auth_token=TOKEN, speed=SPEED)
        yield Rig(srv.settings, srv.server, srv.registry, twilio, agents, decided, bot_audio_at)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running() as r:
        yield r


def gliding_words(ms: int) -> bytes:
    """Voiced speech whose pitch glides 120 -> 200 Hz, so every 20 ms frame is unique (findable in what the
    caller heard)."""
    from rtvoice.audio import ulaw_encode

    n = ms * 8
    t = np.arange(n) / 8000.0
    f0 = 120.0 + 80.0 * t / t[-1]
    phase = 2 * np.pi * np.cumsum(f0) / 8000.0
    sig = sum((1.0 / k) * np.sin(k * phase) for k in range(1, 25))
    sig = sig * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return bytes(ulaw_encode((sig / np.abs(sig).max() * 8000).astype(np.int16)))


async def test_caller_hears_its_own_words_back(rig: Rig) -> None:
    words = gliding_words(800)
    script = CallScript().say(words, at_ms=400).hangup(after_bot_silence_ms=600)
    result = await rig.twilio.call(script, timeout_s=TIMEOUT)
    assert result.violations == []
    assert result.ws_status == 101
    said_start = result.said[0][0]
    first = result.first_bot_audio_ms
    assert first is not None and rig.bot_audio_at
    # The echo starts echo_delay_ms after the caller's first word (pacing adds nothing), on the call's stream
    # clock: the frame in which the agent handed the call its first echo audio (the frame of the word
    # 300 ms later, one frame of rounding). The simulated caller hears it once it arrives: at or after the
    # frame it went out with (how much later depends on the machine's load, so no upper bound here).
    assert abs(rig.bot_audio_at[0] - (said_start + 300)) <= 20, (rig.bot_audio_at[0], said_start)
    assert first >= rig.bot_audio_at[0] - 20, (first, rig.bot_audio_at[0])
    # The caller's words come back unchanged and in order. A busy machine can delay a frame and open a gap of
    # silence in what the caller heard (the simulated Twilio fills an empty playout with μ-law silence,
    # 0xFF): with the silence taken out of both, the words are there, whole, after the first echo.
    heard = bytes(result.heard)[int(first * 8) - 8 :].replace(b"\xff", b"")
    assert words.replace(b"\xff", b"") in heard
    # Marks were sent and echoed as played; none was lost.
    assert result.marks and all(m.echoed_ms is not None and m.played for m in result.marks)
    assert rig.registry.active_calls == 0
    assert rig.agents and isinstance(rig.agents[0], EchoAgent) and rig.agents[0].closed


async def test_speaking_over_the_echo_clears_it_and_reports_what_was_heard(rig: Rig) -> None:
    # The caller says 600 ms of words at 200 ms; their echo plays from ~500 ms to ~1300 ms (+ VAD hangover).
    # At 1100 ms, after the VAD ended the first utterance, the caller speaks again over the echo.
    script = (
        CallScript()
        .say(voiced(600, f0=150.0, seed=1), at_ms=200)
        .say(voiced(600, f0=190.0, seed=4), at_ms=1100)
    )
    call = rig.twilio.start_call(script)
    timeline = PlayoutTimeline(call.playout)
    decided = rig.decided
    clear = await call.wait_clear(1, TIMEOUT)
    said2 = call.result.said[-1][0]
    await call.wait_stream_time(clear.at_ms + 1500, TIMEOUT)
    result = await call.aclose()
    assert result.violations == []
    agent = rig.agents[0]
    assert isinstance(agent, EchoAgent)
    assert len(agent.barge_ins) == 1
    heard = agent.barge_ins[0]
    assert heard is not None and heard.item_id == "echo-1"
    # All in stream time, on the frame the call decided on (not when the clear happened to reach the simulated
    # Twilio: on a busy machine it may play a few more frames first). What the agent was told matches what the
    # simulated caller had heard of echo-1 by the end of that frame (all bot audio so far is echo-1: echo-2
    # cannot start before 300 ms after the second utterance), to within the two frames the protocol leaves
    # open: the call places a mark echo between the end of the frame it arrived after and one frame later,
    # and a simulated Twilio that fell behind echoes it at its next frame.
    assert len(decided) == 1
    truth = timeline.played_ms_at(decided[0])
    assert abs(heard.audio_end_ms - truth) <= 2 * FRAME_MS, (heard, truth)
    # Decided within 120 ms (6 frames, stream time) of the caller's new speech; the clear went out with that
    # frame's answer.
    assert decided[0] - said2 <= 120, (decided, said2)
    assert clear.at_ms >= decided[0] - FRAME_MS
    # Marks the clear returned are discarded, not played (there may be none if no mark followed the audio
    # still queued), and the agent was never told that more than what was heard had played.
    returned = [m for m in result.marks if m.name in clear.marks_returned]
    assert all(m.played is False for m in returned)
    assert all(ms <= heard.audio_end_ms + 20 for item, ms in agent.played.items() if item == "echo-1")
    # The interrupting utterance is echoed in turn.
    assert any(seg[0] > clear.at_ms for seg in result.bot_segments)


async def test_forged_and_replayed_tokens_are_refused_while_another_call_streams(rig: Rig) -> None:
    good = rig.twilio.start_call(CallScript().say(voiced(400), at_ms=200), max_duration_ms=6000)
    forged = await rig.twilio.call(
        CallScript(), faults=Faults(parameters={"token": "CAx.1.abc.def"}), timeout_s=TIMEOUT
    )
    assert forged.close_code == 1008
    missing = await rig.twilio.call(
        CallScript(), faults=Faults(drop_parameters=("token",)), timeout_s=TIMEOUT
    )
    assert missing.close_code == 1008
    await good.wait_first_bot_audio(TIMEOUT)
    result = await good.aclose()
    assert result.violations == []
    assert result.bot_audio_bytes > 0


async def test_bad_upgrade_signature_is_403(rig: Rig) -> None:
    result = await rig.twilio.call(CallScript(), faults=Faults(ws_signature="forged"), timeout_s=TIMEOUT)
    assert result.ws_status == 403


async def test_media_before_start_and_binary_frames_close_1008(rig: Rig) -> None:
    early = await rig.twilio.call(CallScript(), faults=Faults(media_before_start=True), timeout_s=TIMEOUT)
    assert early.close_code == 1008
    binary = await rig.twilio.call(
        CallScript(), faults=Faults(inject=[(200.0, b"\x00\x01")]), max_duration_ms=3000, timeout_s=TIMEOUT
    )
    assert binary.close_code == 1008


class BrokenAgent(Agent):
    """An agent whose vendor is unreachable: start() fails."""

    name = "broken"

    def __init__(self, settings: Settings) -> None:
        self.closed = False

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        raise ConnectionRefusedError("vendor unreachable")

    def send_audio(self, ulaw: bytes, pcm: memoryview) -> None:
        raise AssertionError("a failed agent is never fed audio")

    def barge_in(self, heard: Heard | None) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


async def test_agent_failure_plays_the_apology_then_ends_the_stream() -> None:
    apology = load_apology()
    async with running(BrokenAgent) as r:
        result = await r.twilio.call(CallScript(), max_duration_ms=20_000, timeout_s=TIMEOUT)
        assert result.violations == []
        assert result.close_code == 1000
        if apology:  # the local-agent engineer renders it; without it the stream just ends cleanly
            assert result.bot_audio_bytes == len(apology)
            assert bytes(result.heard).find(apology[: 160 * 5]) >= 0
        assert r.agents[0].closed  # type: ignore[attr-defined]
        assert r.registry.active_calls == 0


async def test_a_second_stream_for_the_same_call_replaces_the_first(rig: Rig) -> None:
    sid = "CA" + "5" * 32
    first = rig.twilio.start_call(CallScript(), call_sid=sid, max_duration_ms=10_000)
    await first.wait_stream_time(300, TIMEOUT)
    second = rig.twilio.start_call(
        CallScript().say(voiced(400), at_ms=200), call_sid=sid, max_duration_ms=10_000
    )
    old = await first.wait_done(TIMEOUT)
    assert old.close_code == 1000 and "replaced" in old.close_reason
    await second.wait_first_bot_audio(TIMEOUT)  # the new stream is the live one and works
    new = await second.aclose()
    assert new.violations == [] and new.bot_audio_bytes > 0
    assert rig.registry.active_calls == 0
