"""Sans-I/O tests of the OpenAI Realtime client logic (RealtimeCore) and the shared vendor helpers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtvoice.agents.base import Heard
from rtvoice.agents.openai_realtime import RealtimeCore
from rtvoice.agents.vendor_common import Alignment, Usage, WordChunker, clamp_audio_end_ms, ws_base_url
from rtvoice.config import Settings


class RecordingSink:
    """Records every sink call as a tuple (method, *args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        self.calls.append(("bot_audio", item_id, bytes(ulaw)))

    def bot_audio_done(self, item_id: str) -> None:
        self.calls.append(("bot_audio_done", item_id))

    def bot_text(self, item_id: str, text: str, final: bool) -> None:
        self.calls.append(("bot_text", item_id, text, final))

    def caller_text(self, text: str, final: bool) -> None:
        self.calls.append(("caller_text", text, final))

    def speech_started(self) -> None:
        self.calls.append(("speech_started",))

    def interrupt(self) -> None:
        self.calls.append(("interrupt",))

    def hang_up(self, reason: str) -> None:
        self.calls.append(("hang_up", reason))

    def fault(self, kind: str, message: str, fatal: bool) -> None:
        self.calls.append(("fault", kind, message, fatal))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


def settings(**kw: Any) -> Settings:
    return Settings(agent="openai", openai_api_key="sk-test", **kw)


def core_with_sink(**kw: Any) -> tuple[RealtimeCore, RecordingSink]:
    core = RealtimeCore(settings(**kw))
    sink = RecordingSink()
    core.attach(sink)
    return core, sink


def sent(core: RealtimeCore) -> list[dict[str, Any]]:
    out = [json.loads(m) for m in core.outbox]
    core.outbox.clear()
    return out


def audio_delta(item: str, resp: str, data: bytes) -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "response_id": resp,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(data).decode(),
    }


def start_response(core: RealtimeCore, item: str = "item_a", resp: str = "resp_1") -> None:
    core.feed({"type": "response.created", "response": {"id": resp, "status": "in_progress"}}, 0.0)
    core.feed(
        {
            "type": "response.output_item.added",
            "response_id": resp,
            "output_index": 0,
            "item": {"id": item, "type": "message", "role": "assistant", "content": []},
        },
        0.0,
    )


