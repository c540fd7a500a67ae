"""End to end, operations wired into live calls: a profile-driven inbound call on the OpenAI Realtime agent
(against the OpenAI emulator) whose model ends the call with the ``end_call`` tool; the call record carries
the profile, the transcript, the outcome, OpenAI usage and both legs' audio; ``calls usage`` reports it.

Real loopback sockets all the way: the simulated Twilio dials the real server (``build_app`` +
``start_server``), whose OpenAI agent talks to the emulator over WebSocket.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from call_fakes import voiced
from e2e_testutil import TOKEN, serving
from rtvoice import records_cli
from rtvoice.audio import read_wav
from rtvoice.call.registry import CallRegistry
from rtvoice.cli import build_parser
from rtvoice.config import Settings
from rtvoice.records import CallRecords
from rtvoice.server.http import RunningServer
from rtvoice.sim.openai_emulator import FunctionCall, OpenAIEmulatorConfig, OpenAIRealtimeEmulator, Reply
from rtvoice.sim.twilio import CallScript, SimulatedTwilio

OUR_NUMBER = "+15550001000"
CALLER = "+15557654321"
TIMEOUT = 60.0

PROFILES = """
default = "fallback"

[numbers]
"+15550001000" = "front-desk"

[profiles.front-desk]
instructions = "You are the front desk of Bella Napoli. The caller is {caller}; this is profile {profile}."
greeting = "Bella Napoli, how can I help?"
agent = "openai"
voice = "cedar"
tools = ["end_call"]

[profiles.front-desk.turn_detection]
max_queued_ms = 400

