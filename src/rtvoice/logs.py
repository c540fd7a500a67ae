"""Structured logging for rtvoice: one JSON object per line, the CallSid on every call line, no secrets.

Usage::

    from rtvoice.logs import configure_logging, call_logger, call_context

    configure_logging(settings)                    # once, at startup (serve, call, demo, ...)
    log = call_logger("CA…")                       # a LoggerAdapter that stamps call_sid on every line
    log.info("stream started", extra={"stream_sid": "MZ…"})

    with call_context("CA…"):                      # or bind the CallSid for the current task (contextvars):
        logging.getLogger("rtvoice.agent").warning("vendor slow")   # this line carries call_sid too

A JSON line looks like ``{"ts": "2026-12-02T00:46:58.123Z", "level": "INFO", "logger": "rtvoice.call",
"msg": "stream started", "call_sid": "CA…", "stream_sid": "MZ…"}``; extra fields follow the fixed ones.
``settings.log_json = False`` gives one human-readable line per event instead.

Redaction happens in a :class:`logging.Filter` attached to the handler, *before* formatting, so no formatter
ever sees a secret. The configured secret values (API keys, Twilio auth token, stream secret, API token) are
replaced wherever they appear, and so is anything that looks like a credential whatever its value: ``sk-…``
keys, ``Bearer …``/``Basic …`` credentials, ``xi-api-key``, ``X-Twilio-Signature``, ``Authorization``,
``token=…``, passwords in URLs. Values of extra fields whose *name* says they are secret (``token``,
``signature``, ``api_key``, ``authorization``, …) are replaced too, at any nesting depth.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import IO, Any

from rtvoice.config import Settings

REDACTED = "[REDACTED]"

#: The CallSid bound to the current context (an asyncio task inherits the context it was created in).
_CALL_SID: contextvars.ContextVar[str | None] = contextvars.ContextVar("rtvoice_call_sid", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as a field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "call_sid", "taskName"}

# Names of fields / header names / query keys whose value is a secret. Matched case-insensitively against the
# whole key with ``-``/``_`` variations.
_SECRET_KEY_RE = re.compile(
    r"^(?:x[-_]?twilio[-_]?signature|xi[-_]?api[-_]?key|authorization|proxy[-_]?authorization|api[-_]?key"
    r"|[a-z_-]*api[-_]?key|[a-z_-]*token|[a-z_-]*secret|password|passwd|signature|cookie|set[-_]?cookie)$",
    re.IGNORECASE,
)

# Patterns redacted wherever they appear in text. Order matters: credentials after a scheme word first, then
# ``key: value`` / ``key=value`` pairs, so "Authorization: Bearer abc" loses both the scheme word's value and
# the token.
_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # OpenAI keys (sk-..., sk-proj-...), ElevenLabs keys (sk_ + hex).
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"\bsk_[A-Za-z0-9]{16,}"), REDACTED),
    # HTTP credentials after their scheme.
    (re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=\-]{4,}", re.IGNORECASE), r"\1 " + REDACTED),
    # user:password@host in URLs.
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+@", re.IGNORECASE), r"\1" + REDACTED + "@"),
    # key: value, key=value, "key": "value", 'key': 'value' for secret-looking keys.
    (
        re.compile(
            r"""(?P<key>["']?(?:x-twilio-signature|xi-api-key|authorization|[a-z_\-]*api[_\-]?key"""
            r"""|[a-z_\-]*token|[a-z_\-]*secret|password|signature)["']?\s*[:=]\s*)"""
            r"""(?P<q>["']?)(?P<val>(?:Bearer |Basic )?[^\s"'&,;}\]]+)""",
            re.IGNORECASE,
        ),
        r"\g<key>\g<q>" + REDACTED,
    ),
)

# Every pattern above needs one of these words; most log lines have none and skip the patterns.
_GATE = re.compile(
    r"token|secret|key|signature|authorization|password|bearer|basic|sk[-_]|://", re.IGNORECASE
)

#: Secret values shorter than this are not redacted by value (they would shred ordinary words); the patterns
#: above still catch them in key/value form.
MIN_SECRET_LEN = 4