def test_session_update_is_ga_shape_pcmu() -> None:
    core, _ = core_with_sink(instructions="Be brief.", openai_voice="cedar")
    core.queue_session_update()
    (ev,) = sent(core)
    assert ev["type"] == "session.update"
    s = ev["session"]
    assert s["type"] == "realtime"
    assert s["instructions"] == "Be brief."
    assert s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "cedar"}
    assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert s["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"
    # The SDK's own pydantic model for the client event accepts it (GA union, no beta fields).
    from openai.types.realtime import SessionUpdateEvent

    SessionUpdateEvent.model_validate(ev)


def test_session_update_pcm24_and_text_only() -> None:
    core = RealtimeCore(settings(openai_audio_format="pcm"), text_only=True)
    core.queue_session_update()
    (ev,) = sent(core)
    s = ev["session"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["output_modalities"] == ["text"]
    assert "output" not in s["audio"]


def test_audio_text_and_transcripts_reach_the_sink() -> None:
    core, sink = core_with_sink()
    core.feed({"type": "input_audio_buffer.speech_started", "audio_start_ms": 10, "item_id": "u1"}, 1.0)
    core.feed({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "u1"}, 2.0)
    start_response(core)
    core.feed(audio_delta("item_a", "resp_1", b"\x01" * 800), 2.3)
    core.feed(
        {"type": "response.output_audio_transcript.delta", "response_id": "resp_1", "item_id": "item_a",
         "delta": "Hello"},
        2.3,
    )  # fmt: skip
    core.feed(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1", "content_index": 0,
         "transcript": "hi there"},
        2.4,
    )  # fmt: skip
    core.feed({"type": "response.output_audio.done", "response_id": "resp_1", "item_id": "item_a"}, 2.5)
    core.feed(
        {"type": "response.done", "response": {"id": "resp_1", "status": "completed",
                                               "usage": {"input_tokens": 10, "output_tokens": 20,
                                                         "output_token_details": {"audio_tokens": 15}}}},
        2.5,
    )  # fmt: skip
    assert sink.of("speech_started") == [("speech_started",)]
    assert sink.of("bot_audio") == [("bot_audio", "item_a", b"\x01" * 800)]  # pcmu: bytes untouched
    assert sink.of("bot_text") == [("bot_text", "item_a", "Hello", False)]
    assert sink.of("caller_text") == [("caller_text", "hi there", True)]
    assert sink.of("bot_audio_done") == [("bot_audio_done", "item_a")]
    assert core.usage.output_audio_tokens == 15 and core.usage.input_tokens == 10
    assert core.first_output_latencies == [pytest.approx(0.3)]
    assert core.active_response is None
    assert core.items["item_a"].produced_ms == 100.0


def test_barge_in_cancels_and_truncates_clamped() -> None:
    core, sink = core_with_sink()
    start_response(core)
    core.feed(audio_delta("item_a", "resp_1", b"\x00" * 8000), 0.1)  # 1000 ms produced
    core.barge_in(Heard("item_a", 1500))  # the ledger may round up: clamp to what exists
    evs = sent(core)
    assert [e["type"] for e in evs] == ["response.cancel", "conversation.item.truncate"]
    assert evs[0]["response_id"] == "resp_1"
    assert evs[1] == {"type": "conversation.item.truncate", "item_id": "item_a", "content_index": 0,
                      "audio_end_ms": 1000}  # fmt: skip
    assert sink.of("bot_audio_done") == [("bot_audio_done", "item_a")]
    # late audio of the cancelled response is dropped
    core.feed(audio_delta("item_a", "resp_1", b"\x00" * 160), 0.2)
    assert len(sink.of("bot_audio")) == 1
    from openai.types.realtime import ConversationItemTruncateEvent, ResponseCancelEvent

    ResponseCancelEvent.model_validate(evs[0])
    ConversationItemTruncateEvent.model_validate(evs[1])


def test_barge_in_without_heard_never_truncates() -> None:
    core, _ = core_with_sink()
    start_response(core)
    core.feed(audio_delta("item_a", "resp_1", b"\x00" * 800), 0.1)
    core.barge_in(None)
    assert [e["type"] for e in sent(core)] == ["response.cancel"]


def test_barge_in_after_response_done_truncates_without_cancel() -> None:
    core, _ = core_with_sink()
    start_response(core)
    core.feed(audio_delta("item_a", "resp_1", b"\x00" * 8000), 0.1)
    core.feed({"type": "response.output_audio.done", "response_id": "resp_1", "item_id": "item_a"}, 0.2)
    core.feed({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}, 0.2)
    core.barge_in(Heard("item_a", 420))
    assert sent(core) == [{"type": "conversation.item.truncate", "item_id": "item_a", "content_index": 0,
                           "audio_end_ms": 420}]  # fmt: skip
    # the whole item heard: nothing was cut off, so no truncate
    core.barge_in(Heard("item_a", 1000))
    assert sent(core) == []


def test_barge_in_on_unknown_item_sends_nothing() -> None:
    core, _ = core_with_sink()
    core.barge_in(Heard("item_zzz", 300))
    assert sent(core) == []


def test_error_events_fatal_by_code() -> None:
    core, sink = core_with_sink()
    core.queue_session_update()
    session_id = sent(core)[0]["event_id"]
    core.feed(
        {"type": "error", "error": {"type": "invalid_request_error", "code": "response_cancel_not_active"}}, 0
    )
    assert sink.of("fault") == []  # harmless race with the server's own VAD cancel
    core.feed({"type": "error", "error": {"type": "invalid_request_error", "code": "conversation_already_has_"
                                          "active_response", "message": "busy"}}, 0)  # fmt: skip
    core.feed({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                          "message": "bad", "event_id": session_id}}, 0)  # fmt: skip
    core.feed({"type": "error", "error": {"type": "invalid_request_error", "code": "beta_api_shape_disabled",
                                          "message": "gone"}}, 0)  # fmt: skip
    faults = sink.of("fault")
    kinds = [(f[1], f[3]) for f in faults]
    assert kinds == [("error_event", False), ("error_event", True), ("error_event", True)]


def test_stall_retries_then_is_fatal() -> None:
    core, sink = core_with_sink(vendor_first_byte_timeout_s=2.0)
    core.feed({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "u1"}, 10.0)
    core.feed({"type": "response.created", "response": {"id": "resp_1"}}, 10.1)
    core.check_stall(11.0)
    assert sink.of("fault") == []
    core.check_stall(12.5)
    assert [(f[1], f[3]) for f in sink.of("fault")] == [("stall", False)]
    assert [e["type"] for e in sent(core)] == ["response.cancel", "response.create"]
    core.check_stall(15.0)
    assert [(f[1], f[3]) for f in sink.of("fault")] == [("stall", False), ("stall", True)]


