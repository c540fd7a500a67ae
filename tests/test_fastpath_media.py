"""The fast ``media`` parser (rtvoice.twilio.fastmedia) against the strict full parser (rtvoice.twilio.media).

The contract: for any input, ``fastmedia.parse`` has the same outcome as ``media.parse`` (the same event, or a
ProtocolViolation with the same reason), and ``parse_media_fast`` never raises and returns either None (fall
back) or exactly the full parser's event.
"""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtvoice.twilio import fastmedia, media
from rtvoice.twilio.media import Media, ProtocolViolation

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(fn: object, text: str | bytes) -> tuple[str, object]:
    try:
        return ("ok", fn(text))  # type: ignore[operator]
    except ProtocolViolation as exc:
        return ("err", exc.reason)


def check(text: str | bytes) -> None:
    fast = fastmedia.parse_media_fast(text) if isinstance(text, str) else None
    full = outcome(media.parse, text)
    if fast is not None:
        assert full == ("ok", fast)
    assert outcome(fastmedia.parse, text) == full


def twilio_order(seq: str, sid: str, track: str, chunk: str, ts: str, payload: str) -> str:
    return (
        f'{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"{track}","chunk":"{chunk}",'
        f'"timestamp":"{ts}","payload":"{payload}"}},"streamSid":"{sid}"}}'
    )


def sim_order(seq: str, sid: str, track: str, chunk: str, ts: str, payload: str) -> str:
    return (
        f'{{"event":"media","sequenceNumber":"{seq}","streamSid":"{sid}","media":{{"track":"{track}",'
        f'"chunk":"{chunk}","timestamp":"{ts}","payload":"{payload}"}}}}'
    )


# Values: mostly plausible, often hostile (unicode digits, escapes, quotes, backslashes, spaces, long runs).
counter = st.one_of(
    st.integers(0, 10**20).map(str),
    st.sampled_from(
        ["", "0", "007", "²", "١٢", " 4", "+4", "4_0", "-1", "1e3", "1.0", '4\\"', "9" * 18, "9" * 19]
    ),
    st.text(max_size=6),
)
sid = st.one_of(
    st.just("MZ" + "ab12" * 8),
    st.from_regex(r"[A-Za-z0-9]{1,40}", fullmatch=True),
    st.sampled_from(["", "MZ_1", "MZ 1", "MZ\\u0041", 'MZ\\"x', "MZé", "MZ\\\\"]),
    st.text(max_size=8),
)
track = st.one_of(
    st.sampled_from(["inbound", "outbound", "", "in bound", "inbound\\n", "ïnbound"]), st.text(max_size=8)
)
good_payload = st.binary(max_size=320).map(lambda b: base64.b64encode(b).decode())
payload = st.one_of(
    good_payload,
    good_payload.map(lambda p: p.rstrip("=")),
    good_payload.map(lambda p: p.replace("/", "\\/")),
    good_payload.map(lambda p: p + "="),
    good_payload.map(lambda p: " " + p),
    st.sampled_from(["", "=", "A", "AA", "AAA=", "AA==AA==", "****", "AAAA\\n", "QUJD\\u0044"]),
    st.text(alphabet="ABCab+/=\\\"0 ", max_size=12),
)
layout = st.sampled_from([twilio_order, sim_order])
counters = st.integers(0, 10**18 - 1)


@SETTINGS
@given(layout, counter, sid, track, counter, counter, payload)
def test_generated_messages_agree(
    make: object, seq: str, s: str, tr: str, ch: str, ts: str, p: str
) -> None:
    check(make(seq, s, tr, ch, ts, p))  # type: ignore[operator]


@SETTINGS
@given(layout, counters, counters, counters, st.binary(max_size=400))
def test_well_formed_messages_take_the_fast_path(
    make: object, seq: int, ch: int, ts: int, audio: bytes
) -> None:
    b64 = base64.b64encode(audio).decode()
    text = make(str(seq), "MZ" + "0f" * 16, "inbound", str(ch), str(ts), b64)  # type: ignore[operator]
    event = fastmedia.parse_media_fast(text)
    assert event == Media("MZ" + "0f" * 16, seq, "inbound", ch, ts, audio)
    assert event == media.parse(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    make = draw(layout)
    b64 = base64.b64encode(bytes(range(160))).decode()
    text: str = make("12", "MZ" + "a1" * 16, "inbound", "3", "40", b64)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "append"]))
        ch = draw(st.one_of(st.sampled_from(list('"\\{}[],: \n=+/0aZ')), st.characters()))
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        elif op == "replace":
            text = text[:i] + ch + text[i + 1 :]
        elif op == "truncate":
            text = text[:i]
        else:
            text += draw(st.sampled_from([",", ' ', ',"x":1}', "}", "\n"]))
    return text


@SETTINGS
@given(mutated())
def test_mutated_messages_agree(text: str) -> None:
    check(text)


@SETTINGS
@given(st.lists(st.sampled_from([*'{}"\\:,', "event", "media", "payload", "streamSid", "AAAA", "1"]),
               max_size=40).map("".join))
def test_structural_noise_agrees(text: str) -> None:
    check(text)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text_agrees(text: str) -> None:
    check(text)


def test_json_written_by_the_stdlib_falls_back_and_agrees() -> None:
    msg = {
        "event": "media",
        "sequenceNumber": "5",
        "media": {
            "track": "inbound",
            "chunk": "4",
            "timestamp": "60",
            "payload": base64.b64encode(b"\x01" * 160).decode(),
        },
        "streamSid": "MZ" + "0" * 32,
    }
    spaced = json.dumps(msg)  # ", " and ": " separators: not the plain layout
    assert fastmedia.parse_media_fast(spaced) is None
    assert fastmedia.parse(spaced) == media.parse(spaced)
    compact = json.dumps(msg, separators=(",", ":"))
    assert fastmedia.parse_media_fast(compact) == media.parse(compact)


def test_extra_key_duplicate_key_and_bytes_fall_back() -> None:
    base = twilio_order("1", "MZ1", "inbound", "1", "0", "AAAA")
    extra = base[:-1] + ',"extra":1}'
    assert fastmedia.parse_media_fast(extra) is None
    assert fastmedia.parse(extra) == media.parse(extra)
    dup = base.replace('{"event":"media",', '{"event":"media","event":"media",', 1)
    check(dup)
    assert fastmedia.parse(base.encode()) == media.parse(base)
    other = base.replace('"event":"media"', '"event":"stop"')
    check(other)
