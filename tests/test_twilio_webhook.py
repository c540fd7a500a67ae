"""Webhook handlers called directly with hand-built Requests (no sockets)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlencode

import pytest

from rtvoice.config import Settings
from rtvoice.server.api import App, Request
from rtvoice.twilio import signature
from rtvoice.twilio.stream_token import StreamTokens
from rtvoice.twilio.twiml import parse_stream_twiml
from rtvoice.twilio.webhook import WebhookHandlers, register

TOKEN = "auth-token-123"
SETTINGS = Settings(
    twilio_auth_token=TOKEN, public_base_url="https://voice.example.com", twiml_greeting="Connecting you"
)
CALL = "CA" + "ab" * 16
FORM = {
    "CallSid": CALL,
    "AccountSid": "AC" + "cd" * 16,
    "From": "+15551230001",
    "To": "+15551230002",
    "CallStatus": "ringing",
    "ApiVersion": "2010-04-01",
    "Direction": "inbound",
}


class Registry:
    """Records the hooks the webhook calls (the real CallRegistry is another module's)."""

    def __init__(self) -> None:
        self.prepared: list[tuple[str, str, str, str]] = []
        self.statuses: list[tuple[str, str, dict[str, str]]] = []

    def prepare(self, call_sid: str, from_number: str, to_number: str, direction: str) -> None:
        self.prepared.append((call_sid, from_number, to_number, direction))

    def call_status(self, call_sid: str, status: str, params: dict[str, str]) -> None:
        self.statuses.append((call_sid, status, params))


def post(path: str, form: dict[str, str], *, sign_url: str | None = None, sig: str | None = "auto",
         query: str = "", host: str = "10.0.0.5:5050") -> Request:
    body = urlencode(form).encode()
    url = sign_url or signature.public_url(SETTINGS, path, query)
    if sig == "auto":
        sig = signature.compute(TOKEN, url, form)
    headers = [("host", host), ("content-type", "application/x-www-form-urlencoded")]
    if sig is not None:
        headers.append(("x-twilio-signature", sig))
    target = f"{path}?{query}" if query else path
    return Request("POST", target, path, query, headers, body, ("10.0.0.1", 4000))


def handlers(registry: Any = None, settings: Settings = SETTINGS) -> tuple[WebhookHandlers, StreamTokens]:
    tokens = StreamTokens(settings.effective_stream_secret or "x")
    return WebhookHandlers(settings, registry, tokens), tokens


async def test_good_signature_gets_twiml_with_token_and_parameters() -> None:
    reg = Registry()
    h, tokens = handlers(reg)
    resp = await h.incoming_call(post("/incoming-call", FORM))
    assert resp.status == 200 and resp.content_type.startswith("text/xml")
    twiml = parse_stream_twiml(resp.body)
    assert twiml.says == ["Connecting you"]
    assert twiml.stream_url == "wss://voice.example.com/media-stream"
    assert set(twiml.parameters) == {"token", "from", "to", "direction"}
    assert twiml.parameters["from"] == "+15551230001" and twiml.parameters["to"] == "+15551230002"
    assert twiml.parameters["direction"] == "inbound"
    tokens.verify(twiml.parameters["token"], CALL)  # a valid token for this very call
    assert reg.prepared == [(CALL, "+15551230001", "+15551230002", "inbound")]


async def test_query_string_is_part_of_the_signed_url() -> None:
    h, _ = handlers()
    assert (await h.incoming_call(post("/incoming-call", FORM, query="a=1&b=%20"))).status == 200
    bad = post("/incoming-call", FORM, query="a=1&b=%20", sign_url="https://voice.example.com/incoming-call")
    assert (await h.incoming_call(bad)).status == 403


@pytest.mark.parametrize(
    "make",
    [
        lambda: post("/incoming-call", FORM, sig=None),
        lambda: post("/incoming-call", FORM, sig="L/OH5YylLD5NRKLltdqwSvS0BnU="),
        # signed over the Host the server saw (what a proxy-naive app would check) instead of the public URL
        lambda: post("/incoming-call", FORM, sign_url="http://10.0.0.5:5050/incoming-call"),
        # a field added after signing (Twilio signs ALL fields)
        lambda: Request(
            "POST", "/incoming-call", "/incoming-call", "",
            post("/incoming-call", FORM).headers, urlencode({**FORM, "Extra": "1"}).encode(),
        ),
    ],
)
async def test_bad_signature_is_403_and_nothing_happens(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry()
    h, _ = handlers(reg)
    with caplog.at_level(logging.WARNING, logger="rtvoice.twilio.webhook"):
        resp = await h.incoming_call(make())
    assert resp.status == 403
    assert reg.prepared == []
    assert any("X-Twilio-Signature" in r.getMessage() for r in caplog.records)


async def test_get_webhook_signs_the_url_only() -> None:
    h, _ = handlers()
    query = urlencode(FORM)
    url = signature.public_url(SETTINGS, "/incoming-call", query)
    sig = signature.compute(TOKEN, url, {})
    req = Request("GET", f"/incoming-call?{query}", "/incoming-call", query, [("x-twilio-signature", sig)])
    resp = await h.incoming_call(req)
    assert resp.status == 200
    assert parse_stream_twiml(resp.body).parameters["from"] == "+15551230001"


async def test_malformed_bodies_never_crash() -> None:
    h, _ = handlers(settings=SETTINGS.with_overrides(validate_signatures=False))
    for body in (b"", b"\xff\xfe\x00", b"&&&==&", b"CallSid=" + b"A" * 5000, b"CallSid=CA%zz"):
        req = Request("POST", "/incoming-call", "/incoming-call", "", [], body)
        resp = await h.incoming_call(req)
        assert resp.status == 400
        assert (await h.call_status(req)).status == 204


async def test_validation_disabled_skips_signature(caplog: pytest.LogCaptureFixture) -> None:
    settings = SETTINGS.with_overrides(validate_signatures=False)
    app = App()
    with caplog.at_level(logging.WARNING, logger="rtvoice.twilio.webhook"):
        register(app, settings, None)
    assert any("DISABLED" in r.getMessage() for r in caplog.records)
    resp = await app.http_routes[("POST", "/incoming-call")](post("/incoming-call", FORM, sig=None))
    assert resp.status == 200


def test_register_adds_routes() -> None:
    app = App()
    register(app, SETTINGS, Registry())
    expected = {("POST", "/incoming-call"), ("GET", "/incoming-call"), ("POST", "/call-status")}
    assert set(app.http_routes) == expected


async def test_call_status_is_signed_recorded_and_204() -> None:
    reg = Registry()
    h, _ = handlers(reg)
    form = {**FORM, "CallStatus": "completed", "CallDuration": "42"}
    resp = await h.call_status(post("/call-status", form))
    assert resp.status == 204 and resp.body == b""
    assert reg.statuses == [(CALL, "completed", form)]
    assert (await h.call_status(post("/call-status", form, sig="bogus"))).status == 403
    assert len(reg.statuses) == 1


async def test_async_prepare_runs_in_background_and_failures_do_not_break_the_answer() -> None:
    done = asyncio.Event()

    class AsyncRegistry:
        async def prepare(self, *args: str) -> None:
            done.set()

    class BrokenRegistry:
        def prepare(self, *args: str) -> None:
            raise RuntimeError("vendor down")

    h, _ = handlers(AsyncRegistry())
    assert (await h.incoming_call(post("/incoming-call", FORM))).status == 200
    await asyncio.wait_for(done.wait(), 5)
    h, _ = handlers(BrokenRegistry())
    assert (await h.incoming_call(post("/incoming-call", FORM))).status == 200
