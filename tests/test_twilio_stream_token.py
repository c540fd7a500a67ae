"""Per-call stream tokens: stateless verification, single use, expiry, binding to the CallSid."""

from __future__ import annotations

import pytest

from rtvoice.config import Settings
from rtvoice.twilio.stream_token import StreamTokenError, StreamTokens

CALL = "CA" + "0123456789abcdef" * 2
OTHER = "CA" + "fedcba9876543210" * 2


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def reason(tokens: StreamTokens, token: str | None, call_sid: str = CALL) -> str:
    with pytest.raises(StreamTokenError) as info:
        tokens.verify(token, call_sid)
    return info.value.reason


def test_issue_verify_once_then_replayed() -> None:
    tokens = StreamTokens("secret", clock=FakeClock())
    token = tokens.issue(CALL)
    assert len(token) < 200  # fits in a <Parameter> (name + value < 500)
    tokens.verify(token, CALL)
    assert reason(tokens, token) == "replayed"


def test_another_worker_with_the_same_secret_verifies() -> None:
    clock = FakeClock()
    token = StreamTokens("secret", clock=clock).issue(CALL)
    StreamTokens("secret", clock=clock).verify(token, CALL)
    assert reason(StreamTokens("other secret", clock=clock), token) == "forged"


def test_each_issue_is_distinct() -> None:
    tokens = StreamTokens("secret", clock=FakeClock())
    a, b = tokens.issue(CALL), tokens.issue(CALL)
    assert a != b
    tokens.verify(a, CALL)
    tokens.verify(b, CALL)


def test_missing_and_malformed() -> None:
    tokens = StreamTokens("secret", clock=FakeClock())
    assert reason(tokens, None) == "missing"
    assert reason(tokens, "") == "missing"
    for bad in ("x", "a.b.c", "a.b.c.d.e", f"{CALL}.notdigits.n.m", f"{CALL}.{'9' * 40}.n.m", "é" * 1000):
        assert reason(tokens, bad) == "malformed", bad


def test_forged() -> None:
    clock = FakeClock()
    tokens = StreamTokens("secret", clock=clock)
    token = tokens.issue(CALL)
    call, expiry, nonce, mac = token.split(".")
    # a later expiry, a different nonce, a flipped MAC character, a token for another call re-signed badly
    assert reason(tokens, f"{call}.{int(expiry) + 60_000}.{nonce}.{mac}") == "forged"
    assert reason(tokens, f"{call}.{expiry}.{nonce}x.{mac}") == "forged"
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    assert reason(tokens, f"{call}.{expiry}.{nonce}.{flipped}") == "forged"
    assert reason(tokens, f"{OTHER}.{expiry}.{nonce}.{mac}", OTHER) == "forged"
    tokens.verify(token, CALL)  # the genuine one still works


def test_wrong_call() -> None:
    tokens = StreamTokens("secret", clock=FakeClock())
    token = tokens.issue(CALL)
    assert reason(tokens, token, OTHER) == "wrong_call"
    tokens.verify(token, CALL)


def test_expired() -> None:
    clock = FakeClock()
    tokens = StreamTokens("secret", ttl_s=60, clock=clock)
    token = tokens.issue(CALL)
    clock.t += 60.0
    tokens.verify(token, CALL)  # exactly at expiry: still valid
    token = tokens.issue(CALL)
    clock.t += 60.001
    assert reason(tokens, token) == "expired"


def test_replay_guard_is_bounded_and_forgets_expired_entries() -> None:
    clock = FakeClock()
    tokens = StreamTokens("secret", ttl_s=10, clock=clock, max_used=5)
    issued = [tokens.issue(CALL) for _ in range(8)]
    for token in issued:
        tokens.verify(token, CALL)
    assert len(tokens) == 5
    clock.t += 11
    tokens.verify(tokens.issue(CALL), CALL)
    assert len(tokens) == 1  # the expired entries were purged


def test_bad_construction_and_call_sid() -> None:
    with pytest.raises(ValueError):
        StreamTokens("")
    with pytest.raises(ValueError):
        StreamTokens("s", ttl_s=0)
    with pytest.raises(ValueError):
        StreamTokens("s").issue("CA.x")


def test_from_settings_uses_stream_secret_then_auth_token() -> None:
    clock_free = Settings(stream_secret="abc", twilio_auth_token="tok")
    token = StreamTokens.from_settings(clock_free).issue(CALL)
    StreamTokens("abc").verify(token, CALL)
    token = StreamTokens.from_settings(Settings(twilio_auth_token="tok")).issue(CALL)
    StreamTokens("tok").verify(token, CALL)
    # no secret at all: a per-process one, shared by every StreamTokens of this process
    a, b = StreamTokens.from_settings(Settings()), StreamTokens.from_settings(Settings())
    b.verify(a.issue(CALL), CALL)
