"""Tests of the ElevenLabs emulator (TTS WebSockets, Conversational AI).

Loopback sockets, the real elevenlabs SDK models and client where they exist, the real webrtcvad.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
from typing import Any

import pytest
import webrtcvad
from elevenlabs.types import AudioOutput, AudioOutputMulti, FinalOutputMulti
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agents_vendor_testutil import silence_ulaw, speech_ulaw
from rtvoice.audio import ulaw_decode
from rtvoice.sim import voice
from rtvoice.sim.elevenlabs_emulator import (
    ElevenLabsConfig,
    ElevenLabsEmulator,
    ElevenLabsFaults,
    ProtocolViolation,
    TtsValidator,
    render_chunks,
    validate_convai_message,
)
from rtvoice.sim.openai_emulator import FunctionCall, Reply, Script

FAST = ElevenLabsConfig(ms_per_char=20.0, chunk_ms=100.0, ping_interval_s=None)
KEY = {"xi-api-key": "xi-test"}


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
    msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return msg


async def recv_until(
    ws: ClientConnection,
    pred: Any,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    while True:
        m = await recv(ws, timeout)
        seen.append(m)
        if pred(m):
            return m, seen


def tts_url(emu: ElevenLabsEmulator, multi: bool = True, fmt: str = "ulaw_8000", extra: str = "") -> str:
    kind = "multi-stream-input" if multi else "stream-input"
    query = f"model_id=eleven_flash_v2_5&output_format={fmt}{extra}"
    return f"{emu.ws_url}/v1/text-to-speech/voice123/{kind}?{query}"


def is_speech_ulaw(audio: bytes) -> float:
    pcm = ulaw_decode(audio)
    vad = webrtcvad.Vad(2)
    frames = [pcm[i : i + 160].tobytes() for i in range(0, len(pcm) - 159, 160)]
    return sum(vad.is_speech(f, 8000) for f in frames) / max(1, len(frames))


# ------------------------------------------------------------------------------------------------ sans-I/O


def test_render_chunks_alignment_consistent_with_audio() -> None:
    text = "Hello there, friend."
    chunks = render_chunks(text, "pcm_16000", 25.0, 100.0)
    assert "".join(c for _, chars, _, _ in chunks for c in chars) == text
    for audio, chars, starts, durs in chunks:
        assert len(audio) == len(chars) * 25 * 16 * 2  # 16 kHz PCM16: 32 bytes per ms
        assert starts[0] == 0 and starts == sorted(starts)  # per-chunk relative times
        assert sum(durs) == len(chars) * 25


@pytest.mark.parametrize(
    ("multi", "first", "msg", "kind"),
    [
        (
            False,
            True,
            {"text": " ", "voice_settings": {"stability": 0.5}, "xi-api-key": "k"},
            "InitializeConnection",
        ),
        (False, False, {"text": "Hello ", "try_trigger_generation": False}, "SendText"),
        (False, False, {"text": ""}, "CloseConnection"),
        (True, True, {"text": " ", "context_id": "c", "xi_api_key": "k"}, "InitializeConnectionMulti"),
        (True, False, {"text": "Hi ", "context_id": "c"}, "SendTextMulti"),
        (True, False, {"text": "", "context_id": "c", "flush": True}, "FlushContext"),
        (True, False, {"context_id": "c", "close_context": True}, "CloseContext"),
        (True, False, {"text": "", "context_id": "c"}, "KeepContextAlive"),
        (True, False, {"close_socket": True}, "CloseSocket"),
    ],
)
def test_tts_validator_classifies_sdk_models(
    multi: bool, first: bool, msg: dict[str, Any], kind: str
) -> None:
    assert TtsValidator().validate(json.dumps(msg), multi, first) == (kind, msg)


@pytest.mark.parametrize(
    "msg",
    ['{"text": "hi", "contextId": "c"}', '{"text": 5}', "not json", '["text"]', '{"text": "a", "bogus": 1}'],
)
def test_tts_validator_rejects(msg: str) -> None:
    with pytest.raises(ProtocolViolation):
        TtsValidator().validate(msg, True, False)


def test_convai_validation() -> None:
    assert validate_convai_message('{"user_audio_chunk": "AAAA"}') == {"user_audio_chunk": "AAAA"}
    assert validate_convai_message('{"type": "pong", "event_id": 3}')["event_id"] == 3
    for bad in (
        '{"type": "user_audio_chunk", "user_audio_chunk": "AAAA"}',
        '{"user_audio_chunk": "!!"}',
        '{"type": "pong", "event_id": "3"}',
        '{"type": "nope"}',
        '{"type": "user_message", "txt": "x"}',
        '{"type": "conversation_initiation_client_data", "dynamic_variables": {"a": [1]}}',
        "[]",
    ):
        with pytest.raises(ProtocolViolation):
            validate_convai_message(bad)


# ------------------------------------------------------------------------------------------------ TTS


async def test_multi_stream_contexts_flush_close_and_sdk_shapes() -> None:
    async with ElevenLabsEmulator(config=FAST) as emu, connect(tts_url(emu), additional_headers=KEY) as ws:
        await ws.send(
            json.dumps(
                {
                    "text": " ",
                    "context_id": "turn-1",
                    "voice_settings": {"stability": 0.5},
                    "generation_config": {"chunk_length_schedule": [50]},
                }
            )
        )
        await ws.send(json.dumps({"text": "Sure, let me check that for you. ", "context_id": "turn-1"}))
        await ws.send(json.dumps({"text": "", "context_id": "turn-1", "flush": True}))
        audio = bytearray()
        chars: list[str] = []
        total_ms = 0
        while len(chars) < len("Sure, let me check that for you. "):
            m = await recv(ws)
            out = AudioOutputMulti.model_validate(m)  # the SDK's own model, camelCase aliases
            assert out.context_id == "turn-1" and m["isFinal"] is False
            assert out.alignment is not None and out.alignment.char_durations_ms is not None
            assert m["alignment"]["charsDurationsMs"] == out.alignment.char_durations_ms
            audio += base64.b64decode(out.audio)
            chars += out.alignment.chars or []
            total_ms += sum(out.alignment.char_durations_ms)
        assert "".join(chars) == "Sure, let me check that for you. "
        assert len(audio) == total_ms * 8  # alignment durations match the μ-law audio length
        assert is_speech_ulaw(bytes(audio)) > 0.8
        await ws.send(json.dumps({"context_id": "turn-1", "close_context": True}))
        fin = FinalOutputMulti.model_validate(await recv(ws))
        assert fin.is_final is True and fin.context_id == "turn-1"
        await ws.send(json.dumps({"close_socket": True}))
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1000
    sess = emu.tts_sessions[0]
    assert sess.voice_id == "voice123" and sess.output_format == "ulaw_8000"
    assert sess.closed_contexts == ["turn-1"]


async def test_chunk_length_schedule_buffers_until_threshold() -> None:
    async with ElevenLabsEmulator(config=FAST) as emu, connect(tts_url(emu), additional_headers=KEY) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "a"}))  # default schedule: 120 chars first
        await ws.send(json.dumps({"text": "Short text. ", "context_id": "a"}))
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.2)
        await ws.send(json.dumps({"text": "x" * 120 + " ", "context_id": "a"}))
        m = await recv(ws)
        assert m["contextId"] == "a" and m["alignment"]["chars"][0] == "S"


async def test_close_context_discards_unsent_audio_barge_in() -> None:
    cfg = ElevenLabsConfig(ms_per_char=40.0, chunk_ms=100.0, speed=1.0, ping_interval_s=None)
    long_text = "This is a rather long answer that keeps going for a good while. "
    async with ElevenLabsEmulator(config=cfg) as emu, connect(tts_url(emu), additional_headers=KEY) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "t1"}))
        await ws.send(json.dumps({"text": long_text, "context_id": "t1", "flush": True}))
        first = await recv(ws)
        await ws.send(json.dumps({"context_id": "t1", "close_context": True}))
        fin, seen = await recv_until(ws, lambda m: m.get("isFinal") is True)
        assert fin["contextId"] == "t1"
        sent_chars = sum(len(m["alignment"]["chars"]) for m in [first, *seen] if "audio" in m)
        assert sent_chars < len(long_text)  # the rest of the context was discarded, never sent
        assert emu.tts_sessions[0].contexts["t1"].audio_ms == sent_chars * 40
        # a new context works on the same socket
        await ws.send(json.dumps({"text": "Okay. ", "context_id": "t2", "flush": True}))
        m = await recv(ws)
        assert m["contextId"] == "t2"


async def test_five_context_limit_closes_1008() -> None:
    async with ElevenLabsEmulator(config=FAST) as emu, connect(tts_url(emu), additional_headers=KEY) as ws:
        for i in range(5):
            await ws.send(json.dumps({"text": " ", "context_id": f"c{i}"}))
        await ws.send(json.dumps({"text": "hi ", "context_id": "c5"}))
        err = await recv(ws)
        assert err["error"] == "max_active_conversations" and err["code"] == 1008
        assert "(5)" in err["message"]
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1008


async def test_closed_contexts_free_slots() -> None:
    async with ElevenLabsEmulator(config=FAST) as emu, connect(tts_url(emu), additional_headers=KEY) as ws:
        for i in range(12):
            await ws.send(json.dumps({"text": " ", "context_id": f"c{i}"}))
            await ws.send(json.dumps({"context_id": f"c{i}", "close_context": True}))
            assert (await recv(ws))["contextId"] == f"c{i}"
        assert len(emu.tts_sessions[0].closed_contexts) == 12


async def test_inactivity_timeout_1008_and_keepalive() -> None:
    cfg = ElevenLabsConfig(ms_per_char=20.0, inactivity_timeout_s=0.3, ping_interval_s=None)
    async with ElevenLabsEmulator(config=cfg) as emu, connect(tts_url(emu), additional_headers=KEY) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "a"}))
        for _ in range(3):  # keep-alives hold the socket open past the timeout
            await asyncio.sleep(0.15)
            await ws.send(json.dumps({"text": "", "context_id": "a"}))
        err = await recv(ws, timeout=2.0)
        assert err["error"] == "input_timeout_exceeded" and err["code"] == 1008
        assert err["message"].startswith(
            "Have not received a new text input within the timeout of 0.3 seconds"
        )
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1008


async def test_stream_input_single_context_end_of_input() -> None:
    async with ElevenLabsEmulator(config=FAST) as emu:
        url = tts_url(emu, multi=False, fmt="pcm_16000")
        async with connect(url) as ws:  # key in the first message instead of the header
            await ws.send(json.dumps({"text": " ", "xi-api-key": "xi-test"}))
            await ws.send(json.dumps({"text": "Hello world. "}))
            await ws.send(json.dumps({"text": ""}))
            fin, seen = await recv_until(ws, lambda m: m.get("isFinal") is True)
            assert fin == {"isFinal": True}
            audio = [AudioOutput.model_validate(m) for m in seen[:-1]]
            assert all("contextId" not in m for m in seen)
            pcm = b"".join(base64.b64decode(a.audio) for a in audio)
            assert len(pcm) == len("Hello world. ") * 20 * 32
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1000


async def test_tts_auth() -> None:
    async with ElevenLabsEmulator(config=ElevenLabsConfig(api_key="xi-right", ping_interval_s=None)) as emu:
        with pytest.raises(InvalidStatus) as info:
            async with connect(tts_url(emu), additional_headers={"xi-api-key": "xi-wrong"}):
                pass
        assert info.value.response.status_code == 401
        async with connect(tts_url(emu)) as ws:  # no key anywhere
            await ws.send(json.dumps({"text": " ", "context_id": "a"}))
            err = await recv(ws)
            assert err["code"] == 1008 and err["error"] == "invalid_api_key"
        with pytest.raises(InvalidStatus) as info:
            async with connect(
                tts_url(emu, fmt="mp3_44100_128"), additional_headers={"xi-api-key": "xi-right"}
            ):
                pass
        assert info.value.response.status_code == 422


async def test_tts_bad_message_closes_1008() -> None:
    async with ElevenLabsEmulator(config=FAST) as emu, connect(tts_url(emu), additional_headers=KEY) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "a"}))
        await ws.send(json.dumps({"text": "hi", "contextId": "a"}))  # camelCase is the server's spelling only
        err = await recv(ws)
        assert err["code"] == 1008 and "contextId" in err["message"]
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1008


async def test_tts_fault_drop_and_refuse() -> None:
    faults = ElevenLabsFaults(drop_after_audio_ms=100)
    async with ElevenLabsEmulator(config=FAST, faults=faults) as emu:
        async with connect(tts_url(emu), additional_headers=KEY) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "a"}))
            await ws.send(json.dumps({"text": "a longer sentence here ", "context_id": "a", "flush": True}))
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(ws)
            assert ws.close_code == 1006
        emu.faults.refuse_connections = True
        with pytest.raises(InvalidStatus) as info:
            async with connect(tts_url(emu), additional_headers=KEY):
                pass
        assert info.value.response.status_code == 503


# ------------------------------------------------------------------------------------------------ ConvAI


async def send_audio(ws: ClientConnection, data: bytes, chunk: int = 160) -> None:
    for i in range(0, len(data), chunk):
        await ws.send(json.dumps({"user_audio_chunk": base64.b64encode(data[i : i + chunk]).decode()}))


async def test_convai_turn_metadata_transcript_response_audio() -> None:
    script = Script([Reply("Of course, {{caller_name}}.", user_transcript="hello can you help me")])
    cfg = ElevenLabsConfig(
        ms_per_char=20.0, chunk_ms=100.0, ping_interval_s=None, first_message="Hi {{caller_name}}"
    )
    async with ElevenLabsEmulator(script, config=cfg) as emu:  # noqa: SIM117 - checks run after the socket closes
        async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=agent_1") as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "conversation_initiation_client_data",
                        "dynamic_variables": {"caller_name": "Ann", "system__call_sid": "CA1"},
                        "conversation_config_override": {"agent": {"language": "en"}},
                    }
                )
            )
            meta = await recv(ws)
            assert meta["type"] == "conversation_initiation_metadata"
            ev = meta["conversation_initiation_metadata_event"]
            assert (
                ev["agent_output_audio_format"] == "ulaw_8000"
                and ev["user_input_audio_format"] == "ulaw_8000"
            )
            first = await recv(ws)
            assert first == {"type": "agent_response", "agent_response_event": {"agent_response": "Hi Ann"}}
            # greeting "Hi Ann" = 6 chars = 2 audio events of 5 + 1 characters; wait for the last one
            _, greeting = await recv_until(
                ws, lambda m: m["type"] == "audio" and len(m["audio_event"]["alignment"]["chars"]) < 5
            )
            await send_audio(ws, silence_ulaw(300) + speech_ulaw("hello can you help me", 40.0) + silence_ulaw(700))
            tr, _ = await recv_until(ws, lambda m: m["type"] == "user_transcript")
            assert tr["user_transcription_event"]["user_transcript"] == "hello can you help me"
            resp, _ = await recv_until(ws, lambda m: m["type"] == "agent_response")
            assert resp["agent_response_event"]["agent_response"] == "Of course, Ann."
            audio = bytearray()
            ids: list[int] = []
            while len(audio) < len("Of course, Ann.") * 20 * 8:
                m = await recv(ws)
                assert m["type"] == "audio"
                ids.append(m["audio_event"]["event_id"])
                audio += base64.b64decode(m["audio_event"]["audio_base_64"])
            assert ids == sorted(ids) and ids[0] > greeting[-1]["audio_event"]["event_id"]
            assert is_speech_ulaw(bytes(audio)) > 0.8
    conv = emu.conversations[0]
    assert conv.dynamic_variables["caller_name"] == "Ann" and conv.agent_id == "agent_1"
    assert conv.user_transcripts == ["hello can you help me"]


async def test_convai_interruption_when_user_speaks_over_agent() -> None:
    cfg = ElevenLabsConfig(ms_per_char=50.0, chunk_ms=100.0, speed=1.0, ping_interval_s=None)
    script = Script(["This is a long answer that the caller is going to interrupt before it ends."])
    async with ElevenLabsEmulator(script, config=cfg) as emu:  # noqa: SIM117 - checks run after the socket closes
        async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=a") as ws:
            await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            await recv(ws)
            await ws.send(json.dumps({"type": "user_message", "text": "tell me something"}))
            await recv_until(ws, lambda m: m["type"] == "audio")
            await send_audio(ws, speech_ulaw("no wait", 40.0))
            intr, seen = await recv_until(ws, lambda m: m["type"] == "interruption")
            last_audio = [m for m in seen if m["type"] == "audio"]
            if last_audio:
                assert intr["interruption_event"]["event_id"] == last_audio[-1]["audio_event"]["event_id"]
            corr = await recv(ws)
            assert corr["type"] == "agent_response_correction"
            ev = corr["agent_response_correction_event"]
            assert ev["original_agent_response"].startswith(ev["corrected_agent_response"])
            assert len(ev["corrected_agent_response"]) < len(ev["original_agent_response"])
    assert emu.conversations[0].interruptions == 1


async def test_convai_ping_pong_vad_score_and_pcm16_formats() -> None:
    cfg = ElevenLabsConfig(
        ms_per_char=20.0,
        ping_interval_s=0.05,
        vad_scores=True,
        agent_output_audio_format="pcm_16000",
        user_input_audio_format="pcm_16000",
    )
    async with ElevenLabsEmulator(["ok"], config=cfg) as emu:  # noqa: SIM117 - checks run after the socket closes
        # max_queue=None: the test leaves vad_score events unread; a bounded queue would stop the client
        # reading the close frame (websockets flow control) and the close would wait for its 10 s timeout.
        async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=a", max_queue=None) as ws:
            await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            meta = await recv(ws)
            assert meta["conversation_initiation_metadata_event"]["agent_output_audio_format"] == "pcm_16000"
            ping, _ = await recv_until(ws, lambda m: m["type"] == "ping")
            await ws.send(json.dumps({"type": "pong", "event_id": ping["ping_event"]["event_id"]}))
            await emu.wait_for(lambda: emu.conversations[0].pongs == [ping["ping_event"]["event_id"]])
            pcm = voice.render("testing one two", 16000, 40.0).astype("<i2").tobytes()
            await send_audio(ws, pcm, chunk=640)
            score, _ = await recv_until(
                ws, lambda m: m["type"] == "vad_score" and m["vad_score_event"]["vad_score"] > 0.5
            )
            assert score["vad_score_event"]["vad_score"] == 1.0


async def test_convai_signed_url_flow_with_sdk_client() -> None:
    from elevenlabs import ElevenLabs

    cfg = ElevenLabsConfig(ms_per_char=20.0, private_agent=True, ping_interval_s=None)
    async with ElevenLabsEmulator(["hi"], config=cfg) as emu:
        client = ElevenLabs(api_key="xi-test", base_url=emu.base_url)
        resp = await asyncio.to_thread(
            client.conversational_ai.conversations.get_signed_url, agent_id="agent_9"
        )
        assert resp.signed_url.startswith(f"{emu.ws_url}/v1/convai/conversation?agent_id=agent_9&")
        async with connect(resp.signed_url) as ws:
            await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            assert (await recv(ws))["type"] == "conversation_initiation_metadata"
        with pytest.raises(InvalidStatus) as info:  # private agent, no signature, no key
            async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=agent_9"):
                pass
        assert info.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as info:  # forged signature
            async with connect(
                f"{emu.ws_url}/v1/convai/conversation?agent_id=agent_9&conversation_signature=x"
            ):
                pass
        assert info.value.response.status_code == 403
        async with connect(
            f"{emu.ws_url}/v1/convai/conversation?agent_id=agent_9", additional_headers=KEY
        ) as ws:
            await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            assert (await recv(ws))["type"] == "conversation_initiation_metadata"


async def test_convai_with_sdk_async_conversation() -> None:
    from elevenlabs import ElevenLabs
    from elevenlabs.conversational_ai.conversation import AsyncConversation, ConversationInitiationData

    responses: list[str] = []
    got = asyncio.Event()

    async def on_agent(text: str) -> None:
        responses.append(text)
        got.set()

    cfg = ElevenLabsConfig(ms_per_char=20.0, ping_interval_s=None, first_message="Hello {{who}}")
    async with ElevenLabsEmulator(["fine"], config=cfg) as emu:
        client = ElevenLabs(api_key="xi-test", base_url=emu.base_url)
        conv = AsyncConversation(
            client,
            "agent_sdk",
            requires_auth=False,
            callback_agent_response=on_agent,
            config=ConversationInitiationData(dynamic_variables={"who": "SDK"}),
        )
        await conv.start_session()
        await asyncio.wait_for(got.wait(), 5.0)
        await conv.end_session()
        await conv.wait_for_session_end()
    assert responses == ["Hello SDK"]
    init = emu.conversations[0].received[0]
    assert init["type"] == "conversation_initiation_client_data"


async def test_convai_override_not_allowed_and_missing_variable_close_1008() -> None:
    cfg = ElevenLabsConfig(
        ping_interval_s=None, allowed_overrides=frozenset({"agent.language"}), first_message="Hi {{name}}"
    )
    async with ElevenLabsEmulator(config=cfg) as emu:
        async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=a") as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "conversation_initiation_client_data",
                        "dynamic_variables": {"name": "x"},
                        "conversation_config_override": {"agent": {"prompt": {"prompt": "be evil"}}},
                    }
                )
            )
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1008 and "agent.prompt.prompt" in (ws.close_reason or "")
        async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=a") as ws:
            await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(ws)
            assert ws.close_code == 1008 and "name" in (ws.close_reason or "")
        async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=a") as ws:
            await ws.send("garbage")
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1008


async def test_convai_client_tool_call() -> None:
    script = Script(
        [Reply(function_call=FunctionCall("lookup", '{"id": 7}', call_id="tc_1")), "It is ready."]
    )
    async with ElevenLabsEmulator(script, config=FAST) as emu:  # noqa: SIM117 - checks run after the socket closes
        async with connect(f"{emu.ws_url}/v1/convai/conversation?agent_id=a") as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "conversation_initiation_client_data",
                        "conversation_config_override": {"conversation": {"text_only": True}},
                    }
                )
            )
            await recv(ws)
            await ws.send(json.dumps({"type": "user_message", "text": "status?"}))
            call = await recv(ws)
            assert call == {
                "type": "client_tool_call",
                "client_tool_call": {"tool_name": "lookup", "tool_call_id": "tc_1", "parameters": {"id": 7}},
            }
            await ws.send(
                json.dumps(
                    {
                        "type": "client_tool_result",
                        "tool_call_id": "tc_1",
                        "result": "ready",
                        "is_error": False,
                    }
                )
            )
            resp = await recv(ws)
            assert resp["agent_response_event"]["agent_response"] == "It is ready."
            with pytest.raises(TimeoutError):  # text_only: no audio
                await recv(ws, timeout=0.2)


# ------------------------------------------------------------------------------------------------ CLI


def test_emulate_cli_prints_base_urls() -> None:
    for vendor, port, line in (
        ("openai", 18931, "OPENAI_WEBSOCKET_BASE_URL=ws://127.0.0.1:18931/v1"),
        ("elevenlabs", 18932, "ELEVENLABS_BASE_URL=http://127.0.0.1:18932"),
    ):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtvoice",
                "emulate",
                vendor,
                "--port",
                str(port),
                "--reply",
                "Hello, how can I help?",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
            assert line in lines
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0


# ------------------------------------------------------------------------------------------------ fuzz

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "text",
        "context_id",
        "flush",
        "close_context",
        "close_socket",
        "voice_settings",
        "type",
        "user_audio_chunk",
        "event_id",
        "dynamic_variables",
        "x",
    ]
)


_TTS = TtsValidator()


@settings(max_examples=200, deadline=None)
@given(msg=st.dictionaries(_keys, _json, max_size=4), multi=st.booleans(), first=st.booleans())
def test_validators_never_crash(msg: dict[str, Any], multi: bool, first: bool) -> None:
    text = json.dumps(msg)
    with contextlib.suppress(ProtocolViolation):
        _TTS.validate(text, multi, first)
    with contextlib.suppress(ProtocolViolation):
        validate_convai_message(text)
