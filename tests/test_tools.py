"""Built-in tools and the tool registry; REST-backed tools run against the simulated Twilio REST API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest

from rtvoice import tools
from rtvoice.audio import ulaw_decode
from rtvoice.config import Settings
from rtvoice.profiles import parse_profiles
from rtvoice.sim.twilio_rest import DialContext, TwilioRestSim
from rtvoice.tools import RestCalls, ToolContext, dtmf_ulaw
from rtvoice.twilio.outbound import place_call

ACCOUNT = "AC" + "b2" * 16
TOKEN = "e" * 32
SID = "CA" + "5" * 32

PROFILES = parse_profiles(
    """
[profiles.desk]
tools = ["end_call", "transfer_call", "send_dtmf"]
transfer_number = "+15550009999"
[profiles.open]
tools = ["transfer_call"]
[profiles.bare]
instructions = "x"
""",
    environ={},
)


class Hangups:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def test_definitions_follow_the_profile() -> None:
    defs = tools.definitions(PROFILES.get("desk"))
    assert [d["name"] for d in defs] == ["end_call", "transfer_call", "send_dtmf"]
    for d in defs:
        assert d["type"] == "function" and d["description"] and d["parameters"]["type"] == "object"
    assert tools.definitions(PROFILES.get("bare")) == []
    assert tools.definitions(None) == []
    with pytest.raises(KeyError, match="unknown tool"):
        tools.definitions(only=["nope"])


async def test_end_call_and_argument_validation() -> None:
    hang = Hangups()
    ctx = ToolContext(SID, hang, profile=PROFILES.get("desk"))
    assert await tools.run("end_call", '{"reason": "caller said bye"}', ctx) == {"ok": True, "ending": True}
    assert await tools.run("end_call", "", ctx) == {"ok": True, "ending": True}
    assert hang.reasons == ["caller said bye", "end_call tool"]
    assert "not valid JSON" in (await tools.run("end_call", "{oops", ctx))["error"]
    assert "unknown field" in (await tools.run("end_call", '{"why": 1}', ctx))["error"]
    assert "expected string" in (await tools.run("end_call", '{"reason": 5}', ctx))["error"]
    assert "missing required 'digits'" in (await tools.run("send_dtmf", "{}", ctx))["error"]
    assert "does not match" in (await tools.run("send_dtmf", '{"digits": "12;rm"}', ctx))["error"]
    assert (await tools.run("rm_rf", "{}", ctx)) == {"error": "unknown tool 'rm_rf'"}
    # A registered tool the profile does not list is refused too.
    bare = ToolContext(SID, hang, profile=PROFILES.get("bare"))
    assert (await tools.run("end_call", "{}", bare)) == {"error": "unknown tool 'end_call'"}
    assert len(hang.reasons) == 2


async def test_custom_tool_decorator() -> None:
    @tools.tool(
        "opening_hours_test",
        "Opening hours for a day.",
        {"type": "object", "properties": {"day": {"type": "string", "enum": ["mon", "sun"]}}, "required": ["day"]},
    )
    async def opening_hours(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {"day": args["day"], "hours": "closed" if args["day"] == "sun" else "9-17", "call": ctx.call_sid}

    @tools.tool("boom_test", "Always fails.")
    async def boom(args: dict[str, Any], ctx: ToolContext) -> str:
        raise RuntimeError("secret internals")

    try:
        ctx = ToolContext(SID, Hangups())
        assert await tools.run("opening_hours_test", {"day": "sun"}, ctx) == {
            "day": "sun",
            "hours": "closed",
            "call": SID,
        }
        assert "expected one of" in (await tools.run("opening_hours_test", {"day": "tue"}, ctx))["error"]
        assert await tools.run("boom_test", {}, ctx) == {"error": "boom_test failed: RuntimeError"}
        with pytest.raises(ValueError, match="already registered"):
            tools.tool("boom_test", "again")(boom)
        with pytest.raises(ValueError, match="type 'object'"):
            tools.tool("bad_schema_test", "x", {"type": "string"})
    finally:
        tools.unregister("opening_hours_test")
        tools.unregister("boom_test")


def _goertzel_power(x: np.ndarray, freq: float, rate: int = 8000) -> float:
    n = np.arange(len(x))
    return float(abs(np.sum(x * np.exp(-2j * np.pi * freq * n / rate))) ** 2)


def test_dtmf_tones_decode_to_the_right_digits() -> None:
    ulaw = dtmf_ulaw("1*9#w0")
    pcm = np.frombuffer(bytes(ulaw_decode(ulaw)), dtype=np.int16).astype(float)
    tone, gap, pause = 800, 640, 4000  # samples
    assert len(pcm) == 5 * (tone + gap) + pause
    lows, highs = (697, 770, 852, 941), (1209, 1336, 1477)
    expected = [(697, 1209), (941, 1209), (852, 1477), (941, 1477)]
    for i, (lo, hi) in enumerate(expected):
        seg = pcm[i * (tone + gap) : i * (tone + gap) + tone]
        assert max(lows, key=lambda f: _goertzel_power(seg, f)) == lo
        assert max(highs, key=lambda f: _goertzel_power(seg, f)) == hi
        assert np.abs(pcm[i * (tone + gap) + tone : (i + 1) * (tone + gap)]).max() < 50  # silent gap
    assert np.abs(pcm[4 * (tone + gap) : 4 * (tone + gap) + pause]).max() < 50  # the 'w' pause
    assert np.abs(pcm).max() < 32000  # no clipping
    with pytest.raises(ValueError):
        dtmf_ulaw("12x")


async def test_send_dtmf_in_band() -> None:
    played: list[bytes] = []
    ctx = ToolContext(SID, Hangups(), play_audio=played.append)
    assert await tools.run("send_dtmf", '{"digits": "42#"}', ctx) == {"ok": True, "sent": "42#", "method": "in-band"}
    assert played == [dtmf_ulaw("42#")]


async def _live_until_hung_up(ctx: DialContext) -> str:
    await ctx.call.hung_up.wait()
    return "ended by REST"


@pytest.fixture
async def live_call() -> AsyncIterator[tuple[TwilioRestSim, Settings, str]]:
    """A call in progress on the simulated Twilio (answered, waiting until it is redirected or hung up)."""
    async with TwilioRestSim(ACCOUNT, TOKEN, dialer=_live_until_hung_up) as sim:
        settings = Settings(
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            twilio_phone_number="+15550001000",
            twilio_api_base_url=sim.base_url,
            public_base_url="https://voice.example.com",
        )
        sid = await place_call(settings, "+15557654321")
        for _ in range(200):
            if sim.calls[sid].status == "in-progress":
                break
            await asyncio.sleep(0.01)
        yield sim, settings, sid


async def test_transfer_call_redirects_with_dial(live_call: tuple[TwilioRestSim, Settings, str]) -> None:
    sim, settings, sid = live_call
    ctx = ToolContext(sid, Hangups(), twilio=RestCalls(settings), profile=PROFILES.get("desk"))
    # The profile pins the transfer number: the model cannot dial elsewhere.
    refused = await tools.run("transfer_call", '{"number": "+19005550000"}', ctx)
    assert "configured transfer number" in refused["error"]
    assert sim.calls[sid].updates == []
    assert await tools.run("transfer_call", "{}", ctx) == {"ok": True, "transferred_to": "+15550009999"}
    call = await sim.wait_done(sid, 30)
    (update,) = call.updates
    root = ElementTree.fromstring(update["Twiml"])
    assert root.findtext("Dial") == "+15550009999" and root.findtext("Say")
    assert call.dial_result == "ended by REST" and call.status == "completed"
    # The call is over: a second transfer is refused by Twilio and reported to the model.
    again = await tools.run("transfer_call", "{}", ctx)
    assert "error" in again


async def test_transfer_without_configured_number(live_call: tuple[TwilioRestSim, Settings, str]) -> None:
    sim, settings, sid = live_call
    ctx = ToolContext(sid, Hangups(), twilio=RestCalls(settings), profile=PROFILES.get("open"))
    assert "no transfer number" in (await tools.run("transfer_call", "{}", ctx))["error"]
    assert await tools.run("transfer_call", '{"number": "+15551112222"}', ctx) == {
        "ok": True,
        "transferred_to": "+15551112222",
    }
    assert ElementTree.fromstring((await sim.wait_done(sid, 30)).updates[0]["Twiml"]).findtext("Dial") == (
        "+15551112222"
    )
    no_rest = ToolContext(sid, Hangups(), profile=PROFILES.get("open"))
    assert "REST credentials" in (await tools.run("transfer_call", '{"number": "+15551112222"}', no_rest))["error"]


async def test_send_dtmf_through_rest(live_call: tuple[TwilioRestSim, Settings, str]) -> None:
    sim, settings, sid = live_call
    ctx = ToolContext(
        sid, Hangups(), twilio=RestCalls(settings), public_base_url=settings.effective_public_base_url
    )
    assert await tools.run("send_dtmf", '{"digits": "1w2"}', ctx) == {"ok": True, "sent": "1w2", "method": "twiml"}
    root = ElementTree.fromstring((await sim.wait_done(sid, 30)).updates[0]["Twiml"])
    play = root.find("Play")
    assert play is not None and play.get("digits") == "1w2"
    assert root.findtext("Redirect") == "https://voice.example.com/incoming-call"
