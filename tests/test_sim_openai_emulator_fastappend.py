"""The emulator's fast path for ``input_audio_buffer.append`` has the same outcome as the full schema path.

The full path (``EventValidator._validate_full``: json.loads, the openai SDK's pydantic model, the unknown-field
walk, the semantic rules with ``base64.b64decode(validate=True)``) is the reference; ``validate_with_audio`` (fast
path first) must give the same raw dict (same items in the same order), the same model fields, the same decoded
audio -- or the same :class:`ClientEventError` -- for plain, mutated and adversarial texts.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rtvoice.agents.openai_realtime import APPEND_PREFIX, APPEND_SUFFIX
from rtvoice.sim import openai_emulator
from rtvoice.sim.openai_emulator import ClientEventError, EventValidator

VALIDATOR = EventValidator()
APPEND = "input_audio_buffer.append"

Outcome = tuple[str, Any]


def _outcome(fn: Any, text: str | bytes) -> Outcome:
    try:
        model, raw, audio = fn(text)
    except ClientEventError as exc:
        return ("error", (exc.message, exc.code, exc.param, exc.event_id))
    fields = model.model_dump(exclude_unset=True)
    return ("ok", (type(model), list(raw.items()), fields, sorted(model.model_fields_set), audio))


def assert_same(text: str | bytes) -> Outcome:
    """Fast-path-first validation == the full path; returns the outcome."""
    got = _outcome(VALIDATOR.validate_with_audio, text)
    want = _outcome(VALIDATOR._validate_full, text)
    assert got == want
    if got[0] == "ok":
        # validate() keeps its public shape: (model, raw).
        model, raw = VALIDATOR.validate(text)
        assert list(raw.items()) == got[1][1]
        assert type(model) is got[1][0]
    return got


# ------------------------------------------------------------------------------------------------ generators

event_ids = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'),
    min_size=0,
    max_size=24,
)
orders = st.permutations(["type", "audio", "event_id"])


@st.composite
def plain_appends(draw: st.DrawFn, max_audio: int = 700) -> str | bytes:
    """Appends as rtvoice's templates (compact) or json.dumps (the openai SDK) write them."""
    audio = base64.b64encode(draw(st.binary(max_size=max_audio))).decode()
    members = {"type": APPEND, "audio": audio}
    if draw(st.booleans()):
        members["event_id"] = draw(event_ids)
    keys = [k for k in draw(orders) if k in members]
    obj = {k: members[k] for k in keys}
    compact = draw(st.booleans())
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj)
    return text.encode() if draw(st.booleans()) else text


INTERESTING = [*'"\\ \n\t\r=+/{}:,[]0aA\x00\x1f\x7f', "é", "\u2028", "\ud800", "\\u0041", "\\/", "null"]


@st.composite
def mutated_appends(draw: st.DrawFn) -> str | bytes:
    """A plain append with a few characters inserted, deleted or replaced."""
    # short audio, so that the mutations also land in the keys, separators and event_id
    text = draw(plain_appends(max_audio=draw(st.sampled_from([6, 30, 700]))))
    s = text.decode() if isinstance(text, bytes) else text
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(s)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(INTERESTING) if draw(st.integers(0, 3)) else st.characters(max_codepoint=0x7F))
        if op == "insert":
            s = s[:pos] + ch + s[pos:]
        elif op == "delete":
            s = s[:pos] + s[pos + 1 :]
        else:
            s = s[:pos] + ch + s[pos + 1 :]
    if isinstance(text, bytes):
        return s.encode("utf-8", "surrogatepass")
    return s


b64ish = st.text(alphabet="AQgw+/=aZ09 \n\\\"é-_", max_size=40)
values: st.SearchStrategy[Any] = st.one_of(
    b64ish,
    st.none(),
    st.booleans(),
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["a", "audio"]), st.integers(), max_size=1),
    st.text(max_size=10),
)


@st.composite
def adversarial_appends(draw: st.DrawFn) -> str | bytes:
    """A valid append with 1-3 perturbations: wrong types, odd base64, escaped or control characters,
    extra/missing/duplicate keys, other event types, odd separators and whitespace."""
    pairs: list[tuple[str, Any]] = [
        ("type", APPEND),
        ("audio", base64.b64encode(draw(st.binary(max_size=12))).decode()),
    ]
    if draw(st.booleans()):
        pairs.append(("event_id", draw(event_ids)))
    pairs = draw(st.permutations(pairs))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["value", "value", "value", "add", "drop", "dup"]))
        i = draw(st.integers(0, max(0, len(pairs) - 1)))
        if op == "value" and pairs:
            k = pairs[i][0]
            if k == "type":
                v: Any = draw(
                    st.sampled_from([APPEND, "input_audio_buffer.commit", "input_audio_buffer.Append", 1])
                )
            elif k == "audio":
                v = draw(b64ish | values)
            else:
                v = draw(st.text(max_size=6) | values)
            pairs[i] = (k, v)
        elif op == "add":
            pairs.insert(i, (draw(st.sampled_from(["extra", "Audio", "type ", "event_id", "audio"])), draw(values)))
        elif op == "drop" and pairs:
            pairs.pop(i)
        elif op == "dup" and pairs:
            pairs.insert(draw(st.integers(0, len(pairs))), pairs[i])
    sep = draw(
        st.sampled_from([(",", ":"), (", ", ": "), (",", ":"), (" ,", " :"), (",  ", ":  "), (",\n", ":")])
    )
    ensure_ascii = draw(st.booleans())
    body = sep[0].join(json.dumps(k) + sep[1] + json.dumps(v, ensure_ascii=ensure_ascii) for k, v in pairs)
    text = "{" + body + "}"
    if draw(st.integers(0, 3)) == 0:
        text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", " ", "\n"]))
    return text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text


