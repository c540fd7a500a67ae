"""Structured logs: JSON lines, CallSid binding, and secrets never reaching the output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtvoice.config import Settings
from rtvoice.logs import (
    REDACTED,
    Redactor,
    bind_call_sid,
    call_context,
    call_logger,
    configure_logging,
)

OPENAI_KEY = "sk-proj-AbCdEfGh1234567890ZyXwVuT"
EL_KEY = "sk_0123456789abcdef0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
API_TOKEN = "ops-token-very-secret-42"
STREAM_SECRET = "stream-secret-xyz-999"
CALL_SID = "CA" + "ab" * 16


def _settings(**kw: object) -> Settings:
    base = dict(
        openai_api_key=OPENAI_KEY,
        elevenlabs_api_key=EL_KEY,
        twilio_auth_token=TWILIO_TOKEN,
        api_token=API_TOKEN,
        stream_secret=STREAM_SECRET,
        log_level="DEBUG",
    )
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    handler = configure_logging(_settings(), stream=buf)
    yield buf
    logging.getLogger().removeHandler(handler)


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_line_fields(out: io.StringIO) -> None:
    logging.getLogger("rtvoice.test").info("hello %s", "world", extra={"frames": 3})
    (line,) = _lines(out)
    assert line["msg"] == "hello world"
    assert line["level"] == "INFO"
    assert line["logger"] == "rtvoice.test"
    assert line["frames"] == 3
    assert isinstance(line["ts"], str) and line["ts"].endswith("Z")
    assert "call_sid" not in line


def test_call_logger_and_context_bind_call_sid(out: io.StringIO) -> None:
    call_logger(CALL_SID).info("started", extra={"stream_sid": "MZ1"})
    with call_context("CA" + "cd" * 16):
        logging.getLogger("rtvoice.agent").warning("vendor slow")
    logging.getLogger("rtvoice.agent").warning("no call")
    a, b, c = _lines(out)
    assert a["call_sid"] == CALL_SID and a["stream_sid"] == "MZ1"
    assert b["call_sid"] == "CA" + "cd" * 16
    assert "call_sid" not in c


async def test_call_sid_follows_asyncio_tasks(out: io.StringIO) -> None:
    async def one_call(sid: str) -> None:
        bind_call_sid(sid)
        await asyncio.sleep(0)
        logging.getLogger("rtvoice.call").info("tick")

    await asyncio.gather(one_call("CA" + "1" * 32), one_call("CA" + "2" * 32))
    sids = sorted(str(line["call_sid"]) for line in _lines(out) if line["logger"] == "rtvoice.call")
    assert sids == ["CA" + "1" * 32, "CA" + "2" * 32]


@pytest.mark.parametrize(
    "message",
    [
        f"using key {OPENAI_KEY}",
        f"el key {EL_KEY} in use",
        f"twilio auth {TWILIO_TOKEN}",
        f"api token is {API_TOKEN}!",
        f"stream secret {STREAM_SECRET}",
        "headers: {'Authorization': 'Bearer abcdefghijklmnop123'}",
        "Authorization: Basic QUMxMjM0NTY3ODk6c2VjcmV0c2VjcmV0",
        "xi-api-key: 9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "X-Twilio-Signature: L/OH5YylLD5NRKLltdqwSvS0BnU=",
        'customParameters {"token": "v1.CA123.1700000000.aGVsbG8td29ybGQtaG1hYw"}',
        "wss://host/media-stream?token=v1.deadbeefcafebabe1234",
        "calling https://AC123:hunter2hunter2@api.twilio.com/2010-04-01",
        "unknown OpenAI-style key sk-live-QWERTYUIOPasdfghjkl",
    ],
)
def test_secrets_in_messages_are_redacted(out: io.StringIO, message: str) -> None:
    logging.getLogger("rtvoice.test").error(message)
    raw = out.getvalue()
    (line,) = _lines(out)
    assert REDACTED in str(line["msg"])
    for secret in (
        OPENAI_KEY,
        EL_KEY,
        TWILIO_TOKEN,
        API_TOKEN,
        STREAM_SECRET,
        "abcdefghijklmnop123",
        "QUMxMjM0NTY3ODk6c2VjcmV0c2VjcmV0",
        "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "L/OH5YylLD5NRKLltdqwSvS0BnU=",
        "aGVsbG8td29ybGQtaG1hYw",
        "deadbeefcafebabe1234",
        "hunter2hunter2",
        "QWERTYUIOPasdfghjkl",
    ):
        assert secret not in raw


def test_secrets_in_args_extras_and_tracebacks(out: io.StringIO) -> None:
    log = call_logger(CALL_SID)
    headers = {"xi-api-key": "abc123def456", "Accept": "x"}
    log.info("connecting with %s", OPENAI_KEY, extra={"headers": headers})
    log.info("upgrade", extra={"signature": "c2lnbmF0dXJlLXZhbHVl", "stream_token": "tok-123456"})
    try:
        raise RuntimeError(f"vendor rejected {EL_KEY}")
    except RuntimeError:
        log.exception("vendor failed")
    raw = out.getvalue()
    for secret in (OPENAI_KEY, "abc123def456", "c2lnbmF0dXJlLXZhbHVl", "tok-123456", EL_KEY):
        assert secret not in raw
    a, b, c = _lines(out)
    assert a["headers"] == {"xi-api-key": REDACTED, "Accept": "x"}
    assert b["signature"] == REDACTED and b["stream_token"] == REDACTED
    assert "RuntimeError" in str(c["exc"]) and c["call_sid"] == CALL_SID


def test_ordinary_text_and_call_sids_survive(out: io.StringIO) -> None:
    logging.getLogger("rtvoice.test").info(
        "call %s used input_tokens=120 output_tokens=40 for profile=front-desk", CALL_SID
    )
    (line,) = _lines(out)
    assert line["msg"] == f"call {CALL_SID} used input_tokens=120 output_tokens=40 for profile=front-desk"


def test_text_format_and_level() -> None:
    buf = io.StringIO()
    handler = configure_logging(_settings(log_json=False, log_level="WARNING"), stream=buf)
    try:
        call_logger(CALL_SID).info("hidden")
        call_logger(CALL_SID).warning("shown with %s", API_TOKEN, extra={"vendor": "openai"})
    finally:
        logging.getLogger().removeHandler(handler)
    text = buf.getvalue()
    assert "hidden" not in text
    assert f"[{CALL_SID}] shown with {REDACTED}" in text
    assert "vendor=openai" in text
    assert API_TOKEN not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_redactor_short_values_not_shredded() -> None:
    r = Redactor(["abc", "longsecretvalue"])
    assert r.text("abc longsecretvalue") == f"abc {REDACTED}"
    assert r.value({"api_key": "", "nested": [{"password": "p"}]}) == {
        "api_key": "",
        "nested": [{"password": REDACTED}],
    }

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_secret = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_categories=("Cs",)), min_size=8, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(before=_text, secret=_secret, after=_text)
def test_known_secret_never_survives(before: str, secret: str, after: str) -> None:
    """A configured secret is redacted wherever it sits, whatever surrounds it, however it was logged."""
    r = Redactor([secret])
    assert secret not in r.text(before + secret + after)
    assert secret not in str(r.value({"note": [before + secret + after]}))


_token_value = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=._-"), min_size=6, max_size=60
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(
        ["token", "stream_token", "api_key", "xi-api-key", "X-Twilio-Signature", "Authorization", "secret", "password"]
    ),
    sep=st.sampled_from(["=", ": ", ":", " = ", '": "', "': '"]),
    value=_token_value,
    before=st.sampled_from(["", "got ", "headers {'", '{"']),
)
def test_credential_shaped_values_are_redacted(key: str, sep: str, value: str, before: str) -> None:
    """Unknown credential values are caught by shape: ``key<sep>value`` for every secret-looking key."""
    out = Redactor().text(f"{before}{key}{sep}{value} and more")
    assert value not in out and REDACTED in out
