"""``X-Twilio-Signature`` validation, through the twilio package's ``RequestValidator``.

Twilio signs the exact URL *it* requested (the public https URL) plus, for POST, every form field. Behind a
proxy or a TLS terminator the server sees another scheme/host/port, so the URL is always rebuilt from the
configured ``PUBLIC_BASE_URL`` plus the request's path and raw (undecoded) query, never from the Host
header or ``X-Forwarded-*``, which a client can choose.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from twilio.request_validator import RequestValidator

if TYPE_CHECKING:
    from rtvoice.config import Settings

__all__ = ["MultiParams", "compute", "public_url", "public_ws_url", "validate"]


class MultiParams:
    """Form fields with every value of a repeated name, in the ``getlist`` shape ``RequestValidator`` reads.

    A plain ``dict[str, list[str]]`` handed to the validator would be signed as ``str(list)``; this wrapper
    makes it sign each value (deduplicated and sorted, as the SDK does).
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, list[str]] | Mapping[str, str] | None = None) -> None:
        self._fields: dict[str, list[str]] = {}
        for key, value in (fields or {}).items():
            self._fields[key] = [value] if isinstance(value, str) else list(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __bool__(self) -> bool:
        return bool(self._fields)

    def getlist(self, name: str) -> list[str]:
        return self._fields.get(name, [])


def public_url(settings: Settings, path: str, raw_query: str) -> str:
    """The URL Twilio requested: ``PUBLIC_BASE_URL`` + ``path`` + ``?raw_query`` (query kept byte for
    byte)."""
    url = settings.effective_public_base_url + path
    return f"{url}?{raw_query}" if raw_query else url


def public_ws_url(settings: Settings, path: str) -> str:
    """The ``wss://`` URL Twilio opened for a Media Stream upgrade on ``path`` (``ws://`` for an http
    base)."""
    scheme, rest = settings.effective_public_base_url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"


Params = Mapping[str, list[str]] | Mapping[str, str]


def compute(auth_token: str, url: str, params: Params | None = None) -> str:
    """The signature Twilio would send for ``url`` and form ``params`` (used by the simulated Twilio)."""
    return str(RequestValidator(auth_token).compute_signature(url, MultiParams(params)))


def validate(
    settings: Settings,
    url: str,
    params: Mapping[str, list[str]] | Mapping[str, str] | None,
    signature: str | None,
) -> bool:
    """True when ``signature`` is Twilio's signature of ``url`` and ``params`` under ``TWILIO_AUTH_TOKEN``.

    ``params`` are all the form fields of a POST (for a GET or a WebSocket upgrade: none, the query is in the
    URL). A missing signature or an unset auth token never validates. The SDK tries the URL with and
    without its port; for WebSocket URLs the trailing-``/`` variant Twilio's docs mention is tried too.
    """
    token = settings.twilio_auth_token
    if not signature or not token:
        return False
    validator = RequestValidator(token)
    fields = MultiParams(params)
    try:
        if validator.validate(url, fields, signature):
            return True
        if url.startswith(("wss://", "ws://")) and "?" not in url:
            alt = url[:-1] if url.endswith("/") else url + "/"
            return bool(validator.validate(alt, fields, signature))
    except (ValueError, TypeError, UnicodeError):
        # A hostile URL or header (e.g. a non-numeric port) must read as "invalid", never as a crash.
        return False
    return False
