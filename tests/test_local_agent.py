"""The local agent driven directly by a harness: committed caller fixtures in, a recording sink out.

Real webrtcvad, real pocketsphinx and espeak-ng in the real worker pool; no server. The harness plays a polite
caller: it speaks an utterance frame by frame, then feeds silence while the bot answers and while the
answer "plays" (the agent's clock is the inbound frames, like the call's).
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from importlib import resources

import pytest

from rtvoice.agents.base import CallInfo, Heard
from rtvoice.agents.local import pool
from rtvoice.agents.local.agent import LocalAgent
from rtvoice.audio import ulaw_decode
from rtvoice.config import Settings

pytestmark = pytest.mark.slow

FRAME = 160
SILENCE = b"\xff" * FRAME


def fixture(uid: str) -> bytes:
    return resources.files("rtvoice").joinpath(f"fixtures/{uid}.ulaw").read_bytes()


class RecordingSink:
    def __init__(self) -> None:
        self.audio: dict[str, bytearray] = defaultdict(bytearray)
        self.done: list[str] = []
        self.bot: dict[str, str] = {}
        self.caller: list[str] = []
        self.hangup: str | None = None
        self.faults: list[tuple[str, str, bool]] = []

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        assert item_id not in self.done, "audio after done"
        self.audio[item_id] += ulaw

    def bot_audio_done(self, item_id: str) -> None:
        self.done.append(item_id)

    def bot_text(self, item_id: str, text: str, final: bool) -> None:
        self.bot[item_id] = text

    def caller_text(self, text: str, final: bool) -> None:
        self.caller.append(text)

    def speech_started(self) -> None:
        pass

    def interrupt(self) -> None:
        pass

    def hang_up(self, reason: str) -> None:
        self.hangup = reason

    def fault(self, kind: str, message: str, fatal: bool) -> None:
        self.faults.append((kind, message, fatal))


class Caller:
    def __init__(self, agent: LocalAgent, sink: RecordingSink) -> None:
        self.agent = agent
        self.sink = sink

    async def frames(self, data: bytes) -> None:
        for i in range(0, len(data), FRAME):
            frame = data[i : i + FRAME].ljust(FRAME, b"\xff")
            # the call hands over a view of its int16 decode buffer (format "h"), as here
            self.agent.send_audio(frame, memoryview(ulaw_decode(frame)))
            if i % (FRAME * 10) == 0:
                await asyncio.sleep(0)

    async def silence(self, ms: int) -> None:
        await self.frames(SILENCE * (ms // 20))

    async def wait(self, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60.0
        while not cond():
            assert time.monotonic() < deadline, "timed out waiting for the agent"
            assert not self.sink.faults, self.sink.faults
            await asyncio.sleep(0.01)

    async def listen(self) -> str:
        """Wait for the next bot item to finish, then let it 'play' (silence for its duration)."""
        n = len(self.sink.done)
        await self.wait(lambda: len(self.sink.done) > n)
        item = self.sink.done[-1]
        await self.silence(len(self.sink.audio[item]) // 8 + 300)
        return self.sink.bot[item]

    async def say(self, uid: str) -> str:
        await self.frames(fixture(uid))
        await self.silence(600)  # the end-of-turn hangover
        return await self.listen()


@pytest.fixture(scope="module", autouse=True)
def _pool() -> object:
    yield
    pool.shutdown_pool()


@pytest.fixture
async def call() -> AsyncIterator[tuple[LocalAgent, RecordingSink, Caller]]:
    agent = LocalAgent(Settings())
    sink = RecordingSink()
    await agent.prepare()
    await agent.start(CallInfo(call_sid="CA" + "0" * 32, stream_sid="MZ" + "0" * 32), sink)
    yield agent, sink, Caller(agent, sink)
    await agent.close()


def test_manifest_lists_every_fixture() -> None:
    manifest = tomllib.loads(resources.files("rtvoice").joinpath("fixtures/manifest.toml").read_text())
    for u in manifest["utterance"]:
        data = fixture(u["id"])
        assert abs(len(data) // 8 - u["duration_ms"]) <= 1 and u["text"]


async def test_multi_turn_booking_call(call) -> None:  # type: ignore[no-untyped-def]
    agent, sink, caller = call
    greeting = await caller.listen()
    assert greeting.startswith("Hello, thank you for calling")
    assert "We are open" in await caller.say("hours")
    assert sink.caller[-1] == "hi what are your opening hours"
    assert await caller.say("book") == "And what name should I put the booking under?"
    confirm = await caller.say("name")
    assert "under the name Emma" in confirm and "a table for 4 at 7:30 pm" in confirm
    assert (await caller.say("yes")).startswith("Done.")
    assert "Goodbye" in await caller.say("bye")
    assert sink.hangup == "goodbye"
    assert [t.reply_text for t in agent.turns][-1].endswith("Goodbye!")
    for turn in agent.turns:
        assert turn.first_audio_s is not None and turn.first_audio_ms is not None
        assert turn.first_audio_ms >= turn.detected_ms >= turn.speech_end_ms
    assert sink.faults == []
    # every bot item was real speech: about 8 bytes per ms, a whole number of sentences
    assert all(len(sink.audio[i]) > 4000 for i in sink.done)


async def test_barge_in_keeps_only_what_was_heard(call) -> None:  # type: ignore[no-untyped-def]
    agent, sink, caller = call
    await caller.listen()
    await caller.frames(fixture("hours"))
    await caller.silence(600)
    n = len(sink.done)
    await caller.wait(lambda: len(sink.done) > n)
    hours_item = sink.done[-1]
    full = sink.bot[hours_item]
    await caller.silence(1500)  # the caller hears 1.5 s of the long answer, then interrupts
    agent.barge_in(Heard(hours_item, 1500))
    reply = await caller.say("interrupt")
    assert agent.dialog is not None
    bot_turns = [t.text for t in agent.dialog.history if t.role == "bot"]
    heard = bot_turns[1]
    assert heard and full.startswith(heard) and len(heard) < len(full) / 3
    assert reply == "And what name should I put the booking under?"
    assert agent.dialog.slots["party_size"] == 4


async def test_own_echo_is_not_a_turn(call) -> None:  # type: ignore[no-untyped-def]
    agent, sink, caller = call
    n = len(sink.done)
    await caller.wait(lambda: len(sink.done) > n)
    greeting_audio = bytes(sink.audio[sink.done[-1]])
    # the line echoes the greeting back while it plays; the call saw no barge-in
    await caller.frames(greeting_audio)
    await caller.silence(600)
    await asyncio.sleep(0.5)
    assert agent.dropped_as_echo == 1
    assert agent.turns == [] and sink.caller == []


async def test_bad_scenario_fails_prepare(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rtvoice.agents.local.dialog import ScenarioError

    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario]\nname='x'\n")
    agent = LocalAgent(Settings(scenario_path=str(bad)))
    with pytest.raises(ScenarioError, match=r"scenario\.greeting"):
        await agent.prepare()


def test_preflight_reports_a_bad_scenario_at_startup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rtvoice.agents.registry import preflight
    from rtvoice.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario]\nname='x'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: scenario\.greeting"):
        LocalAgent.preflight(Settings(scenario_path=str(bad)))
    with pytest.raises(ConfigError, match="cannot read"):
        preflight(Settings(agent="local", scenario_path=str(tmp_path / "missing.toml")))
    preflight(Settings(agent="local"))  # the bundled scenario is fine


def test_serve_refuses_to_start_with_a_bad_scenario(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from rtvoice.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\n")
    monkeypatch.setenv("RTVOICE_AGENT", "local")
    monkeypatch.setenv("RTVOICE_SCENARIO", str(bad))
    # exits before binding a socket or serving: the error names the file
    assert main(["serve", "--host", "127.0.0.1", "--port", "0"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
