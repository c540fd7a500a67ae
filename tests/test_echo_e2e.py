"""End to end on loopback: the real server and call, the simulated Twilio with an echoing line, a scripted
agent speaking a long answer. The plain VAD interrupts the bot with its own echo; the echo-aware gate does
not, and still hears the caller barging in."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from e2e_testutil import PlayoutTimeline, stamp_barge_ins
from rtvoice.agents.base import Agent
from rtvoice.bench.quality import bot_answer, speech_onset_ms
from rtvoice.call.registry import CallRegistry
from rtvoice.config import Settings
from rtvoice.routes import build_app
from rtvoice.server.http import start_server
from rtvoice.sim.line import LineConfig, LineModel
from rtvoice.sim.scripted_agent import ScriptedAgent
from rtvoice.sim.twilio import CallScript, SimulatedTwilio

TOKEN = "test-auth-token-0123456789abcdef"
SPEED = 4.0
TIMEOUT = 60.0
FRAME_MS = 20
ANSWER = bot_answer(5.0)


@dataclass
class Rig:
    twilio: SimulatedTwilio
    agents: list[ScriptedAgent]
    #: the call's stream time at each barge-in (e2e_testutil.stamp_barge_ins)
    decided: list[int]


@asynccontextmanager
async def running(policy: str) -> AsyncIterator[Rig]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        twilio_auth_token=TOKEN,
        agent="echo",
        bargein_policy=policy,
        vad_onset_frames=3,
        vad_hangover_frames=15,
    )
    agents: list[ScriptedAgent] = []
    decided: list[int] = []

    def make(s: Settings) -> Agent:
        agent = ScriptedAgent(s, [ANSWER])
        agents.append(agent)
        return stamp_barge_ins(agent, decided)

    registry = CallRegistry(settings, agent_factory=make)
    server = await start_server(build_app(settings, registry), settings, sock=sock)
    try:
        yield Rig(SimulatedTwilio(f"http://127.0.0.1:{port}", auth_token=TOKEN, speed=SPEED), agents, decided)
    finally:
        await registry.shutdown()
        await asyncio.wait_for(server.shutdown(0.0), 20)


def line() -> LineModel:
    return LineModel(LineConfig(echo_delay_ms=180, erl_db=6.0, noise="white", snr_db=25.0, seed=5))


async def test_plain_vad_interrupts_itself_and_echo_aware_gate_does_not() -> None:
    async with running("vad") as rig:
        call = rig.twilio.start_call(CallScript(), line=line(), max_duration_ms=6500)
        result = await call.wait_done(TIMEOUT)
        assert result.clears, "the plain VAD should have taken the bot's echo for the caller"
    async with running("echo-aware") as rig:
        call = rig.twilio.start_call(CallScript(), line=line(), max_duration_ms=6500)
        result = await call.wait_done(TIMEOUT)
        assert result.violations == []
        assert result.clears == []
        assert rig.agents[0].barge_ins == []
        assert result.bot_heard_ms() >= 4500  # the whole answer played (its pauses are silent)


async def test_echo_aware_gate_hears_the_caller_over_the_echo() -> None:
    from rtvoice.bench.quality import _fixture

    caller = _fixture("manager")
    async with running("echo-aware") as rig:
        script = CallScript().say(caller, after_bot_audio_ms=2000)
        call = rig.twilio.start_call(script, line=line(), max_duration_ms=6000)
        timeline = PlayoutTimeline(call.playout)
        decided = rig.decided
        clear = await call.wait_clear(1, TIMEOUT)
        result = await call.wait_done(TIMEOUT)
        said_at = result.said[0][0]
        onset = said_at + speech_onset_ms(caller, 600.0)
        # All in stream time, on the frames the call decided on (not when the clear happened to arrive: that
        # moves with the machine's load). The gate confirms speech within 200 ms of its onset...
        assert len(decided) == 1
        assert 0 <= decided[0] - onset <= 200, (decided, onset)
        # ... the clear goes out with that frame's answer (the simulated Twilio reads it at or after then)...
        assert clear.at_ms >= decided[0] - 20, (clear.at_ms, decided)
        # ... and the agent is told what the caller had heard of the answer by the end of that frame: to within
        # the two frames the protocol leaves open (the call places a mark echo between the end of the frame it
        # arrived after and one frame later; a simulated Twilio that fell behind echoes it at its next frame).
        truth = timeline.played_ms_at(decided[0])
        heard = rig.agents[0].barge_ins[0]
        assert heard is not None and heard.item_id == "answer-1"
        assert abs(heard.audio_end_ms - truth) <= 2 * FRAME_MS, (heard, truth)
