"""X-Twilio-Signature: Twilio's published vectors, public-URL rebuilding, repeated fields."""

from __future__ import annotations

import pytest

from rtvoice.config import Settings
from rtvoice.twilio import signature

PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
S = Settings(twilio_auth_token="12345", public_base_url="https://example.com")


def test_published_vector_docs() -> None:
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert signature.compute("12345", url, PARAMS) == "L/OH5YylLD5NRKLltdqwSvS0BnU="
    assert signature.validate(S, url, PARAMS, "L/OH5YylLD5NRKLltdqwSvS0BnU=")


def test_published_vector_sdk_tests() -> None:
    params = {k: v.replace("5310", "5309") for k, v in PARAMS.items()}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert signature.compute("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert signature.validate(S, url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_wss_vector_and_trailing_slash_variant() -> None:
    url = signature.public_ws_url(S, "/media-stream")
    assert url == "wss://example.com/media-stream"
    assert signature.compute("12345", url, {}) == "XFfwGS2Ev7f9qAP9MmRoMS7C724="
    assert signature.validate(S, url, {}, "XFfwGS2Ev7f9qAP9MmRoMS7C724=")
    assert signature.validate(S, url, None, "XFfwGS2Ev7f9qAP9MmRoMS7C724=")
    # Twilio's docs: if a WSS handshake fails validation, try the URL with a trailing slash.
    slashed = signature.compute("12345", url + "/", {})
    assert signature.validate(S, url, {}, slashed)


def test_form_fields_as_lists_and_repeated_values() -> None:
    url = "https://example.com/myapp.php?foo=1&bar=2"
    as_lists = {k: [v] for k, v in PARAMS.items()}
    assert signature.validate(S, url, as_lists, "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    repeated = {"A": ["2", "1"], "B": [""]}
    sig = signature.compute("12345", url, repeated)
    assert sig == signature.compute("12345", url, {"A": ["1", "2"], "B": [""]})
    assert not signature.validate(S, url, {"A": ["1"], "B": [""]}, sig)  # a dropped value breaks it


@pytest.mark.parametrize(
    "change",
    [
        lambda p, u: ({**p, "Digits": "1235"}, u),
        lambda p, u: ({**p, "Extra": "x"}, u),
        lambda p, u: ({k: v for k, v in p.items() if k != "To"}, u),
        lambda p, u: (p, u.replace("https://", "http://")),
        lambda p, u: (p, u.replace("example.com", "evil.com")),
        lambda p, u: (p, u.replace("foo=1", "foo=%31")),  # the raw query is signed, not its decoded form
        lambda p, u: (p, u + "/"),
    ],
)
def test_any_change_invalidates(change) -> None:  # type: ignore[no-untyped-def]
    url = "https://example.com/myapp.php?foo=1&bar=2"
    params, url2 = change(PARAMS, url)
    assert not signature.validate(S, url2, params, "L/OH5YylLD5NRKLltdqwSvS0BnU=")


def test_port_variants_accepted_like_the_sdk() -> None:
    sig = signature.compute("12345", "https://example.com/incoming-call", {"A": "1"})
    assert signature.validate(S, "https://example.com:443/incoming-call", {"A": "1"}, sig)


def test_missing_signature_or_token_never_validates() -> None:
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert not signature.validate(S, url, PARAMS, None)
    assert not signature.validate(S, url, PARAMS, "")
    no_token = Settings(public_base_url="https://example.com")
    assert not signature.validate(no_token, url, PARAMS, "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    assert not signature.validate(S, "https://example.com:notaport/x", {}, "abc")


def test_public_url_from_settings_not_host() -> None:
    s = Settings(public_base_url="https://voice.example.com", twilio_auth_token="t")
    assert signature.public_url(s, "/incoming-call", "") == "https://voice.example.com/incoming-call"
    assert signature.public_url(s, "/incoming-call", "a=%20b&c") == "https://voice.example.com/incoming-call?a=%20b&c"
    assert signature.public_ws_url(s, "/media-stream") == "wss://voice.example.com/media-stream"
    local = Settings(port=5050)
    assert signature.public_url(local, "/x", "") == "http://127.0.0.1:5050/x"
    assert signature.public_ws_url(local, "/media-stream") == "ws://127.0.0.1:5050/media-stream"
