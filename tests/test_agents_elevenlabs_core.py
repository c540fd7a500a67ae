"""Sans-I/O tests of the ElevenLabs clients (ConvAI core, multi-context TTS core) and the openai-elevenlabs
barge-in text correction (cores fed with the vendors' wire messages; no sockets)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from agents_vendor_testutil import RecordingSink
from rtvoice.agents.base import CallInfo, Heard
from rtvoice.agents.elevenlabs_agent import ConvAICore
from rtvoice.agents.openai_elevenlabs import OpenAIElevenLabsAgent, TtsCore
from rtvoice.config import ConfigError, Settings

CALL = CallInfo(call_sid="CA" + "1" * 32, stream_sid="MZ" + "1" * 32, from_number="+15550001111",
                to_number="+15559998888")  # fmt: skip


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def drain(outbox: Any) -> list[dict[str, Any]]:
    out = [json.loads(m) for m in outbox]
    outbox.clear()
    return out


# --- ConvAI -------------------------------------------------------------------------------------------------


def convai(**kw: Any) -> tuple[ConvAICore, RecordingSink]:
    core = ConvAICore(Settings(agent="elevenlabs-agent", elevenlabs_agent_id="agent_x", **kw))
    sink = RecordingSink()
    core.attach(sink)
    return core, sink


def metadata(out_fmt: str = "ulaw_8000", in_fmt: str = "ulaw_8000") -> dict[str, Any]:
    return {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": "conv_1",
            "agent_output_audio_format": out_fmt,
            "user_input_audio_format": in_fmt,
        },
    }


def audio(eid: int, data: bytes) -> dict[str, Any]:
    return {"type": "audio", "audio_event": {"audio_base_64": b64(data), "event_id": eid}}


def test_missing_agent_id_is_a_clear_startup_error() -> None:
    with pytest.raises(ConfigError, match="ELEVENLABS_AGENT_ID"):
        Settings(agent="elevenlabs-agent").check_agent_credentials()
    with pytest.raises(ConfigError, match="ELEVENLABS_API_KEY"):
        s = Settings(agent="elevenlabs-agent", elevenlabs_agent_id="a", elevenlabs_signed_url=True)
        s.check_agent_credentials()


def test_initiation_dynamic_variables_and_overrides() -> None:
    core, _ = convai()
    msg = core.initiation(CALL)
    assert msg["type"] == "conversation_initiation_client_data"
    assert msg["dynamic_variables"] == {"caller_number": "+15550001111", "called_number": "+15559998888",
                                        "call_sid": CALL.call_sid}  # fmt: skip
    assert "conversation_config_override" not in msg  # nothing configured: no override (they are opt-in)
    core, _ = convai(instructions="You are Ada.", greeting="Hi, Ada here.")
    msg = core.initiation(CALL)
    assert msg["conversation_config_override"] == {
        "agent": {"prompt": {"prompt": "You are Ada."}, "first_message": "Hi, Ada here."}
    }


def test_ping_pong_keeps_event_id() -> None:
    core, _ = convai()
    core.feed({"type": "ping", "ping_event": {"event_id": 12345, "ping_ms": 50}}, 0)
    assert drain(core.outbox) == [{"type": "pong", "event_id": 12345}]


def test_ulaw_passthrough_both_ways_and_items_grouped_per_response() -> None:
    core, sink = convai()
    assert core.caller_audio(b"\x01" * 160, memoryview(b"\x00" * 320)) is None  # format not known yet
    core.feed(metadata(), 0)
    frame = bytes(range(160))
    assert core.caller_audio(frame, memoryview(b"\x00" * 320)) == frame
    core.feed({"type": "agent_response", "agent_response_event": {"agent_response": "Hello there."}}, 0)
    core.feed(audio(1, b"\x11" * 400), 0)
    core.feed(audio(2, b"\x22" * 400), 0)
    core.feed({"type": "user_transcript", "user_transcription_event": {"user_transcript": "hours?"}}, 1.0)
    core.feed({"type": "agent_response", "agent_response_event": {"agent_response": "Nine to five."}}, 1.2)
    core.feed(audio(3, b"\x33" * 160), 1.5)
    assert sink.audio("el-1") == b"\x11" * 400 + b"\x22" * 400
    assert sink.audio("el-3") == b"\x33" * 160
    assert ("bot_text", "el-1", "Hello there.", True) in sink.calls
    assert ("bot_text", "el-3", "Nine to five.", True) in sink.calls
    assert ("bot_audio_done", "el-1") in sink.calls
    assert ("caller_text", "hours?", True) in sink.calls
    assert core.first_output_latencies == [pytest.approx(0.5)]


def test_interruption_drops_older_audio_and_interrupts_the_call() -> None:
    core, sink = convai()
    core.feed(metadata(), 0)
    core.feed(audio(5, b"\x01" * 160), 0)
    core.feed({"type": "interruption", "interruption_event": {"event_id": 6}}, 0)
    core.feed(audio(6, b"\x02" * 160), 0)  # not newer than the interruption: dropped (SDK rule)
    core.feed(audio(7, b"\x03" * 160), 0)
    assert ("interrupt",) in sink.calls
    assert sink.audio() == b"\x01" * 160 + b"\x03" * 160
    assert [c[1] for c in sink.of("bot_audio")] == ["el-5", "el-7"]


def test_local_barge_in_mutes_until_next_response() -> None:
    core, sink = convai()
    core.feed(metadata(), 0)
    core.feed(audio(1, b"\x01" * 160), 0)
    core.barge_in(Heard("el-1", 20))
    core.feed(audio(2, b"\x02" * 160), 0)  # rest of the interrupted response
    core.feed({"type": "agent_response", "agent_response_event": {"agent_response": "Yes?"}}, 0)
    core.feed(audio(3, b"\x03" * 160), 0)
    assert sink.audio() == b"\x01" * 160 + b"\x03" * 160
    assert drain(core.outbox) == []  # nothing to truncate on ConvAI


def test_client_tool_call_gets_an_error_result() -> None:
    core, _ = convai()
    core.feed({"type": "client_tool_call", "client_tool_call": {"tool_name": "x", "tool_call_id": "t1",
                                                                "parameters": {}}}, 0)  # fmt: skip
    (msg,) = drain(core.outbox)
    assert msg["type"] == "client_tool_result" and msg["tool_call_id"] == "t1" and msg["is_error"] is True


def test_convai_stall() -> None:
    core, sink = convai(vendor_first_byte_timeout_s=1.0)
    core.feed(metadata(), 0)
    core.feed({"type": "user_transcript", "user_transcription_event": {"user_transcript": "hello"}}, 10.0)
    core.check_stall(10.5)
    core.check_stall(11.1)
    core.check_stall(12.2)
    assert sink.faults() == [("stall", False), ("stall", True)]


def test_unsupported_format_is_fatal() -> None:
    core, sink = convai()
    core.feed(metadata(out_fmt="mp3_44100_128"), 0)
    assert sink.faults() == [("format", True)]


# --- multi-context TTS --------------------------------------------------------------------------------------


def tts(**kw: Any) -> tuple[TtsCore, RecordingSink, list[tuple[str, str, bool]]]:
    core = TtsCore(Settings(agent="openai-elevenlabs", openai_api_key="k", elevenlabs_api_key="e", **kw))
    sink = RecordingSink()
    core.sink = sink
    faults: list[tuple[str, str, bool]] = []
    core.fault = lambda k, m, f: faults.append((k, m, f))
    return core, sink, faults


def tts_audio(ctx: str, text: str, ms_per_char: float = 50.0, final: bool = False) -> dict[str, Any]:
    n = int(len(text) * ms_per_char * 8)
    return {
        "audio": b64(b"\x55" * n),
        "isFinal": final,
        "alignment": {
            "chars": list(text),
            "charStartTimesMs": [int(i * ms_per_char) for i in range(len(text))],
            "charDurationsMs": [int(ms_per_char)] * len(text),
        },
        "contextId": ctx,
    }  # fmt: skip


def test_tts_url() -> None:
    core, _, _ = tts(elevenlabs_base_url="http://127.0.0.1:9/x", elevenlabs_voice_id="v1")
    assert core.url() == ("ws://127.0.0.1:9/x/v1/text-to-speech/v1/multi-stream-input?model_id=eleven_flash_v2_5"
                          "&output_format=ulaw_8000&inactivity_timeout=180")  # fmt: skip


def test_tts_context_lifecycle_words_flush_final() -> None:
    core, sink, _ = tts()
    ctx = core.start_turn("item_1")
    for d in ["Hel", "lo the", "re. How", " can I help?"]:
        core.text(ctx, d, 0.0)
    core.finish(ctx, 0.0)
    msgs = drain(core.outbox)
    assert msgs[0] == {"text": " ", "context_id": "ctx-1"}
    assert [m["text"] for m in msgs[1:-1]] == ["Hello ", "there. ", "How can I ", "help? "]
    assert msgs[-1] == {"text": "", "context_id": "ctx-1", "flush": True}
    core.feed(tts_audio("ctx-1", "Hello there. "), 0.3)
    core.feed({"isFinal": True, "contextId": "ctx-1"}, 0.4)
    assert sink.audio("ctx-1") == b"\x55" * (13 * 50 * 8)
    assert sink.of("bot_audio_done") == [("bot_audio_done", "ctx-1")]
    assert core.characters == len("Hello there. How can I help? ")


def test_tts_never_more_than_five_contexts_and_closes_finished() -> None:
    core, _, _ = tts()
    for i in range(12):
        ctx = core.start_turn(f"item_{i}")
        core.text(ctx, "word ", 0.0)
        core.finish(ctx, 0.0)
        assert len(core.contexts) <= 5
    closes = [m for m in drain(core.outbox) if m.get("close_context")]
    assert [m["context_id"] for m in closes] == [f"ctx-{i}" for i in range(1, 12)]


def test_tts_error_message_is_a_fault() -> None:
    core, _, faults = tts()
    core.feed({"message": "Maximum simultaneous contexts per WebSocket connection exceeded (5)",
               "error": "max_active_conversations", "code": 1008}, 0)  # fmt: skip
    assert faults and faults[0][0] == "tts_error" and faults[0][2] is True


def test_tts_stall_is_fatal() -> None:
    core, _, faults = tts(vendor_first_byte_timeout_s=1.0)
    ctx = core.start_turn("item_1")
    core.text(ctx, "Hello there ", 5.0)
    assert not core.check_stall(5.5)
    assert core.check_stall(6.1)
    assert faults[0][0] == "stall" and faults[0][2] is True


# --- openai-elevenlabs barge-in: keep only what the caller heard --------------------------------------------


def bridge() -> tuple[OpenAIElevenLabsAgent, RecordingSink]:
    settings = Settings(agent="openai-elevenlabs", openai_api_key="k", elevenlabs_api_key="e")
    agent = OpenAIElevenLabsAgent(settings)
    sink = RecordingSink()
    agent.core.attach(sink)
    agent.tts.sink = sink
    return agent, sink


def openai_text_turn(agent: OpenAIElevenLabsAgent, text: str, done: bool = True) -> None:
    core = agent.core
    core.feed({"type": "response.created", "response": {"id": "resp_1"}}, 0)
    item = {"id": "item_a", "type": "message", "role": "assistant", "content": []}
    core.feed({"type": "response.output_item.added", "response_id": "resp_1", "item": item}, 0)
    core.feed({"type": "conversation.item.added", "previous_item_id": "item_u", "item": item}, 0)
    for i in range(0, len(text), 7):
        core.feed({"type": "response.output_text.delta", "response_id": "resp_1", "item_id": "item_a",
                   "delta": text[i : i + 7]}, 0)  # fmt: skip
    if done:
        core.feed({"type": "response.output_text.done", "response_id": "resp_1", "item_id": "item_a",
                   "text": text}, 0)  # fmt: skip


def test_barge_in_keeps_heard_text_only() -> None:
    agent, sink = bridge()
    text = "We open at nine. We close at five."
    openai_text_turn(agent, text)
    agent.tts.feed(tts_audio("ctx-1", text + " "), 0.1)  # 50 ms per char
    drain(agent.core.outbox)
    drain(agent.tts.outbox)
    agent.barge_in(Heard("ctx-1", 17 * 50 + 10))  # heard "We open at nine. " and a sliver of "We"
    oa = drain(agent.core.outbox)
    assert oa[0] == {"type": "response.cancel", "response_id": "resp_1"}
    assert oa[1] == {"type": "conversation.item.delete", "item_id": "item_a"}
    assert oa[2] == {"type": "conversation.item.create", "previous_item_id": "item_u",
                     "item": {"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": "We open at nine."}]}}  # fmt: skip
    assert not any(e["type"] == "conversation.item.truncate" for e in oa)
    # all audio had been generated (the context completed and was closed): only the caller's playback was cut
    assert drain(agent.tts.outbox) == []
    assert ("bot_audio_done", "ctx-1") in sink.calls
    from openai.types.realtime import ConversationItemCreateEvent, ConversationItemDeleteEvent

    ConversationItemDeleteEvent.model_validate(oa[1])
    ConversationItemCreateEvent.model_validate(oa[2])
    # the history used for a reconnect holds the heard text too
    assert [t.text for t in agent.core.history if t.role == "assistant"] == ["We open at nine."]


def test_barge_in_everything_heard_changes_nothing() -> None:
    agent, _ = bridge()
    text = "Sure."
    openai_text_turn(agent, text)
    agent.tts.feed(tts_audio("ctx-1", text + " "), 0.1)
    agent.tts.feed({"isFinal": True, "contextId": "ctx-1"}, 0.2)
    agent.core.feed({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}, 0.2)
    drain(agent.core.outbox)
    drain(agent.tts.outbox)
    agent.barge_in(Heard("ctx-1", 10_000))
    assert drain(agent.core.outbox) == []
    assert drain(agent.tts.outbox) == []


def test_barge_in_before_any_audio_deletes_the_unheard_reply() -> None:
    agent, _ = bridge()
    openai_text_turn(agent, "A long answer that was never played", done=False)
    drain(agent.core.outbox)
    agent.barge_in(None)
    oa = drain(agent.core.outbox)
    assert [e["type"] for e in oa] == ["response.cancel", "conversation.item.delete"]
    assert drain(agent.tts.outbox)[-1] == {"context_id": "ctx-1", "close_context": True}


def test_tts_turn_completes_by_alignment_and_closes_its_context() -> None:
    core, sink, _ = tts()
    ctx = core.start_turn("item_1")
    core.text(ctx, "Hi there.", 0.0)
    core.finish(ctx, 0.0)
    drain(core.outbox)
    core.feed(tts_audio("ctx-1", "Hi "), 0.1)
    assert sink.of("bot_audio_done") == []
    core.feed(tts_audio("ctx-1", "there. "), 0.2)
    assert sink.of("bot_audio_done") == [("bot_audio_done", "ctx-1")]
    assert drain(core.outbox) == [{"context_id": "ctx-1", "close_context": True}]
    assert core.contexts == {}
    core.feed({"isFinal": True, "contextId": "ctx-1"}, 0.3)  # the server's answer to the close: nothing more
    assert len(sink.of("bot_audio_done")) == 1


def test_a_response_whose_audio_stopped_is_ended_and_late_audio_continues_it() -> None:
    """ConvAI sends no end-of-response event: audio idle for ITEM_IDLE_S ends the item (else the call would
    count the agent as speaking forever and clear Twilio when the caller next speaks)."""
    from rtvoice.agents.elevenlabs_agent import ITEM_IDLE_S

    core, sink = convai()
    core.feed(metadata(), 0)
    core.feed({"type": "agent_response", "agent_response_event": {"agent_response": "Hello there."}}, 0)
    core.feed(audio(1, b"\x11" * 400), 10.0)
    core.check_stall(10.0 + ITEM_IDLE_S / 2)
    assert sink.of("bot_audio_done") == []  # a short pause is not the end
    core.check_stall(10.0 + ITEM_IDLE_S)
    assert sink.of("bot_audio_done") == [("bot_audio_done", "el-1")]
    # Late audio of the same response: a continuation item, which does not take the next response's text.
    core.feed(audio(2, b"\x22" * 160), 11.0)
    core.feed({"type": "agent_response", "agent_response_event": {"agent_response": "Bye."}}, 12.0)
    core.feed(audio(3, b"\x33" * 160), 12.0)
    assert sink.audio("el-2") == b"\x22" * 160
    texts = [(c[1], c[2]) for c in sink.of("bot_text")]
    assert texts == [("el-1", "Hello there."), ("el-3", "Bye.")]
    assert ("bot_audio_done", "el-2") in sink.calls