[profiles.fallback]
instructions = "You are a generic assistant."
"""


@dataclass
class Rig:
    settings: Settings
    server: RunningServer
    registry: CallRegistry
    records: CallRecords
    emu: OpenAIRealtimeEmulator
    port: int


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    script = [
        Reply("Bella Napoli, how can I help?"),
        Reply(
            user_transcript="That is all, thank you, goodbye.",
            function_call=FunctionCall("end_call", '{"reason": "caller said goodbye"}'),
        ),
    ]
    async with (
        OpenAIRealtimeEmulator(script, config=OpenAIEmulatorConfig(ms_per_char=40.0)) as emu,
        serving(
            record=True,
            agent="echo",  # the global agent: the profile switches this number to openai
            openai_api_key="sk-test",
            openai_websocket_base_url=emu.url,
            openai_audio_format="pcmu",
            db_path=str(tmp_path / "calls.sqlite3"),
            profiles_path=str(profiles),
            record_audio_dir=str(tmp_path / "audio"),
            **overrides,
        ) as srv,
    ):
        assert srv.records is not None
        yield Rig(srv.settings, srv.server, srv.registry, srv.records, emu, srv.port)


async def _record(rig: Rig, sid: str) -> dict[str, Any]:
    for _ in range(200):
        await rig.records.flush()
        rec = rig.records.get(sid)
        if rec is not None and rec["ended_at"] is not None and rec["usage"]:
            return rec
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished record for {sid}: {rig.records.get(sid)}")


def _calls(argv: list[str]) -> str:
    args = build_parser("calls").parse_args(["calls", *argv])
    out = io.StringIO()
    assert records_cli.run(args, out) == 0
    return out.getvalue()


async def test_profile_inbound_call_ends_with_the_end_call_tool(rig: Rig) -> None:
    twilio = SimulatedTwilio(f"http://127.0.0.1:{rig.port}", auth_token=TOKEN, speed=2.0)
    script = CallScript().say(voiced(1200), after_bot_silence_ms=500)
    result = await twilio.call(
        script, from_number=CALLER, to_number=OUR_NUMBER, timeout_s=TIMEOUT, max_duration_ms=40_000
    )
    sid = result.call_sid
    # rtvoice closed the stream (end_call), the caller did not hang up and nothing timed out.
    assert result.outcome == "closed_by_server" and result.closed_by == "server", result
    assert result.close_code == 1000
    assert result.bot_audio_bytes > 0  # the greeting played

    # The model got the profile's rendered instructions, voice and the end_call tool definition.
    updates = [e for e in rig.emu.received if e["type"] == "session.update"]
    assert updates, [e["type"] for e in rig.emu.received]
    session = updates[0]["session"]
    assert session["instructions"] == (
        f"You are the front desk of Bella Napoli. The caller is {CALLER}; this is profile front-desk."
    )
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["tool_choice"] == "auto"
    assert [(t["type"], t["name"]) for t in session["tools"]] == [("function", "end_call")]
    assert session["tools"][0]["parameters"]["type"] == "object"
    # The only response rtvoice asked for is the greeting's: the end_call reply came from the server's VAD
    # turn, and no response is requested after end_call (the call just ends; its output item may or may not
    # reach OpenAI before the session closes).
    assert [e["type"] for e in rig.emu.received].count("response.create") == 1
    outputs = [
        e["item"]
        for e in rig.emu.received
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert all(json.loads(o["output"]) == {"ok": True, "ending": True} for o in outputs)

    rec = await _record(rig, sid)
    assert (rec["profile"], rec["agent"], rec["direction"]) == ("front-desk", "openai", "inbound")
    assert (rec["from_number"], rec["to_number"]) == (CALLER, OUR_NUMBER)
    assert rec["outcome"] == "bot_hangup"
    turns = [(t["role"], t["text"]) for t in rec["turns"]]
    assert ("bot", "Bella Napoli, how can I help?") in turns
    assert ("caller", "That is all, thank you, goodbye.") in turns
    assert turns.index(("bot", "Bella Napoli, how can I help?")) < turns.index(
        ("caller", "That is all, thank you, goodbye.")
    )
    # OpenAI response.done usage, summed over the call's two responses.
    openai = rec["usage"]["openai"]
    assert openai["output_audio_tokens"] > 0 and openai["input_text_tokens"] > 0
    assert not [f for f in rec["faults"] if f["fatal"]]

    # Both legs recorded to playable μ-law WAV files.
    audio = Path(rig.settings.record_audio_dir)
    for leg in ("in", "out"):
        samples, rate = read_wav(audio / f"{sid}-{leg}.wav")
        assert rate == 8000 and len(samples) > 8000 * 0.5  # over half a second each way
        assert int(abs(samples.astype("int32")).max()) > 1000  # speech, not silence
    assert rec["recording_in"].endswith(f"{sid}-in.wav") and rec["recording_out"].endswith(f"{sid}-out.wav")

    # python -m rtvoice calls usage / show report it.
    await rig.records.flush()
    db = rig.settings.db_path
    report = json.loads(_calls(["--db", db, "usage", "--json"]))
    row = next(r for r in report if r["profile"] == "front-desk")
    assert row["calls"] == 1
    assert row["openai.output_audio_tokens"] == openai["output_audio_tokens"]
    text = _calls(["--db", db, "usage"])
    assert "front-desk" in text
    shown = _calls(["--db", db, "show", sid])
    assert "bot_hangup" in shown and "front-desk" in shown


@pytest.mark.parametrize("rig", [{"max_call_tokens": 5}], indirect=True)
async def test_usage_limit_ends_the_call_politely(rig: Rig) -> None:
    """A per-call token cap: the greeting's response.done usage passes it, so once the greeting has played
    the call ends (the bot is not cut off mid-sentence) and the record says why."""
    twilio = SimulatedTwilio(f"http://127.0.0.1:{rig.port}", auth_token=TOKEN, speed=2.0)
    result = await twilio.call(
        CallScript(), from_number=CALLER, to_number=OUR_NUMBER, timeout_s=TIMEOUT, max_duration_ms=40_000
    )
    assert result.outcome == "closed_by_server" and result.close_code == 1000, result
    assert result.bot_audio_bytes > 0 and not result.clears  # the greeting played whole
    rec = await _record(rig, result.call_sid)
    assert rec["outcome"] == "bot_hangup"
    assert [(f["kind"], f["message"]) for f in rec["faults"]] == [("usage_limit", "call_tokens")]
    assert sum(rec["usage"]["openai"].values()) >= 5