class Redactor:
    """Removes secrets from strings and (nested) structures. Pure: no logging state."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        # One alternation, longest first, so a secret that contains another is replaced whole.
        self._values_re = re.compile("|".join(re.escape(v) for v in values)) if values else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """A redactor knowing every secret value configured in ``settings``."""
        return cls(
            [
                settings.openai_api_key,
                settings.elevenlabs_api_key,
                settings.twilio_auth_token,
                settings.stream_secret,
                settings.api_token,
            ]
        )

    def text(self, value: str) -> str:
        """``value`` with every known secret and credential-looking substring replaced by ``[REDACTED]``."""
        if self._values_re is not None:
            value = self._values_re.sub(REDACTED, value)
        if not _GATE.search(value):
            return value
        for pattern, repl in _TEXT_PATTERNS:
            value = pattern.sub(repl, value)
        return value

    def value(self, value: Any, key: str | None = None) -> Any:
        """Redact any JSON-like value; a mapping entry whose key names a secret is replaced entirely."""
        if key is not None and _SECRET_KEY_RE.match(key) and value not in (None, ""):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        if isinstance(value, bytes | bytearray | memoryview):
            return self.text(bytes(value).decode("utf-8", "replace"))
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(str(value))


class RedactingFilter(logging.Filter):
    """Handler filter: stamps ``call_sid`` from the context and redacts the message, extras and traceback.

    The message is rendered (``msg % args``) here, then redacted, and ``args`` cleared, so a secret passed as
    an argument is caught too.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "call_sid", None) is None:
            record.call_sid = _CALL_SID.get()
        if getattr(record, "_rtvoice_redacted", False):
            return True  # the same record can pass two handlers
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the line
            message = f"{record.msg!r} (bad log arguments: {exc})"
        record.msg = self.redactor.text(message)
        record.args = None
        for key, val in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, self.redactor.value(val, key))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        record.exc_info = None  # exc_text (redacted) is what gets printed
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)
        record._rtvoice_redacted = True
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_rtvoice")
    }


def _iso_utc(created: float) -> str:
    secs = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((created - secs) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, call_sid (when bound), extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_sid = getattr(record, "call_sid", None)
        if call_sid:
            out["call_sid"] = call_sid
        for key, val in _extras(record).items():
            out.setdefault(key, val)
        if record.exc_text:
            out["exc"] = record.exc_text
        elif record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human-readable: ``2026-12-02 00:46:58.123 INFO rtvoice.call [CA…] msg key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        call_sid = getattr(record, "call_sid", None)
        parts = [ts, f"{record.levelname:<7}", record.name]
        if call_sid:
            parts.append(f"[{call_sid}]")
        parts.append(record.getMessage())
        parts.extend(f"{k}={v}" for k, v in _extras(record).items())
        line = " ".join(parts)
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        return f"{line}\n{exc}" if exc else line


#: The handler configure_logging installed (replaced on a second call, so tests can reconfigure).
_installed: logging.Handler | None = None


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send all logging to ``stream`` (default stderr) as JSON lines or text, at ``settings.log_level``.

    Installs one handler on the root logger (replacing one installed earlier by this function) and returns it.
    """
    global _installed
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    handler.addFilter(RedactingFilter(Redactor.from_settings(settings)))
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    _installed = handler
    return handler


class CallLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """A LoggerAdapter that stamps ``call_sid`` on every line, keeping the caller's own ``extra`` fields."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("call_sid", (self.extra or {}).get("call_sid"))
        kwargs["extra"] = extra
        return msg, kwargs


def call_logger(call_sid: str, name: str = "rtvoice.call") -> CallLoggerAdapter:
    """A logger for one call: every line it writes carries ``call_sid``."""
    return CallLoggerAdapter(logging.getLogger(name), {"call_sid": call_sid})


@contextlib.contextmanager
def call_context(call_sid: str) -> Iterator[None]:
    """Bind ``call_sid`` for log lines written in this context (and tasks created inside it)."""
    token = _CALL_SID.set(call_sid)
    try:
        yield
    finally:
        _CALL_SID.reset(token)


def bind_call_sid(call_sid: str | None) -> contextvars.Token[str | None]:
    """Bind ``call_sid`` in the current context without a ``with`` block (e.g. at the top of a task)."""
    return _CALL_SID.set(call_sid)


def current_call_sid() -> str | None:
    """The CallSid bound in the current context, if any."""
    return _CALL_SID.get()
