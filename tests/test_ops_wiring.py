"""Operations wired into calls, without sockets: the Realtime core's tool calling (offer, run, answer,
respond), per-call profiles through the webhook and the call registry, and the call's recorder hooks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from call_fakes import NullSink, start_event
from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.agents.openai_realtime import RealtimeCore, ToolCall, ToolRunner
from rtvoice.call.call import Call
from rtvoice.call.registry import CallRegistry
from rtvoice.config import Settings
from rtvoice.profiles import parse_profiles
from rtvoice.server.api import Request
from rtvoice.twilio import signature
from rtvoice.twilio.media import Media
from rtvoice.twilio.twiml import parse_stream_twiml
from rtvoice.twilio.webhook import WebhookHandlers

PROFILES = parse_profiles(
    """
[numbers]
"+15550001000" = "desk"

[profiles.desk]
instructions = "Desk for {caller}."
tools = ["end_call", "send_dtmf"]
twiml_greeting = "Hello from the desk"

[profiles.desk.turn_detection]
vad_aggressiveness = 1
max_queued_ms = 600

[profiles.sales]
instructions = "Sales."
agent = "echo"
""",
    "profiles.toml",
)


def _settings(**kw: Any) -> Settings:
    return Settings(agent="openai", openai_api_key="sk-test", **kw)


def _tools_settings(*names: str) -> Settings:
    return _settings(extra={"tools": ",".join(names), "profile": "desk"})


def _sent(core: RealtimeCore) -> list[dict[str, Any]]:
    out = [json.loads(m) for m in core.outbox]
    core.outbox.clear()
    return out


# --- RealtimeCore: tools ---------------------------------------------------------------------------------


def test_session_update_offers_the_profile_tools_in_ga_shape() -> None:
    core = RealtimeCore(_tools_settings("end_call", "send_dtmf"))
    session = core.session_config()
    assert session["tool_choice"] == "auto"
    assert [(t["type"], t["name"]) for t in session["tools"]] == [
        ("function", "end_call"),
        ("function", "send_dtmf"),
    ]
    assert all(set(t) == {"type", "name", "description", "parameters"} for t in session["tools"])
    assert "tools" not in RealtimeCore(_settings()).session_config()  # no profile tools: none offered


def _call_events(call_id: str = "call_1", name: str = "send_dtmf", args: str = '{"digits": "12"}') -> list[
    dict[str, Any]
]:
    item = {"type": "function_call", "call_id": call_id, "name": name, "arguments": args}
    item["status"] = "completed"
    return [
        {"type": "response.created", "response": {"id": "resp_1"}},
        {
            "type": "response.function_call_arguments.done",
            "response_id": "resp_1",
            "call_id": call_id,
            "name": name,
            "arguments": args,
        },
        {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": [item]}},
    ]


def test_tool_result_goes_back_then_one_response_after_the_producing_response_is_done() -> None:
    core = RealtimeCore(_tools_settings("send_dtmf"))
    calls: list[ToolCall] = []
    core.on_tool_call = calls.append
    created, args_done, done = _call_events()
    core.feed(created, 1.0)
    core.feed(args_done, 1.1)
    assert calls == [ToolCall("call_1", "send_dtmf", '{"digits": "12"}', "resp_1")]
    core.tool_result(calls[0], {"ok": True}, 1.2)  # the tool finished before response.done
    sent = _sent(core)
    assert sent == [
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"ok":true}'},
        }
    ]  # no response.create while resp_1 is active (OpenAI refuses it)
    core.feed(done, 1.3)
    assert len(calls) == 1  # the same call in response.done's output is not run twice
    assert _sent(core) == [{"type": "response.create"}]
    assert core.awaiting_since == 1.3  # the answer to the tool result is watched for a stall


def test_function_call_only_in_response_done_is_still_run() -> None:
    core = RealtimeCore(_tools_settings("send_dtmf"))
    calls: list[ToolCall] = []
    core.on_tool_call = calls.append
    created, _, done = _call_events("call_9")
    core.feed(created, 0.0)
    core.feed(done, 0.1)
    assert [c.call_id for c in calls] == ["call_9"]
    assert _sent(core) == []  # waiting for the tool
    core.tool_result(calls[0], {"ok": True}, 0.2)
    assert [e["type"] for e in _sent(core)] == ["conversation.item.create", "response.create"]


def test_end_call_result_requests_no_response_and_a_function_call_is_not_a_stall() -> None:
    core = RealtimeCore(_tools_settings("end_call"))
    calls: list[ToolCall] = []
    core.on_tool_call = calls.append
    core.awaiting_since = 0.0  # the caller's turn ended at t=0
    for ev in _call_events(name="end_call", args="{}"):
        core.feed(ev, 0.5)
    core.check_stall(100.0)
    assert core.stalls == 0 and core.awaiting_since is None
    core.tool_result(calls[0], {"ok": True, "ending": True}, 0.6)
    assert [e["type"] for e in _sent(core)] == ["conversation.item.create"]
    assert core.ending


def test_failed_end_call_lets_the_model_answer() -> None:
    core = RealtimeCore(_tools_settings("end_call"))
    calls: list[ToolCall] = []
    core.on_tool_call = calls.append
    for ev in _call_events(name="end_call", args="{}"):
        core.feed(ev, 0.5)
    core.tool_result(calls[0], {"error": "bad arguments"}, 0.6)
    assert [e["type"] for e in _sent(core)] == ["conversation.item.create", "response.create"]


class _Sink(NullSink):
    def __init__(self) -> None:
        self.audio: list[tuple[str, int]] = []
        self.done: list[str] = []
        self.hangups: list[str] = []

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        self.audio.append((item_id, len(ulaw)))

    def bot_audio_done(self, item_id: str) -> None:
        self.done.append(item_id)

    def hang_up(self, reason: str) -> None:
        self.hangups.append(reason)


async def test_tool_runner_runs_real_tools_with_the_call_context() -> None:
    core = RealtimeCore(_tools_settings("end_call", "send_dtmf"))
    kicks: list[int] = []
    runner = ToolRunner(core.settings, core, lambda: kicks.append(1))
    sink = _Sink()
    runner.bind(CallInfo("CA1", "MZ1"), sink)
    for ev in _call_events(name="send_dtmf", args='{"digits": "1#"}'):
        core.feed(ev, 0.0)
    for _ in range(100):
        if kicks:
            break
        await asyncio.sleep(0.01)
    # In-band DTMF: two 100 ms tones with 80 ms gaps, as one bot item.
    assert sink.audio == [("tool_audio_1", 2 * (800 + 640))] and sink.done == ["tool_audio_1"]
    out = [e for e in _sent(core) if e["type"] == "conversation.item.create"]
    assert json.loads(out[0]["item"]["output"]) == {"ok": True, "sent": "1#", "method": "in-band"}
    # A tool outside the profile's list is refused, never run.
    core.feed({"type": "response.created", "response": {"id": "resp_2"}}, 1.0)
    core.feed(
        {
            "type": "response.function_call_arguments.done",
            "response_id": "resp_2",
            "call_id": "call_x",
            "name": "transfer_call",
            "arguments": '{"number": "+15550009999"}',
        },
        1.0,
    )
    await asyncio.sleep(0.05)
    out = [e for e in _sent(core) if e["type"] == "conversation.item.create"]
    assert json.loads(out[0]["item"]["output"]) == {"error": "unknown tool 'transfer_call'"}
    for ev in _call_events("call_e", name="end_call", args='{"reason": "done"}'):
        core.feed(ev, 2.0)
    await asyncio.sleep(0.05)
    assert sink.hangups == ["done"]
    await runner.close()


# --- profiles per call: webhook and registry ---------------------------------------------------------------

TOKEN = "auth-token-123"
WEBHOOK_SETTINGS = Settings(
    twilio_auth_token=TOKEN,
    public_base_url="https://voice.example.com",
    agent="openai",
    openai_api_key="sk-x",
)
CALL = "CA" + "ab" * 16


def _post(form: dict[str, str], query: str = "") -> Request:
    from urllib.parse import urlencode

    body = urlencode(form).encode()
    url = signature.public_url(WEBHOOK_SETTINGS, "/incoming-call", query)
    headers = [
        ("host", "x"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-twilio-signature", signature.compute(TOKEN, url, form)),
    ]
    target = f"/incoming-call?{query}" if query else "/incoming-call"
    return Request("POST", target, "/incoming-call", query, headers, body, ("10.0.0.1", 4000))


class _NoopAgent(Agent):
    name = "noop"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        pass

    def send_audio(self, ulaw: bytes, pcm: memoryview) -> None:
        pass

    def barge_in(self, heard: Heard | None) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_inbound_webhook_uses_the_called_numbers_profile() -> None:
    registry = CallRegistry(WEBHOOK_SETTINGS, agent_factory=_NoopAgent, profiles=PROFILES)
    h = WebhookHandlers(WEBHOOK_SETTINGS, registry)
    form = {"CallSid": CALL, "From": "+15557654321", "To": "+15550001000", "Direction": "inbound"}
    resp = await h.incoming_call(_post(form))
    assert resp.status == 200
    twiml = parse_stream_twiml(resp.body)
    assert twiml.parameters["profile"] == "desk"
    assert twiml.says == ["Hello from the desk"]  # the profile's TwiML greeting
    setup = registry.take_call(CALL)
    assert setup is not None and isinstance(setup.agent, _NoopAgent)
    assert setup.profile.name == "desk" and setup.agent.settings is setup.settings
    assert setup.settings.instructions == "Desk for +15557654321."
    assert setup.settings.vad_aggressiveness == 1 and setup.settings.max_queued_ms == 600
    await registry.shutdown()


async def test_outbound_webhook_query_picks_profile_agent_and_prompt() -> None:
    registry = CallRegistry(WEBHOOK_SETTINGS, agent_factory=_NoopAgent, profiles=PROFILES)
    h = WebhookHandlers(WEBHOOK_SETTINGS, registry)
    form = {"CallSid": CALL, "From": "+15550001000", "To": "+15557654321", "Direction": "outbound-api"}
    resp = await h.incoming_call(_post(form, "profile=sales&agent=echo&prompt=Confirm+the+booking."))
    assert resp.status == 200
    assert parse_stream_twiml(resp.body).parameters["profile"] == "sales"
    assert parse_stream_twiml(resp.body).parameters["agent"] == "echo"
    setup = registry.take_call(CALL)
    assert setup is not None and setup.profile.name == "sales"
    assert setup.settings.agent == "echo" and setup.settings.instructions == "Confirm the booking."
    # An unknown profile in the (signed) query is a clear 400, not a call on the wrong prompt.
    bad = await h.incoming_call(_post(form, "profile=nope"))
    assert bad.status == 400 and b"unknown profile" in bad.body
    await registry.shutdown()


def test_stream_without_a_prepared_agent_rebuilds_settings_from_its_parameters() -> None:
    registry = CallRegistry(WEBHOOK_SETTINGS, agent_factory=_NoopAgent, profiles=PROFILES)
    setup = registry.new_call(CALL, "+15550001000", "+15557654321", "outbound-api", profile="sales")
    assert setup.profile.name == "sales" and setup.settings.agent == "echo"


# --- the call's recorder hooks ------------------------------------------------------------------------


class _Legs:
    def __init__(self) -> None:
        self.caller = bytearray()
        self.bot = bytearray()

    def caller_audio(self, ulaw: bytes | memoryview) -> None:
        self.caller += ulaw

    def bot_audio(self, ulaw: bytes | memoryview) -> None:
        self.bot += ulaw


class _Observer:
    def __init__(self) -> None:
        self.faults: list[tuple[str, str, str, bool]] = []

    def call_started(self, info: CallInfo) -> None: ...
    def turn(self, role: str, text: str, start_ms: int, end_ms: int) -> None: ...
    def barge_in(self, heard: Heard | None, reaction_ms: int) -> None: ...
    def latency(self, turn: Any) -> None: ...
    def call_ended(self, outcome: str) -> None: ...

    def fault(self, kind: str, message: str, *, vendor: str = "", fatal: bool = False) -> None:
        self.faults.append((kind, message, vendor, fatal))


def test_call_feeds_both_legs_forwards_faults_and_follows_per_call_settings(tmp_path: Path) -> None:
    obs = _Observer()
    call = Call(Settings(), _NoopAgent(Settings()), observer=obs)
    call.configure(Settings(max_queued_ms=600, vad_aggressiveness=0))
    assert call.pacer.max_queued == 600 * 8 and call.vad is not None
    legs = _Legs()
    call.record_legs(legs)
    call.on_start(start_event())
    call.on_agent_ready()
    call.bot_audio("item_1", b"\x11" * 480)
    for i in range(3):
        call.on_media(Media("MZ", i + 2, "inbound", i + 1, i * 20, b"\x22" * 160))
    assert bytes(legs.caller) == b"\x22" * 480
    assert bytes(legs.bot) == b"\x11" * 480
    call.fault("dropped", "socket closed", False)
    assert obs.faults == [("dropped", "socket closed", "noop", False)]
