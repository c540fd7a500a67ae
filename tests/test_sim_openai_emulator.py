"""Tests of the OpenAI Realtime GA emulator: loopback sockets, the real openai SDK, the real webrtcvad."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, get_args

import numpy as np
import pytest
import webrtcvad
from openai import AsyncOpenAI
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agents_vendor_testutil import silence_ulaw, speech_ulaw
from rtvoice.audio import alaw_encode, ulaw_decode, ulaw_encode
from rtvoice.sim import voice
from rtvoice.sim.openai_emulator import (
    ClientEventError,
    EventValidator,
    FunctionCall,
    OpenAIEmulatorConfig,
    OpenAIFaults,
    OpenAIRealtimeEmulator,
    Reply,
    Script,
    ServerVad,
    _extras,
)

FAST = OpenAIEmulatorConfig(ms_per_char=20.0, chunk_ms=100)
PCMU_SESSION: dict[str, Any] = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 100},
            "transcription": {"model": "gpt-4o-mini-transcribe"},
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
    },
}


# ------------------------------------------------------------------------------------------------ helpers


def _server_adapters() -> dict[str, TypeAdapter[Any]]:
    union = get_args(get_args(RealtimeServerEvent)[0])
    out: dict[str, TypeAdapter[Any]] = {}
    for cls in union:
        for lit in get_args(cls.model_fields["type"].annotation):
            out[lit] = TypeAdapter(cls)
    return out


SERVER = _server_adapters()


# Fields the GA wire carries but the SDK's server models do not declare (they accept them as extras).
ALLOWED_EXTRAS = {"object", "id", "expires_at"}


def check_server_event(ev: dict[str, Any]) -> None:
    """Every event the emulator sends must validate against the SDK's server-event model of its type."""
    assert ev["type"] in SERVER, ev["type"]
    model = SERVER[ev["type"]].validate_python(ev)
    bad = [p for p in _extras(model) if p.rsplit(".", 1)[-1] not in ALLOWED_EXTRAS]
    assert not bad, (ev["type"], bad)


async def send_frames(send: Any, data: bytes, frame: int = 160) -> None:
    for i in range(0, len(data), frame):
        await send(base64.b64encode(data[i : i + frame]).decode())


