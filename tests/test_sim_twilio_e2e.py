"""The simulated Twilio against the real rtvoice server (in-process, loopback, echo agent)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rtvoice.config import Settings
from rtvoice.routes import build_app
from rtvoice.server.http import start_server
from rtvoice.server.limits import ServerLimits
from rtvoice.sim.twilio import CallScript, Faults, SimulatedTwilio

TOKEN = "e2e-auth-token"
TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def rtvoice(**overrides: object) -> AsyncIterator[SimulatedTwilio]:
    port = _free_port()
    settings = Settings(agent="echo", twilio_auth_token=TOKEN, port=port, echo_delay_ms=200).with_overrides(
        **overrides
    )
    srv = await start_server(build_app(settings), settings, "127.0.0.1", port, limits=ServerLimits())
    try:
        yield SimulatedTwilio(f"http://127.0.0.1:{port}", auth_token=TOKEN, speed=4.0)
    finally:
        await srv.shutdown(0.0)


async def test_echo_call_caller_hears_its_own_words() -> None:
    words = bytes((0x10 + (i * 13) % 0x60) for i in range(1600))  # 200 ms, loud, no silence code
    async with rtvoice() as sim:
        script = CallScript().say(words, at_ms=300).hangup(after_bot_silence_ms=600)
        result = await sim.call(script, max_duration_ms=10_000, timeout_s=TIMEOUT)
    assert result.outcome == "completed", result.format_summary()
    assert result.violations == []
    assert result.twiml is not None and set(result.twiml.parameters) >= {"token", "from", "to"}
    assert result.first_bot_audio_ms is not None and result.first_bot_audio_ms >= 300 + 200
    assert words in bytes(result.heard).replace(b"\xff", b"")
    assert result.marks and all(m.echoed_ms is not None for m in result.marks)


async def test_forged_signatures_and_replayed_token_are_refused() -> None:
    async with rtvoice() as sim:
        forged = await sim.call(faults=Faults(webhook_signature="forged"), timeout_s=TIMEOUT)
        ws_forged = await sim.call(faults=Faults(ws_signature="forged"), timeout_s=TIMEOUT)
        first = await sim.call(CallScript().hangup(at_ms=200), timeout_s=TIMEOUT)
        assert first.twiml is not None
        replay = Faults(parameters={"token": first.twiml.parameters["token"]})
        replayed = await sim.call(
            CallScript().hangup(at_ms=5000), call_sid=first.call_sid, faults=replay, timeout_s=TIMEOUT
        )
        missing = await sim.call(
            CallScript().hangup(at_ms=5000), faults=Faults(drop_parameters=("token",)), timeout_s=TIMEOUT
        )
    assert forged.outcome == "webhook_refused_403"
    assert ws_forged.outcome == "ws_refused_403"
    assert first.outcome == "completed", first.format_summary()
    assert (replayed.outcome, replayed.close_code) == ("closed_by_server", 1008), replayed.format_summary()
    assert (missing.outcome, missing.close_code) == ("closed_by_server", 1008), missing.format_summary()
