"""Per-call stream tokens: proof that a Media Stream was opened by the TwiML this server answered.

The webhook answers ``<Stream><Parameter name="token" value=…/>``; Twilio hands the value back in
``start.customParameters``. The token is ``<CallSid>.<expiry ms>.<nonce>.<HMAC-SHA256>`` where the MAC
covers the three fields before it. Any worker or host holding the secret verifies it without shared state.
Single use is enforced by an in-memory replay guard per process (bounded; entries leave once their token
has expired): with several workers a replay that lands on another worker within the token's lifetime is not
caught, which the short TTL keeps narrow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtvoice.config import Settings

__all__ = ["StreamTokenError", "StreamTokens"]

log = logging.getLogger("rtvoice.twilio.stream_token")

#: reasons, in the order verify() checks them
REASONS = ("missing", "malformed", "forged", "wrong_call", "expired", "replayed")

_MAX_TOKEN_LEN = 256
#: Fallback secret when neither RTVOICE_STREAM_SECRET nor TWILIO_AUTH_TOKEN is set: one per process, so the
#: webhook and the stream handler of the same process agree (several workers would not: a warning says so).
_process_secret: str | None = None


class StreamTokenError(Exception):
    """A stream token was refused. ``reason`` is one of ``missing``, ``malformed``, ``forged``,
    ``wrong_call``, ``expired``, ``replayed``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"stream token {reason}")
        self.reason = reason


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class StreamTokens:
    """Issues and verifies single-use, expiring, HMAC-signed tokens bound to one CallSid."""

    def __init__(
        self,
        secret: str,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        *,
        max_used: int = 100_000,
    ) -> None:
        if not secret:
            raise ValueError("StreamTokens needs a non-empty secret")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._key = secret.encode("utf-8")
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock
        self._max_used = max_used
        # token MAC -> expiry ms, in insertion order (≈ expiry order, since the TTL is constant)
        self._used: OrderedDict[str, int] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, ttl_s: float = 60.0) -> StreamTokens:
        """Tokens keyed with ``RTVOICE_STREAM_SECRET`` or ``TWILIO_AUTH_TOKEN``; without either, a random
        per-process secret (fine for one worker, logged as a warning)."""
        global _process_secret
        secret = settings.effective_stream_secret
        if not secret:
            if _process_secret is None:
                _process_secret = secrets.token_urlsafe(32)
                log.warning(
                    "neither RTVOICE_STREAM_SECRET nor TWILIO_AUTH_TOKEN is set: stream tokens use a random "
                    "per-process key, so a stream landing on another worker or host will be refused"
                )
            secret = _process_secret
        return cls(secret, ttl_s)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def issue(self, call_sid: str) -> str:
        """A fresh token for ``call_sid``, valid for ``ttl_s`` and usable once."""
        if not call_sid or "." in call_sid:
            raise ValueError("call_sid must be non-empty and contain no '.'")
        expiry = self._now_ms() + self._ttl_ms
        nonce = secrets.token_urlsafe(9)
        body = f"{call_sid}.{expiry}.{nonce}"
        return f"{body}.{_mac(self._key, body)}"

    def verify(self, token: str | None, call_sid: str) -> None:
        """Accept ``token`` for ``call_sid`` once, or raise :class:`StreamTokenError` saying why not."""
        if not token:
            raise StreamTokenError("missing")
        parts = token.split(".") if isinstance(token, str) and len(token) <= _MAX_TOKEN_LEN else []
        if len(parts) != 4 or not parts[1].isascii() or not parts[1].isdigit() or len(parts[1]) > 15:
            raise StreamTokenError("malformed")
        token_call, expiry_s, _nonce, mac = parts
        expected = _mac(self._key, token.rsplit(".", 1)[0])
        if not hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8", "replace")):
            raise StreamTokenError("forged")
        if not hmac.compare_digest(token_call.encode("utf-8"), call_sid.encode("utf-8")):
            raise StreamTokenError("wrong_call")
        now = self._now_ms()
        expiry = int(expiry_s)
        if now > expiry:
            raise StreamTokenError("expired")
        self._purge(now)
        if mac in self._used:
            raise StreamTokenError("replayed")
        if len(self._used) >= self._max_used:
            # Full of live tokens (a flood of calls): forget the oldest. It expires soonest anyway.
            self._used.popitem(last=False)
        self._used[mac] = expiry

    def _purge(self, now_ms: int) -> None:
        used = self._used
        while used:
            mac, expiry = next(iter(used.items()))
            if expiry >= now_ms:
                break
            del used[mac]

    def __len__(self) -> int:
        """Tokens currently held by the replay guard."""
        return len(self._used)
