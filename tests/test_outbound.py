"""Outbound calls: the real twilio SDK -> the simulated Twilio REST API -> rtvoice's real webhook on loopback;
``POST /calls`` over real HTTP; hang-up; the ``call`` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
import pytest

from rtvoice.config import ConfigError, Settings
from rtvoice.server.api import App
from rtvoice.server.http import RunningServer, start_server
from rtvoice.sim.twilio_rest import TwilioRestSim
from rtvoice.twilio import outbound, webhook
from rtvoice.twilio.outbound import OutboundError, hang_up, place_call

ACCOUNT = "AC" + "a1" * 16
TOKEN = "f" * 32
OUR_NUMBER = "+15550001000"
CALLEE = "+15557654321"
API_TOKEN = "ops-api-token-123456"
TIMEOUT = 30.0


class StatusLog:
    """The registry hook the webhook calls for every /call-status it accepted."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, str]]] = []

    def call_status(self, call_sid: str, status: str, fields: dict[str, str]) -> None:
        self.events.append((call_sid, status, fields))


@dataclass
class Rig:
    sim: TwilioRestSim
    server: RunningServer
    settings: Settings
    statuses: StatusLog

    @property
    def rtvoice_url(self) -> str:
        return self.settings.effective_public_base_url


async def _rig(
    ring_s: float = 0.0, **overrides: object
) -> tuple[TwilioRestSim, RunningServer, Settings, StatusLog]:
    sim = TwilioRestSim(ACCOUNT, TOKEN, ring_s=ring_s)
    await sim.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    kw: dict[str, object] = dict(
        public_base_url=f"http://127.0.0.1:{port}",
        port=port,
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=TOKEN,
        twilio_phone_number=OUR_NUMBER,
        twilio_api_base_url=sim.base_url,
        api_token=API_TOKEN,
    )
    kw.update(overrides)
    settings = Settings(**kw)  # type: ignore[arg-type]
    statuses = StatusLog()
    app = App()
    webhook.register(app, settings, statuses)
    outbound.register(app, settings, statuses)
    server = await start_server(app, settings, sock=sock)
    return sim, server, settings, statuses


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    sim, server, settings, statuses = await _rig()
    try:
        yield Rig(sim, server, settings, statuses)
    finally:
        await sim.close()
        await server.shutdown(0.0)


async def test_place_call_dials_rtvoice_webhook_like_twilio(rig: Rig) -> None:
    sid = await place_call(rig.settings, CALLEE, "front-desk", agent="echo")
    assert sid.startswith("CA") and len(sid) == 34
    call = await rig.sim.wait_done(sid, TIMEOUT)
    assert (call.to, call.from_, call.status) == (CALLEE, OUR_NUMBER, "completed")
    assert call.url == f"{rig.rtvoice_url}/incoming-call?profile=front-desk&agent=echo"
    assert call.dial_error is None
    # rtvoice's real webhook accepted the signed outbound-api request and answered TwiML opening the stream.
    root = ElementTree.fromstring(call.dial_result)
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == f"ws://127.0.0.1:{rig.settings.port}/media-stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["direction"] == "outbound-api" and params["to"] == CALLEE and params["from"] == OUR_NUMBER
    assert params["token"]
    # Every status callback was signed well enough for rtvoice's validator (204), in Twilio's order.
    assert [(event, status) for event, _, status in call.callbacks] == [
        ("initiated", 204),
        ("ringing", 204),
        ("answered", 204),
        ("completed", 204),
    ]
    assert [status for s, status, _ in rig.statuses.events if s == sid] == [
        "queued",
        "ringing",
        "in-progress",
        "completed",
    ]
    assert rig.statuses.events[-1][2]["CallDuration"] == "0"


async def test_sdk_fetch_and_twiml_calls(rig: Rig) -> None:
    twiml = "<Response><Say>Your table is ready.</Say></Response>"
    sid = await place_call(rig.settings, CALLEE, twiml=twiml)
    call = await rig.sim.wait_done(sid, TIMEOUT)
    assert call.twiml == twiml and call.url is None and call.dial_result is None
    client = outbound.make_client(rig.settings)
    fetched = await asyncio.to_thread(lambda: client.calls(sid).fetch())
    got = (fetched.sid, fetched.status, fetched.direction, fetched.to)
    assert got == (sid, "completed", "outbound-api", CALLEE)
    assert fetched.date_created is not None  # the RFC 2822 dates parse


async def test_hang_up_a_ringing_call_and_an_unknown_call(tmp_path: Path) -> None:
    sim, server, settings, _ = await _rig(ring_s=60.0)
    try:
        sid = await place_call(settings, CALLEE)
        assert await hang_up(settings, sid) is True
        call = await sim.wait_done(sid, TIMEOUT)
        assert call.status == "canceled"
        assert call.updates == [{"Status": "completed"}]
        assert await hang_up(settings, "CA" + "0" * 32) is False  # Twilio's 404: already gone
    finally:
        await sim.close()
        await server.shutdown(0.0)


