"""Media Streams parser/serializer: Twilio's documented shapes, round trips, adversarial input."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtvoice.twilio import media as m
from rtvoice.twilio.media import ProtocolViolation

SID = "MZ" + "ab" * 16
CALL = "CA" + "12" * 16
ACC = "AC" + "34" * 16

# The shapes below are copied from Twilio's websocket-messages page (twilio.md §3.2).
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": SID,
        "start": {
            "accountSid": ACC,
            "streamSid": SID,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": {"FirstName": "Jane", "token": "t.1.n.m"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
)


def media_json(
    payload: bytes = b"\xff" * 160, seq: object = "4", chunk: str = "2", ts: str = "5", **over: object
) -> str:
    msg: dict[str, object] = {
        "event": "media",
        "sequenceNumber": seq,
        "streamSid": SID,
        "media": {
            "track": "inbound",
            "chunk": chunk,
            "timestamp": ts,
            "payload": base64.b64encode(payload).decode(),
        },
    }
    msg.update(over)
    return json.dumps(msg)


MEDIA_FIELDS = {"track": "inbound", "chunk": "1", "timestamp": "0"}


def test_parse_documented_messages() -> None:
    assert m.parse(CONNECTED) == m.Connected("Call", "1.0.0")
    start = m.parse(START)
    assert isinstance(start, m.Start)
    assert (start.stream_sid, start.call_sid, start.account_sid) == (SID, CALL, ACC)
    assert start.tracks == ("inbound",)
    assert start.custom_parameters == {"FirstName": "Jane", "token": "t.1.n.m"}
    fmt = (start.encoding, start.sample_rate, start.channels, start.sequence_number)
    assert fmt == ("audio/x-mulaw", 8000, 1, 1)
    media = m.parse(media_json(bytes(range(160))))
    assert media == m.Media(SID, 4, "inbound", 2, 5, bytes(range(160)))
    dtmf = (
        '{"event":"dtmf","sequenceNumber":"5","streamSid":"' + SID + '",'
        '"dtmf":{"track":"inbound_track","digit":"1"}}'
    )
    assert m.parse(dtmf) == m.Dtmf(SID, 5, "inbound_track", "1")
    mark = '{"event":"mark","sequenceNumber":"4","streamSid":"' + SID + '","mark":{"name":"my label"}}'
    assert m.parse(mark) == m.Mark(SID, 4, "my label")
    stop = (
        f'{{"event":"stop","sequenceNumber":"5","streamSid":"{SID}",'
        f'"stop":{{"accountSid":"{ACC}","callSid":"{CALL}"}}}}'
    )
    assert m.parse(stop) == m.Stop(SID, 5, CALL, ACC)
    assert m.parse(stop.encode()) == m.Stop(SID, 5, CALL, ACC)  # bytes are accepted too


def test_unknown_event_is_not_an_error() -> None:
    assert m.parse('{"event":"speech","streamSid":"x"}') == m.Unknown("speech")


@pytest.mark.parametrize("length", [0, 1, 7, 160, 161, 4000])
def test_any_payload_length(length: int) -> None:
    event = m.parse(media_json(b"\x01" * length))
    assert isinstance(event, m.Media) and event.payload == b"\x01" * length


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not_json"),
        ("{not json", "not_json"),
        (b"\xff\xfe{}", "not_json"),
        ("[" * 100_000 + "]" * 100_000, "not_json"),
        ("1" * 10_000, "not_json"),
        ("[1,2]", "not_object"),
        ('"media"', "not_object"),
        ("{}", "bad_event"),
        ('{"event":5}', "bad_event"),
        (media_json(seq=4), "bad_field"),  # numbers must be strings
        (media_json(seq=" 4"), "bad_field"),
        (media_json(seq="+4"), "bad_field"),
        (media_json(seq="4_0"), "bad_field"),
        (media_json(seq="²"), "bad_field"),
        (media_json(seq="1" * 40), "bad_field"),
        (media_json(chunk="-1"), "bad_field"),
        (media_json(ts=""), "bad_field"),
        (media_json(streamSid=None), "missing_field"),
        (media_json(streamSid=7), "bad_field"),
        (media_json(media="x"), "bad_field"),
        (media_json(media={**MEDIA_FIELDS, "payload": "***"}), "bad_base64"),
        (media_json(media={**MEDIA_FIELDS, "payload": "/w"}), "bad_base64"),
        (media_json(media={**MEDIA_FIELDS, "payload": 5}), "bad_field"),
        (media_json(media=MEDIA_FIELDS), "missing_field"),
        ('{"event":"dtmf","sequenceNumber":"1","streamSid":"MZ",'
         '"dtmf":{"track":"t","digit":"x"}}', "bad_field"),
        ('{"event":"mark","sequenceNumber":"1","streamSid":"MZ","mark":{}}', "missing_field"),
        ('{"event":"stop","sequenceNumber":"1","streamSid":"MZ"}', "missing_field"),
        ('{"event":"connected"}', "missing_field"),
        (START.replace('"sampleRate": 8000', '"sampleRate": "8000"'), "bad_field"),
        (START.replace('"channels": 1', '"channels": true'), "bad_field"),
        (START.replace('"FirstName": "Jane"', '"FirstName": 3'), "bad_field"),
        (START.replace('"tracks": ["inbound"]', '"tracks": "inbound"'), "bad_field"),
        (START.replace(f'"streamSid": "{SID}", "start"', '"streamSid": "MZother", "start"'), "bad_field"),
    ],
)
def test_adversarial_inputs_raise_protocol_violation(text: str | bytes, reason: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        m.parse(text)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    event=st.sampled_from(["media", "start", "dtmf", "mark", "stop", "connected", "clear", "x"]),
    body=st.dictionaries(
        st.sampled_from(["streamSid", "sequenceNumber", "media", "start", "dtmf", "mark", "stop", "version"]),
        json_values,
    ),
)
def test_fuzzed_messages_only_raise_protocol_violation(event: str, body: dict[str, object]) -> None:
    try:
        m.parse(json.dumps({"event": event, **body}))
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_garbage_only_raises_protocol_violation(data: bytes | str) -> None:
    try:
        m.parse(data)
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(sid=st.text(min_size=1, max_size=40), payload=st.binary(max_size=800), name=st.text(max_size=40))
def test_serializer_round_trip_exact_keys(sid: str, payload: bytes, name: str) -> None:
    media = json.loads(m.media_message(sid, payload))
    b64 = base64.b64encode(payload).decode()
    assert media == {"event": "media", "streamSid": sid, "media": {"payload": b64}}
    mark = json.loads(m.mark_message(sid, name))
    assert mark == {"event": "mark", "streamSid": sid, "mark": {"name": name}}
    assert json.loads(m.clear_message(sid)) == {"event": "clear", "streamSid": sid}
    writer = m.MessageWriter(sid)
    assert writer.media(payload) == m.media_message(sid, payload)
    assert writer.mark(name) == m.mark_message(sid, name)
    assert writer.clear() == m.clear_message(sid)
    # every message is valid UTF-8 text (lone surrogates are escaped, not emitted raw)
    m.mark_message(sid, name).encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=1000), seq=st.integers(0, 10**17), ts=st.integers(0, 10**12))
def test_parse_inverts_twilio_shape(payload: bytes, seq: int, ts: int) -> None:
    event = m.parse(media_json(payload, seq=str(seq), chunk=str(seq), ts=str(ts)))
    assert event == m.Media(SID, seq, "inbound", seq, ts, payload)


def test_serializer_accepts_buffers_and_rejects_bad_sid() -> None:
    assert m.media_message(SID, memoryview(b"\x00\x01")) == m.media_message(SID, b"\x00\x01")
    assert m.media_message(SID, bytearray(b"\x00\x01")) == m.media_message(SID, b"\x00\x01")
    with pytest.raises(ValueError):
        m.media_message("", b"")
    with pytest.raises(ValueError):
        m.MessageWriter("")
