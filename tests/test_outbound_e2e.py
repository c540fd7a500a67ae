"""End to end, outbound: the twilio SDK creates a call on the simulated Twilio REST API, which dials rtvoice
like Twilio (signed webhook with Direction=outbound-api, then the Media Stream with the simulated caller);
the echo agent answers; the call leaves a record in SQLite; a REST hang-up ends a live call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from call_fakes import voiced
from e2e_testutil import TOKEN, serving
from rtvoice.agents.echo import EchoAgent
from rtvoice.call.registry import CallRegistry
from rtvoice.config import Settings
from rtvoice.records import CallRecords
from rtvoice.server.http import RunningServer
from rtvoice.sim.twilio import CallScript
from rtvoice.sim.twilio_rest import SimCall, TwilioRestSim, media_stream_dialer
from rtvoice.twilio.outbound import hang_up, place_call

ACCOUNT = "AC" + "c3" * 16
OUR_NUMBER = "+15550001000"
CALLEE = "+15557654321"
SPEED = 5.0
TIMEOUT = 60.0


@dataclass
class Rig:
    settings: Settings
    server: RunningServer
    registry: CallRegistry
    records: CallRecords
    sim: TwilioRestSim
    scripts: dict[str, CallScript]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    scripts: dict[str, CallScript] = {}

    def script_for(call: SimCall) -> CallScript:
        # The script is chosen by the callee's number (set per test in rig.scripts).
        return scripts.get(call.to, CallScript())

    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        '[profiles.sales]\ninstructions = "Sales call to {caller}."\nagent = "echo"\n'
        "[profiles.sales.turn_detection]\nmax_queued_ms = 300\n"
    )
    sim = TwilioRestSim(ACCOUNT, TOKEN, dialer=media_stream_dialer(script=script_for, speed=SPEED))
    await sim.start()
    async with serving(
        EchoAgent,
        record=True,
        twilio_account_sid=ACCOUNT,
        twilio_phone_number=OUR_NUMBER,
        twilio_api_base_url=sim.base_url,
        agent="echo",
        echo_delay_ms=300,
        db_path=str(tmp_path / "calls.sqlite3"),
        profiles_path=str(profiles),
    ) as srv:
        assert srv.records is not None
        try:
            yield Rig(srv.settings, srv.server, srv.registry, srv.records, sim, scripts)
        finally:
            await sim.close()


async def _record(rig: Rig, sid: str) -> dict[str, Any]:
    """The call's record once rtvoice has finished it (the session ends just after the caller hangs up)."""
    for _ in range(200):
        await rig.records.flush()
        rec = rig.records.get(sid)
        if rec is not None and rec["ended_at"] is not None:
            return rec
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished record for {sid}: {rig.records.get(sid)}")


async def test_outbound_call_end_to_end(rig: Rig) -> None:
    rig.scripts[CALLEE] = CallScript().say(voiced(1200)).hangup(after_bot_silence_ms=600)
    sid = await place_call(rig.settings, CALLEE, profile="sales", agent="echo")
    call = await rig.sim.wait_done(sid, TIMEOUT)
    result = call.dial_result
    assert call.dial_error is None and result is not None
    assert result.call_sid == sid and result.webhook_status == 200
    assert result.outcome == "completed"
    assert result.bot_heard_ms() > 500  # the callee heard the echo agent
    assert [(event, status) for event, _, status in call.callbacks] == [
        ("initiated", 204),
        ("ringing", 204),
        ("answered", 204),
        ("completed", 204),
    ]
    rec = await _record(rig, sid)
    assert rec["direction"] == "outbound-api"
    assert (rec["from_number"], rec["to_number"], rec["agent"]) == (OUR_NUMBER, CALLEE, "echo")
    assert rec["profile"] == "sales"  # from the signed ?profile= of the webhook URL place_call gave Twilio
    assert rec["account_sid"] == ACCOUNT and rec["stream_sid"].startswith("MZ")
    assert rec["outcome"] == "completed" and rec["minutes"] is not None


async def test_rest_hang_up_ends_a_live_outbound_call(rig: Rig) -> None:
    rig.scripts[CALLEE] = CallScript().say(voiced(30_000))  # talks until hung up
    sid = await place_call(rig.settings, CALLEE)
    for _ in range(400):
        if rig.registry.active_calls:
            break
        await asyncio.sleep(0.025)
    assert rig.registry.active_calls == 1
    assert await hang_up(rig.settings, sid) is True
    call = await rig.sim.wait_done(sid, TIMEOUT)
    assert call.updates == [{"Status": "completed"}] and call.status == "completed"
    assert call.dial_result.outcome == "completed"
    rec = await _record(rig, sid)
    assert rec["outcome"] == "completed" and rec["direction"] == "outbound-api"
    assert rig.registry.active_calls == 0