def test_speech_resumed_cancels_the_stall_wait() -> None:
    core, sink = core_with_sink(vendor_first_byte_timeout_s=2.0)
    core.feed({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "u1"}, 10.0)
    core.feed({"type": "input_audio_buffer.speech_started", "audio_start_ms": 950, "item_id": "u2"}, 10.5)
    core.check_stall(20.0)
    assert sink.of("fault") == []


def test_faults_before_attach_are_replayed() -> None:
    core = RealtimeCore(settings())
    core.fault("connect", "refused", True)
    sink = RecordingSink()
    core.attach(sink)
    assert sink.of("fault") == [("fault", "connect", "refused", True)]


def test_context_replay_after_reconnect() -> None:
    core, _ = core_with_sink()
    user_item = {"id": "u1", "type": "message", "role": "user", "content": [{"type": "input_audio"}]}
    core.feed({"type": "conversation.item.added", "item": user_item}, 0)
    core.feed({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
               "content_index": 0, "transcript": "Book a table"}, 0)  # fmt: skip
    start_response(core)
    core.feed({"type": "response.output_audio_transcript.done", "response_id": "resp_1", "item_id": "item_a",
               "transcript": "For how many?"}, 0)  # fmt: skip
    core.disconnected()
    core.queue_session_update()
    core.queue_context_replay()
    evs = sent(core)
    assert evs[0]["type"] == "session.update"
    items = [e["item"] for e in evs[1:]]
    assert items == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Book a table"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "For how many?"}],
        },
    ]
    from openai.types.realtime import ConversationItemCreateEvent

    for e in evs[1:]:
        ConversationItemCreateEvent.model_validate(e)


def test_greeting_item_and_response() -> None:
    core, _ = core_with_sink(greeting="Thanks for calling.")
    core.queue_greeting(5.0)
    evs = sent(core)
    assert [e["type"] for e in evs] == ["conversation.item.create", "response.create"]
    assert "Thanks for calling." in evs[0]["item"]["content"][0]["text"]
    assert core.awaiting_since == 5.0


# --- shared helpers -----------------------------------------------------------------------------------------


def test_ws_base_url() -> None:
    assert ws_base_url("https://api.elevenlabs.io") == "wss://api.elevenlabs.io"
    assert ws_base_url("http://127.0.0.1:9000/") == "ws://127.0.0.1:9000"


@given(st.integers(-10_000, 10_000_000), st.floats(0, 1e7, allow_nan=False))
def test_clamp_audio_end_ms(heard: int, produced: float) -> None:
    end = clamp_audio_end_ms(heard, produced)
    assert 0 <= end <= produced
    if 0 <= heard <= int(produced):
        assert end == heard


def test_alignment_cuts_to_heard_whole_words() -> None:
    al = Alignment()
    text1 = "Hello there, "
    al.add_chunk({"chars": list(text1), "charStartTimesMs": [i * 50 for i in range(len(text1))]}, 650)
    text2 = "how are you"
    al.add_chunk({"chars": list(text2), "charStartTimesMs": [i * 50 for i in range(len(text2))]}, 550)
    assert al.text == "Hello there, how are you"
    assert al.heard_text(10_000) == "Hello there, how are you"
    assert al.heard_text(0) == ""
    assert al.heard_text(120) == ""  # "Hel" only: a partial word is dropped
    assert al.heard_text(650 + 100) == "Hello there,"  # second chunk shifted by the first one's 650 ms
    assert al.heard_text(650 + 160) == "Hello there, how"


@given(st.lists(st.text(alphabet="ab \n", max_size=8), max_size=20))
def test_word_chunker_never_splits_words(deltas: list[str]) -> None:
    ch = WordChunker()
    out = "".join(ch.feed(d) for d in deltas)
    tail = ch.finish()
    joined = "".join(deltas)
    assert (out + tail).rstrip(" ") == joined.rstrip(" ") or (out + tail) == joined + " "
    assert out == "" or out[-1] in " \n"


def test_usage_sums() -> None:
    u = Usage()
    u.add_openai({"input_tokens": 3, "input_token_details": {"cached_tokens": 2, "audio_tokens": 1}})
    u.add_openai(None)
    assert u.responses == 2 and u.input_tokens == 3 and u.cached_tokens == 2 and u.input_audio_tokens == 1
    assert u.as_dict()["input_tokens"] == 3