async def test_twilio_errors_surface_with_codes(rig: Rig) -> None:
    with pytest.raises(OutboundError) as bad_auth:
        await place_call(rig.settings.with_overrides(twilio_auth_token="0" * 32), CALLEE)
    assert (bad_auth.value.status, bad_auth.value.code) == (401, 20003)
    with pytest.raises(OutboundError) as bad_from:
        await place_call(rig.settings.with_overrides(twilio_phone_number="+1"), CALLEE)
    assert (bad_from.value.status, bad_from.value.code) == (400, 21212)
    with pytest.raises(OutboundError, match="cannot reach Twilio"):
        await place_call(rig.settings.with_overrides(twilio_api_base_url="http://127.0.0.1:9"), CALLEE)
    with pytest.raises(ValueError, match=r"E\.164"):
        await place_call(rig.settings, "5551234")
    with pytest.raises(ValueError, match="TWILIO_PHONE_NUMBER"):
        await place_call(rig.settings.with_overrides(twilio_phone_number=""), CALLEE)
    assert rig.sim.calls == {}


async def _post_calls(
    rig: Rig, body: bytes, token: str | None = API_TOKEN
) -> tuple[int, dict[str, object], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.post(f"{rig.rtvoice_url}/calls", data=body, headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.text()), dict(resp.headers)


async def test_post_calls_endpoint(rig: Rig) -> None:
    status, body, _ = await _post_calls(rig, json.dumps({"to": CALLEE, "profile": "sales"}).encode())
    assert status == 201, body
    sid = str(body["call_sid"])
    assert body["to"] == CALLEE and body["profile"] == "sales"
    call = await rig.sim.wait_done(sid, TIMEOUT)
    assert call.url is not None and call.url.endswith("/incoming-call?profile=sales")


@pytest.mark.parametrize(
    ("body", "token", "status", "message"),
    [
        (b'{"to": "+15557654321"}', None, 401, "bearer token"),
        (b'{"to": "+15557654321"}', "wrong-token", 401, "bearer token"),
        (b"{not json", API_TOKEN, 400, "not valid JSON"),
        (b'["+15557654321"]', API_TOKEN, 400, "JSON object"),
        (b'{"to": "555-1234"}', API_TOKEN, 400, "E.164"),
        (b'{"to": "+15557654321", "agent": "skynet"}', API_TOKEN, 400, "agent"),
        (b'{"to": "+15557654321", "profile": "../etc"}', API_TOKEN, 400, "profile"),
        (b'{"to": "+15557654321", "ring": 3}', API_TOKEN, 400, "unknown field"),
        (b'{"to": "+15557654321", "prompt": ""}', API_TOKEN, 400, "prompt"),
        (b"\xff\xfe", API_TOKEN, 400, "not valid JSON"),
    ],
)
async def test_post_calls_rejects_bad_requests(
    rig: Rig, body: bytes, token: str | None, status: int, message: str
) -> None:
    got_status, got, headers = await _post_calls(rig, body, token)
    assert got_status == status and message in str(got["error"])
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert rig.sim.calls == {}


async def test_post_calls_disabled_without_api_token_and_twilio_errors() -> None:
    sim, server, settings, statuses = await _rig(api_token="")
    rig = Rig(sim, server, settings, statuses)
    try:
        status, body, _ = await _post_calls(rig, b'{"to": "+15557654321"}', "anything")
        assert status == 404 and "RTVOICE_API_TOKEN" in str(body["error"])
    finally:
        await sim.close()
        await server.shutdown(0.0)
    sim, server, settings, statuses = await _rig(twilio_phone_number="+1")
    rig = Rig(sim, server, settings, statuses)
    try:
        status, body, _ = await _post_calls(rig, b'{"to": "+15557654321"}')
        assert status == 502 and body["twilio_code"] == 21212
    finally:
        await sim.close()
        await server.shutdown(0.0)


async def test_call_cli_places_a_call(rig: Rig) -> None:
    env = {
        **os.environ,
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_PHONE_NUMBER": OUR_NUMBER,
        "TWILIO_API_BASE_URL": rig.sim.base_url,
        "PUBLIC_BASE_URL": rig.rtvoice_url,
        "RTVOICE_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtvoice", "call", CALLEE, "--agent", "echo", "--prompt", "Say hi",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/",
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT * 2)
    assert proc.returncode == 0, err.decode()
    sid = out.decode().strip()
    call = await rig.sim.wait_done(sid, TIMEOUT)
    assert call.url == f"{rig.rtvoice_url}/incoming-call?agent=echo&prompt=Say+hi"
    assert TOKEN not in err.decode()

    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtvoice", "call", "12345", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/",
    )
    out, err = await asyncio.wait_for(bad.communicate(), TIMEOUT * 2)
    assert bad.returncode == 2 and "E.164" in out.decode()


async def test_post_calls_checks_profile_names(tmp_path: Path) -> None:
    f = tmp_path / "profiles.toml"
    f.write_text('[profiles.sales]\ninstructions = "Sell."\n')
    sim, server, settings, statuses = await _rig(profiles_path=str(f))
    rig = Rig(sim, server, settings, statuses)
    try:
        status, body, _ = await _post_calls(rig, b'{"to": "+15557654321", "profile": "support"}')
        assert status == 400 and body["error"] == "unknown profile 'support'"
        status, body, _ = await _post_calls(rig, b'{"to": "+15557654321", "profile": "sales"}')
        assert status == 201
    finally:
        await sim.close()
        await server.shutdown(0.0)
    f.write_text('[profiles.sales]\nagent = "nope"\n')
    with pytest.raises(ConfigError, match=r"profiles\.toml:2: profiles\.sales\.agent"):
        outbound.register(App(), Settings(profiles_path=str(f)))