class Raw:
    """A raw WebSocket client for shapes the SDK would not send."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, ev: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(ev))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        ev: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        check_server_event(ev)
        return ev

    async def until(
        self,
        etype: str,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        while True:
            ev = await self.recv(timeout)
            seen.append(ev)
            if ev["type"] == etype:
                return ev, seen

    async def append(self, data: bytes) -> None:
        async def one(b64: str) -> None:
            await self.send({"type": "input_audio_buffer.append", "audio": b64})

        await send_frames(one, data)


def raw_connect(emu: OpenAIRealtimeEmulator, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    hdrs = {"Authorization": "Bearer sk-test"} if headers is None else headers
    return connect(f"{emu.url}/realtime?model=gpt-realtime-2", additional_headers=hdrs, **kw)


async def open_session(ws: ClientConnection, session: dict[str, Any] | None = None) -> Raw:
    raw = Raw(ws)
    created = await raw.recv()
    assert created["type"] == "session.created"
    if session is not None:
        await raw.send({"type": "session.update", "session": session})
        updated = await raw.recv()
        assert updated["type"] == "session.updated"
    return raw


# ------------------------------------------------------------------------------------------------ voice


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_voice_is_speech_and_duration_scales(rate: int) -> None:
    text = "Hello, how can I help you today?"
    pcm = voice.render(text, rate, 60.0)
    assert len(pcm) == round(rate * 0.06) * len(text)
    assert np.array_equal(pcm, voice.render(text, rate, 60.0))  # deterministic
    assert len(voice.render(text * 2, rate, 60.0)) == 2 * len(pcm)
    vad = webrtcvad.Vad(3)
    frame = rate // 50
    frames = [pcm[i : i + frame].tobytes() for i in range(0, len(pcm) - frame + 1, frame)]
    voiced = sum(vad.is_speech(f, rate) for f in frames)
    assert voiced >= 0.9 * len(frames)


def test_char_timings_match_render() -> None:
    starts, durs = voice.char_timings("abc", 33.3)
    assert starts == [0, 33, 67] and sum(durs) == 100


# ------------------------------------------------------------------------------------------------ validator


@pytest.fixture(scope="module")
def validator() -> EventValidator:
    return EventValidator()


def test_validator_accepts_ga_events(validator: EventValidator) -> None:
    for ev in (
        {"type": "session.update", "session": PCMU_SESSION, "event_id": "e1"},
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
        {"type": "input_audio_buffer.commit"},
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        },
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
        },
        {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 10},
        {"type": "response.create", "response": {"output_modalities": ["text"]}},
        {"type": "response.cancel"},
    ):
        model, raw = validator.validate(json.dumps(ev))
        assert raw == ev and model.type == ev["type"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("event", "code", "param", "message"),
    [
        (
            {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}},
            "unknown_parameter",
            "session.input_audio_format",
            "Unknown parameter: 'session.input_audio_format'.",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}},
            },
            "invalid_value",
            "session.audio.input.format.type",
            "Invalid value: 'g711_ulaw'.",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "modalities": ["text"]}},
            "unknown_parameter",
            "session.modalities",
            None,
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["text", "audio"]},
            },
            "invalid_value",
            "session.output_modalities",
            None,
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "x", "content_index": 0},
            "missing_required_parameter",
            "audio_end_ms",
            "Missing required parameter: 'audio_end_ms'.",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "x",
                "content_index": 0,
                "audio_end_ms": "soon",
            },
            "invalid_type",
            "audio_end_ms",
            None,
        ),
        ({"type": "input_audio_buffer.append", "audio": "!!notbase64"}, "invalid_value", "audio", None),
        ({"type": "response.audio.delta"}, "invalid_value", "type", "Invalid value: 'response.audio.delta'."),
        ({"event_id": "x"}, "missing_required_parameter", "type", None),
    ],
)
def test_validator_rejects_like_openai(
    validator: EventValidator, event: dict[str, Any], code: str, param: str, message: str | None
) -> None:
    with pytest.raises(ClientEventError) as info:
        validator.validate(json.dumps({**event, "event_id": "evt_client_1"}))
    assert info.value.code == code
    assert info.value.param == param
    assert info.value.event_id == "evt_client_1"
    if message is not None:
        assert info.value.message.startswith(message)


def test_validator_rejects_non_json(validator: EventValidator) -> None:
    with pytest.raises(ClientEventError) as info:
        validator.validate("{nope")
    assert info.value.code == "invalid_json"


# ------------------------------------------------------------------------------------------------ VAD


@pytest.mark.parametrize("fmt", ["pcmu", "pcma", "pcm"])
def test_server_vad_detects_speech_bounds(fmt: str) -> None:
    rate = 24000 if fmt == "pcm" else 8000
    speech = voice.render("one two three four", rate, 40.0)  # 720 ms
    pcm = np.concatenate([np.zeros(rate // 2, np.int16), speech, np.zeros(rate, np.int16)])
    data = {"pcmu": ulaw_encode, "pcma": alaw_encode}.get(
        fmt, lambda p: p.astype("<i2").tobytes()
    )(pcm)
    vad = ServerVad(fmt, prefix_padding_ms=100, silence_duration_ms=300)
    events: list[tuple[str, int]] = []
    step = 333  # odd chunking must not matter
    for i in range(0, len(data), step):
        events += vad.feed(data[i : i + step])
    assert [e[0] for e in events] == ["speech_started", "speech_stopped"]
    assert abs(events[0][1] - (500 - 100)) <= 40  # onset at 500 ms minus prefix padding
    assert abs(events[1][1] - 1220) <= 60  # end of speech


def test_server_vad_ignores_silence_and_noise_floor() -> None:
    rng = np.random.default_rng(1)
    quiet = (rng.standard_normal(8000) * 20).astype(np.int16)  # ~ -64 dBFS hiss
    vad = ServerVad("pcmu")
    assert vad.feed(ulaw_encode(quiet)) == []


# ------------------------------------------------------------------------------------------------ SDK e2e


async def test_sdk_pcmu_turn_gets_scripted_audio_reply() -> None:
    script = Script([Reply("Hello, how can I help?", user_transcript="hi there")])
    async with OpenAIRealtimeEmulator(script, config=FAST) as emu:
        client = AsyncOpenAI(api_key="test", websocket_base_url=emu.url)
        async with client.realtime.connect(model="gpt-realtime-2") as conn:
            created = await conn.recv()
            assert created.type == "session.created"
            await conn.session.update(session=PCMU_SESSION)  # type: ignore[arg-type]
            updated = await conn.recv()
            assert updated.type == "session.updated"
            assert updated.session.audio.input.format.type == "audio/pcmu"  # type: ignore[union-attr]
            data = silence_ulaw(400) + speech_ulaw("hello there how are you", 40.0) + silence_ulaw(600)
            await send_frames(lambda a: conn.input_audio_buffer.append(audio=a), data)
            types: list[str] = []
            audio = bytearray()
            transcript = ""
            async for ev in conn:
                types.append(ev.type)
                if ev.type == "response.output_audio.delta":
                    audio += base64.b64decode(ev.delta)
                elif ev.type == "response.output_audio_transcript.delta":
                    transcript += ev.delta
                elif ev.type == "conversation.item.input_audio_transcription.completed":
                    assert ev.transcript == "hi there"
                elif ev.type == "response.done":
                    done = ev
                    break
    assert types[:4] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
    ]
    order = [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions)
    assert transcript == "Hello, how can I help?"
    assert done.response.status == "completed"
    usage = done.response.usage
    assert usage is not None and usage.output_token_details is not None
    assert usage.output_token_details.audio_tokens == int(len(transcript) * 20 // 50)
    assert usage.input_token_details is not None and usage.input_token_details.audio_tokens > 0
    # the audio is μ-law 8 kHz, as long as the text says, and a VAD hears speech in it
    assert len(audio) == len(transcript) * 20 * 8
    pcm = ulaw_decode(bytes(audio))
    vad = webrtcvad.Vad(2)
    voiced = sum(vad.is_speech(pcm[i : i + 160].tobytes(), 8000) for i in range(0, len(pcm) - 159, 160))
    assert voiced > 0.8 * (len(pcm) // 160)
    sess = emu.sessions[0]
    assert sess.received[0]["type"] == "session.update"
    assert sess.headers["Authorization"] == "Bearer test"
    for ev in sess.sent:
        check_server_event(ev)


async def test_sdk_sees_invalid_event_error_and_session_stays_usable() -> None:
    async with OpenAIRealtimeEmulator(Script(["ok"]), config=FAST) as emu:
        client = AsyncOpenAI(api_key="test", websocket_base_url=emu.url)
        async with client.realtime.connect(model="gpt-realtime-2") as conn:
            await conn.recv()
            await conn.send(
                {
                    "type": "session.update",
                    "event_id": "evt_1",  # type: ignore[arg-type]
                    "session": {"type": "realtime", "input_audio_format": "g711_ulaw"},
                }
            )
            err = await conn.recv()
            assert err.type == "error"
            assert err.error.code == "unknown_parameter"
            assert err.error.param == "session.input_audio_format"
            assert err.error.event_id == "evt_1"
            await conn.session.update(session={"type": "realtime", "instructions": "be brief"})
            ok = await conn.recv()
            assert ok.type == "session.updated" and ok.session.instructions == "be brief"  # type: ignore[union-attr]
    assert len(emu.sessions[0].received) == 1  # only the valid event is recorded


# ------------------------------------------------------------------------------------------------ handshake


async def test_missing_bearer_is_http_401() -> None:
    async with OpenAIRealtimeEmulator() as emu:
        with pytest.raises(InvalidStatus) as info:
            async with raw_connect(emu, headers={}):
                pass
        assert info.value.response.status_code == 401
        assert b"API key" in info.value.response.body


async def test_wrong_key_is_http_401_when_key_configured() -> None:
    async with OpenAIRealtimeEmulator(config=OpenAIEmulatorConfig(api_key="sk-right")) as emu:
        with pytest.raises(InvalidStatus) as info:
            async with raw_connect(emu, headers={"Authorization": "Bearer sk-wrong-1234"}):
                pass
        assert info.value.response.status_code == 401
        assert json.loads(info.value.response.body)["error"]["code"] == "invalid_api_key"
        async with raw_connect(emu, headers={"Authorization": "Bearer sk-right"}) as ws:
            assert (await Raw(ws).recv())["type"] == "session.created"


@pytest.mark.parametrize("how", ["header", "subprotocol"])
async def test_beta_handshake_gets_beta_api_shape_disabled_and_4000(how: str) -> None:
    async with OpenAIRealtimeEmulator() as emu:
        headers = {"Authorization": "Bearer sk-test"}
        kw: dict[str, Any] = {}
        if how == "header":
            headers["OpenAI-Beta"] = "realtime=v1"
        else:
            kw["subprotocols"] = ["realtime", "openai-beta.realtime-v1"]
        async with raw_connect(emu, headers=headers, **kw) as ws:
            ev = json.loads(await ws.recv())
            assert ev["type"] == "error"
            assert ev["error"]["code"] == "beta_api_shape_disabled"
            assert "no longer supported" in ev["error"]["message"]
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4000
        assert emu.sessions == []


async def test_sdk_beta_client_is_rejected() -> None:
    async with OpenAIRealtimeEmulator() as emu:
        client = AsyncOpenAI(api_key="test", websocket_base_url=emu.url)
        async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
            raw = json.loads(await conn.recv_bytes())
            assert raw["error"]["code"] == "beta_api_shape_disabled"


# ------------------------------------------------------------------------------------------------ responses


async def test_text_only_session_and_script_matching() -> None:
    script = Script(["first in order"], default="fallback")
    script.replies.append(Reply("Your order ships tomorrow.", match="order"))
    async with OpenAIRealtimeEmulator(script, config=FAST) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws, {"type": "realtime", "output_modalities": ["text"]})
        await raw.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Where is my ORDER?"}],
                },
            }
        )
        added, _ = await raw.until("conversation.item.done")
        assert added["item"]["role"] == "user"
        await raw.send({"type": "response.create"})
        done, seen = await raw.until("response.done")
        text = "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta")
        assert text == "Your order ships tomorrow."
        assert any(e["type"] == "response.output_text.done" and e["text"] == text for e in seen)
        assert not any("audio" in e["type"] for e in seen)
        assert done["response"]["output_modalities"] == ["text"]
        await raw.send({"type": "response.create"})
        _, seen = await raw.until("response.done")
        assert (
            "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta") == "first in order"
        )
        await raw.send({"type": "response.create"})
        _, seen = await raw.until("response.done")
        assert "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta") == "fallback"


async def test_pcm24k_output_format() -> None:
    async with OpenAIRealtimeEmulator(["abc def"], config=FAST) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws)  # default format: audio/pcm 24 kHz
        await raw.send({"type": "response.create"})
        _, seen = await raw.until("response.done")
        audio = b"".join(
            base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.output_audio.delta"
        )
        assert len(audio) == 7 * 20 * 48  # 48 bytes per ms of 24 kHz PCM16


async def test_active_response_cancel_and_errors() -> None:
    cfg = OpenAIEmulatorConfig(ms_per_char=50.0, speed=1.0, chunk_ms=50)
    async with OpenAIRealtimeEmulator(["a long answer " * 10], config=cfg) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws, PCMU_SESSION)
        await raw.send({"type": "response.cancel", "event_id": "c0"})
        err, _ = await raw.until("error")
        assert err["error"]["code"] == "response_cancel_not_active" and err["error"]["event_id"] == "c0"
        await raw.send({"type": "response.create"})
        await raw.until("response.output_audio.delta")
        await raw.send({"type": "response.create", "event_id": "c1"})
        err, _ = await raw.until("error")
        assert err["error"]["code"] == "conversation_already_has_active_response"
        await raw.send({"type": "response.cancel"})
        done, seen = await raw.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        item_done = [e for e in seen if e["type"] == "response.output_item.done"]
        assert item_done and item_done[-1]["item"]["status"] == "incomplete"


async def test_barge_in_cancels_and_truncate_validation() -> None:
    text = "I can certainly help you with that, let me look it up for you right now."
    cfg = OpenAIEmulatorConfig(ms_per_char=50.0, speed=4.0, chunk_ms=100)
    async with OpenAIRealtimeEmulator([text], config=cfg) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws, PCMU_SESSION)
        await raw.send({"type": "response.create"})
        first, _ = await raw.until("response.output_audio.delta")
        item_id = first["item_id"]
        await raw.append(silence_ulaw(100) + speech_ulaw("wait wait stop", 40.0))
        started, seen = await raw.until("input_audio_buffer.speech_started")
        done, seen2 = await raw.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        audio_ms = sum(
            len(base64.b64decode(e["delta"])) / 8
            for e in seen + seen2 + [first]
            if e["type"] == "response.output_audio.delta"
        )
        assert 0 < audio_ms < len(text) * 50
        # truncating a user item is an error
        user_item = started["item_id"]
        await raw.append(silence_ulaw(600))
        await raw.until("input_audio_buffer.committed")
        await raw.send(
            {
                "type": "conversation.item.truncate",
                "item_id": user_item,
                "content_index": 0,
                "audio_end_ms": 10,
                "event_id": "t1",
            }
        )
        err, _ = await raw.until("error")
        assert err["error"]["event_id"] == "t1" and "assistant" in err["error"]["message"]
        # beyond the audio actually generated: error
        await raw.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": int(audio_ms) + 500,
                "event_id": "t2",
            }
        )
        err, _ = await raw.until("error")
        assert err["error"]["param"] == "audio_end_ms" and err["error"]["event_id"] == "t2"
        # a valid truncate cuts the transcript to what was heard
        await raw.send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 90}
        )
        tr, seen = await raw.until("conversation.item.truncated")
        assert not [e for e in seen if e["type"] == "error"]
        assert tr == {**tr, "item_id": item_id, "content_index": 0, "audio_end_ms": 90}
        await raw.send({"type": "conversation.item.retrieve", "item_id": item_id})
        got, _ = await raw.until("conversation.item.retrieved")
        assert got["item"]["content"][0]["transcript"] == text[:2]  # 50 ms per character: 90 ms -> 2 chars
    sess = emu.sessions[0]
    assert sess.items[item_id].audio_ms == 90


async def test_function_call_reply_and_output_roundtrip() -> None:
    script = Script(
        [
            Reply(function_call=FunctionCall("lookup_order", '{"id":"42"}', call_id="call_1")),
            "Order 42 ships tomorrow.",
        ]
    )
    async with OpenAIRealtimeEmulator(script, config=FAST) as emu, raw_connect(emu) as ws:
        raw = await open_session(
            ws,
            {
                "type": "realtime",
                "output_modalities": ["text"],
                "tools": [{"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}],
            },
        )
        await raw.send({"type": "response.create"})
        done, seen = await raw.until("response.done")
        added = next(e for e in seen if e["type"] == "response.output_item.added")
        assert added["item"]["type"] == "function_call" and added["item"]["name"] == "lookup_order"
        args = "".join(e["delta"] for e in seen if e["type"] == "response.function_call_arguments.delta")
        fdone = next(e for e in seen if e["type"] == "response.function_call_arguments.done")
        assert args == fdone["arguments"] == '{"id":"42"}' and fdone["call_id"] == "call_1"
        assert done["response"]["output"][0]["call_id"] == "call_1"
        await raw.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "call_1", "output": "tomorrow"},
            }
        )
        await raw.until("conversation.item.done")
        await raw.send({"type": "response.create"})
        _, seen = await raw.until("response.done")
        assert (
            "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta")
            == "Order 42 ships tomorrow."
        )


async def test_manual_turns_commit_clear_and_empty_commit_error() -> None:
    session = {
        "type": "realtime",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}},
    }
    async with OpenAIRealtimeEmulator(["x"], config=FAST) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws, session)
        await raw.send({"type": "input_audio_buffer.commit", "event_id": "m1"})
        err, _ = await raw.until("error")
        assert err["error"]["event_id"] == "m1" and "buffer" in err["error"]["message"]
        await raw.append(speech_ulaw("hello there how are you", 40.0))
        await raw.send({"type": "input_audio_buffer.clear"})
        await raw.until("input_audio_buffer.cleared")
        await raw.append(speech_ulaw("hello there how are you", 40.0) + silence_ulaw(800))
        await raw.send({"type": "input_audio_buffer.commit"})
        committed, seen = await raw.until("input_audio_buffer.committed")
        # no VAD events and no automatic response with turn_detection null
        assert not any(e["type"].startswith("input_audio_buffer.speech") for e in seen)
        await raw.send({"type": "conversation.item.delete", "item_id": committed["item_id"]})
        deleted, _ = await raw.until("conversation.item.deleted")
        assert deleted["item_id"] == committed["item_id"]
        await asyncio.sleep(0.05)
        assert emu.sessions[0].response is None


# ------------------------------------------------------------------------------------------------ faults


async def test_fault_refuse_connections() -> None:
    async with OpenAIRealtimeEmulator(faults=OpenAIFaults(refuse_connections=True)) as emu:
        with pytest.raises(InvalidStatus) as info:
            async with raw_connect(emu):
                pass
        assert info.value.response.status_code == 503


async def test_fault_drop_mid_response() -> None:
    faults = OpenAIFaults(drop_after_audio_ms=200)
    async with OpenAIRealtimeEmulator(["a fairly long answer here"], config=FAST, faults=faults) as emu:
        async with raw_connect(emu) as ws:
            raw = await open_session(ws, PCMU_SESSION)
            await raw.send({"type": "response.create"})
            with pytest.raises(ConnectionClosed):
                while True:
                    await raw.recv()
            assert ws.close_code == 1006  # no close frame: the TCP connection was aborted
        got = [e for e in emu.sessions[0].sent if e["type"] == "response.output_audio.delta"]
        assert sum(len(base64.b64decode(e["delta"])) for e in got) == 200 * 8


async def test_fault_inject_error_and_failed_response() -> None:
    faults = OpenAIFaults(fail_responses=True)
    async with OpenAIRealtimeEmulator(["x"], config=FAST, faults=faults) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws)
        await emu.inject_error()
        err = await raw.recv()
        assert err["error"]["type"] == "server_error"
        await raw.send({"type": "response.create"})
        done, _ = await raw.until("response.done")
        assert done["response"]["status"] == "failed"


async def test_fault_stall_first_audio() -> None:
    faults = OpenAIFaults(stall_first_audio=True)
    async with OpenAIRealtimeEmulator(["x"], config=FAST, faults=faults) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws)
        await raw.send({"type": "response.create"})
        await raw.until("response.created")
        await raw.until("rate_limits.updated")
        with pytest.raises(TimeoutError):
            await raw.recv(timeout=0.3)
        await raw.send({"type": "response.cancel"})
        done, _ = await raw.until("response.done")
        assert done["response"]["status"] == "cancelled"


async def test_first_audio_delay() -> None:
    cfg = OpenAIEmulatorConfig(ms_per_char=20.0, first_audio_delay_ms=150)
    async with OpenAIRealtimeEmulator(["x"], config=cfg) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws)
        await raw.send({"type": "response.create"})
        await raw.until("response.created")
        with pytest.raises(TimeoutError):
            await raw.until("response.output_audio.delta", timeout=0.05)
        await raw.until("response.output_audio.delta")


async def test_fault_session_max_duration() -> None:
    async with OpenAIRealtimeEmulator(faults=OpenAIFaults(max_session_s=0.2)) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws)
        err = await raw.recv()
        assert err["error"]["code"] == "session_expired"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1001
        assert ws.close_reason == "Your session hit the maximum duration of 60 minutes."


async def test_idle_timeout_triggers_prompt() -> None:
    session = {
        **PCMU_SESSION,
        "audio": {
            **PCMU_SESSION["audio"],
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {"type": "server_vad", "idle_timeout_ms": 100},
            },
        },
    }
    async with (
        OpenAIRealtimeEmulator(["Hello?", "Are you still there?"], config=FAST) as emu,
        raw_connect(emu) as ws,
    ):
        raw = await open_session(ws, session)
        await raw.send({"type": "response.create"})
        await raw.until("response.done")
        await raw.append(silence_ulaw(200))
        trig, _ = await raw.until("input_audio_buffer.timeout_triggered")
        assert trig["audio_end_ms"] >= trig["audio_start_ms"]
        _, seen = await raw.until("response.done")
        transcript = [e for e in seen if e["type"] == "response.output_audio_transcript.done"]
        assert transcript[0]["transcript"] == "Are you still there?"


async def test_emulator_wait_helpers() -> None:
    async with OpenAIRealtimeEmulator(["x"], config=FAST) as emu, raw_connect(emu) as ws:
        raw = await open_session(ws)
        await raw.send({"type": "response.create", "event_id": "w1"})
        ev = await emu.wait_for_event("response.create")
        assert ev["event_id"] == "w1"
        assert (await emu.wait_for_session()).index == 0
        assert emu.received == emu.sessions[0].received


# ------------------------------------------------------------------------------------------------ fuzz

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_types = st.sampled_from(
    [
        "session.update",
        "input_audio_buffer.append",
        "conversation.item.create",
        "conversation.item.truncate",
        "response.create",
        "response.cancel",
        "bogus",
    ]
)


_VALIDATOR = EventValidator()


@settings(max_examples=200, deadline=None)
@given(
    etype=_types,
    body=st.dictionaries(
        st.sampled_from(
            [
                "session",
                "audio",
                "item",
                "item_id",
                "content_index",
                "audio_end_ms",
                "response",
                "event_id",
                "x",
            ]
        ),
        _json,
        max_size=4,
    ),
)
def test_validator_never_crashes(etype: str, body: dict[str, Any]) -> None:
    try:
        model, raw = _VALIDATOR.validate(json.dumps({"type": etype, **body}))
    except ClientEventError as exc:
        assert exc.message and (exc.code is None or isinstance(exc.code, str))
    else:
        assert raw["type"] == etype == model.type  # type: ignore[attr-defined]