# ------------------------------------------------------------------------------------------------ properties

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(plain_appends())
def test_plain_appends_take_the_fast_path_with_the_same_outcome(text: str | bytes) -> None:
    assert VALIDATOR._fast_append(text) is not None  # the property below must not be vacuous
    kind, (_cls, items, _fields, _set, audio) = assert_same(text)
    assert kind == "ok"
    assert audio == base64.b64decode(dict(items)["audio"])


@SETTINGS
@given(mutated_appends())
@example('{"type":"input_audio_buffer.append","audio":"AAAA=="}')  # lenient base64 the strict decode refuses
@example('{"type":"input_audio_buffer.append","audio":"AA="}')
@example('{"type":"input_audio_buffer.append","audio":"="}')
@example('{"type":"input_audio_buffer.append","audio":"A\\u0041AA"}')
@example('{"type":"input_audio_buffer.append","audio":"AA\\/A"}')
@example('{"type":"input_audio_buffer.append","audio":"AA\nA"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"a\x01"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"\x7f"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"a\\b"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"a\\u0041"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"a\\"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"é"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"é"}'.encode())
@example(b'{"type":"input_audio_buffer.append","audio":"AA\xffA"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","type":"input_audio_buffer.append"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","audio":"%%%%"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA",}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA"}}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA""}')
@example('{"type":"input_audio_buffer.append"  :  "x","audio":"AAAA"}')
@example('{"type":"input_audio_buffer.append","audio":""}')
@example('{"type":"input_audio_buffer.append"}')
@example('{"audio":"AAAA"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","x":"y"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"e","x":"y"}')
@example('{"type":"input_audio_buffer.append","audio":"AAAA","event_id":"e","event_id":"f"}')
@example('\ufeff{"type":"input_audio_buffer.append","audio":"AAAA"}'.encode())
def test_mutated_appends_have_the_same_outcome(text: str | bytes) -> None:
    assert_same(text)


@SETTINGS
@given(adversarial_appends())
def test_adversarial_appends_have_the_same_outcome(text: str | bytes) -> None:
    assert_same(text)


@SETTINGS
@given(st.binary(max_size=300))
def test_strict_base64_accepts_a_subset_of_validate_true_with_the_same_bytes(raw: bytes) -> None:
    """What the fast path relies on: a2b_base64(strict_mode=True) never accepts what b64decode(validate=True)
    refuses, and never decodes differently."""
    s = base64.b64encode(raw).decode()
    for cand in (s, s + "=", s[:-1], s.rstrip("="), s + "==", "=" + s, s[:4] + "=" + s[4:]):
        try:
            strict = binascii.a2b_base64(cand, strict_mode=True)
        except binascii.Error:
            continue
        assert base64.b64decode(cand, validate=True) == strict


def test_rtvoice_template_and_sdk_layout_take_the_fast_path() -> None:
    audio = base64.b64encode(bytes(range(256)) + b"\xff" * 64).decode()
    texts: list[str | bytes] = [
        APPEND_PREFIX + audio + APPEND_SUFFIX,
        (APPEND_PREFIX + audio + APPEND_SUFFIX).encode(),
        json.dumps({"type": APPEND, "audio": audio}),
        json.dumps({"type": APPEND, "audio": audio, "event_id": "evt_123"}),
        json.dumps({"event_id": "evt_123", "type": APPEND, "audio": audio}),
    ]
    for text in texts:
        assert VALIDATOR._fast_append(text) is not None
        kind, (_cls, _items, _fields, _set, got) = assert_same(text)
        assert kind == "ok" and got == base64.b64decode(audio)


def test_oversize_audio_is_the_same_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real limit, once (20 MiB of base64)
    huge = APPEND_PREFIX + "A" * (20 * 1024 * 1024 + 4) + APPEND_SUFFIX
    assert VALIDATOR._fast_append(huge) is None
    kind, (message, code, param, _eid) = assert_same(huge)
    assert (kind, code, param) == ("error", "invalid_value", "audio") and "too large" in message
    # and at the boundary, with a small limit patched into both paths
    monkeypatch.setattr(openai_emulator, "_MAX_APPEND_AUDIO", 30)
    for n in (36, 40, 44):  # 27, 30, 33 bytes
        text = APPEND_PREFIX + base64.b64encode(b"\x01" * (n * 3 // 4)).decode() + APPEND_SUFFIX
        kind, _ = assert_same(text)
        assert kind == ("ok" if n * 3 // 4 <= 30 else "error")


def test_bad_base64_is_the_documented_error_with_the_event_id() -> None:
    text = json.dumps({"type": APPEND, "audio": "AA=", "event_id": "e9"})
    kind, detail = assert_same(text)
    assert kind == "error"
    assert detail == ("Invalid 'audio'. Expected base64-encoded audio bytes.", "invalid_value", "audio", "e9")


def test_other_event_types_are_untouched() -> None:
    for obj in (
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear", "event_id": "x"},
        {"type": "response.cancel"},
    ):
        text = json.dumps(obj, separators=(",", ":"))
        assert VALIDATOR._fast_append(text) is None
        assert assert_same(text)[0] == "ok"


def test_strict_base64_subset_exhaustively_on_short_strings() -> None:
    """Every string of up to 6 characters over data characters with different trailing bits, padding and
    a newline: strict acceptance implies validate=True acceptance with the same bytes."""
    import itertools

    accepted = 0
    for length in range(7):
        for chars in itertools.product("AQ/=\n", repeat=length):
            cand = "".join(chars)
            try:
                strict = binascii.a2b_base64(cand, strict_mode=True)
            except binascii.Error:
                continue
            accepted += 1
            assert base64.b64decode(cand, validate=True) == strict
    assert accepted > 100  # the loop really exercised the accepting side
