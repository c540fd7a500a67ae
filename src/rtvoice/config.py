"""Configuration from the environment (and a ``.env`` file), validated once at startup.

Every setting has an environment variable; a bad value raises :class:`ConfigError` naming the variable, the value
and what was expected, so that ``python -m rtvoice`` fails at startup with one clear line instead of mid-call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

AGENT_MODES = ("local", "echo", "openai", "openai-elevenlabs", "elevenlabs-agent")
OPENAI_AUDIO_FORMATS = ("pcmu", "pcm")
ELEVENLABS_OUTPUT_FORMATS = ("ulaw_8000", "pcm_16000", "pcm_24000")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: RTVOICE_BARGEIN_POLICY values (rtvoice.echo.make_gate)
BARGEIN_POLICIES = ("echo-aware", "vad", "ignore-first-3s")


class ConfigError(ValueError):
    """A setting is missing or has a bad value. The message names the environment variable."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: expected a boolean (1/0, true/false, yes/no, on/off)")


def _parse_int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={raw!r}: expected a whole number from {lo} to {hi}")
    return value


def _parse_float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={raw!r}: expected a number from {lo} to {hi}")
    return value


def _parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return value


def _parse_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(f"{name}={raw!r}: expected an absolute URL with scheme {' or '.join(schemes)}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}={raw!r}: a base URL must not carry a query string or fragment")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """All of rtvoice's settings. Build with :meth:`from_env`; tests may construct it directly."""

    # --- serving -----------------------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = 5050
    workers: int = 1
    #: The public https URL Twilio reaches (e.g. https://voice.example.com). Signatures are checked against it,
    #: never against the Host header, which proxies rewrite. Defaults to http://127.0.0.1:<port>.
    public_base_url: str = ""
    validate_signatures: bool = True
    #: Key for the per-call stream token; defaults to TWILIO_AUTH_TOKEN.
    stream_secret: str = ""
    max_connections: int = 4096
    #: Calls one worker process takes at once (0: no limit); past it /incoming-call answers
    #: <Reject reason="busy"/> and POST /calls 503 (rtvoice.call.admission). Size it with ``bench load``.
    max_calls: int = 0
    #: Refuse new calls while the event loop's lag, averaged over ~1 s, is above this (ms; 0: never).
    overload_lag_ms: float = 50.0
    drain_timeout_s: float = 30.0
    log_level: str = "INFO"
    log_json: bool = True

    # --- agent ---------------------------------------------------------------------------------------------------
    agent: str = "local"
    instructions: str = (
        "You are a friendly, concise phone assistant. Keep answers short: this is a phone call."
    )
    greeting: str = ""
    #: <Say> spoken by Twilio before the stream connects (empty: none).
    twiml_greeting: str = ""
    scenario_path: str = ""

    # --- barge-in and playout ------------------------------------------------------------------------------------
    vad_aggressiveness: int = 2
    vad_onset_frames: int = 3
    vad_hangover_frames: int = 15
    max_queued_ms: int = 200
    mark_interval_ms: int = 60
    echo_delay_ms: int = 500
    #: barge-in gate while bot audio plays: "echo-aware" (echo canceller + double-talk detector,
    #: rtvoice.echo), "vad" (plain webrtcvad), "ignore-first-3s" (no barge-in in a bot turn's first 3 s)
    bargein_policy: str = "echo-aware"

    # --- vendors -------------------------------------------------------------------------------------------------
    openai_api_key: str = ""
    openai_base_url: str = "https://api.openai.com/v1"
    openai_websocket_base_url: str = "wss://api.openai.com/v1"
    openai_model: str = "gpt-realtime-2"
    openai_voice: str = "marin"
    openai_audio_format: str = "pcmu"
    openai_transcription_model: str = "gpt-4o-mini-transcribe"
    elevenlabs_api_key: str = ""
    elevenlabs_agent_id: str = ""
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    elevenlabs_voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    elevenlabs_model_id: str = "eleven_flash_v2_5"
    elevenlabs_output_format: str = "ulaw_8000"
    elevenlabs_signed_url: bool = False
    #: A vendor that sends no output this long after the caller's turn ended (or after a greeting request) is
    #: treated as stalled (a fault: never dead air).
    vendor_first_byte_timeout_s: float = 8.0

    # --- Twilio --------------------------------------------------------------------------------------------------
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_phone_number: str = ""
    twilio_api_base_url: str = "https://api.twilio.com"

    # --- operations ----------------------------------------------------------------------------------------------
    api_token: str = ""
    db_path: str = "rtvoice.sqlite3"
    #: Agent profiles file (TOML, see rtvoice.profiles); empty: every call uses the settings above.
    profiles_path: str = ""
    #: Record both legs of every call as WAV files in this directory (empty: no recording).
    record_audio_dir: str = ""
    #: Usage limits (0: none): past them a call says goodbye and hangs up.
    max_call_minutes: float = 0.0
    max_call_tokens: int = 0
    max_day_minutes: float = 0.0
    max_day_tokens: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def effective_public_base_url(self) -> str:
        """The base URL Twilio uses to reach this server (scheme://host[:port], no trailing slash)."""
        return self.public_base_url or f"http://127.0.0.1:{self.port}"

    @property
    def media_stream_url(self) -> str:
        """The ``wss://`` (or ``ws://`` for a plain-http base) URL of the Media Stream endpoint."""
        base = self.effective_public_base_url
        scheme, rest = base.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/media-stream"

    @property
    def effective_stream_secret(self) -> str:
        return self.stream_secret or self.twilio_auth_token

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (used by the CLI flags and tests)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: str | Path | None = ".env") -> Settings:
        """Read settings from ``environ`` (default: ``os.environ`` plus a ``.env`` file if present).

        Variables already set in the environment win over the ``.env`` file.
        """
        env: dict[str, str] = {}
        if environ is None:
            if dotenv is not None and Path(dotenv).is_file():
                from dotenv import dotenv_values

                env.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
            env.update(os.environ)
        else:
            env.update(environ)
        return cls._from_mapping(env)

    @classmethod
    def _from_mapping(cls, env: Mapping[str, str]) -> Settings:
        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value is not None and value.strip() != "" else None

        kw: dict[str, Any] = {}
        if (v := get("RTVOICE_HOST")) is not None:
            kw["host"] = v.strip()
        if (v := get("RTVOICE_PORT")) is not None:
            kw["port"] = _parse_int("RTVOICE_PORT", v, 0, 65535)
        if (v := get("RTVOICE_WORKERS")) is not None:
            kw["workers"] = _parse_int("RTVOICE_WORKERS", v, 1, 256)
        if (v := get("PUBLIC_BASE_URL")) is not None:
            kw["public_base_url"] = _parse_url("PUBLIC_BASE_URL", v, ("https", "http"))
        if (v := get("RTVOICE_VALIDATE_SIGNATURES")) is not None:
            kw["validate_signatures"] = _parse_bool("RTVOICE_VALIDATE_SIGNATURES", v)
        if (v := get("RTVOICE_STREAM_SECRET")) is not None:
            kw["stream_secret"] = v
        if (v := get("RTVOICE_MAX_CONNECTIONS")) is not None:
            kw["max_connections"] = _parse_int("RTVOICE_MAX_CONNECTIONS", v, 1, 1_000_000)
        if (v := get("RTVOICE_MAX_CALLS")) is not None:
            kw["max_calls"] = _parse_int("RTVOICE_MAX_CALLS", v, 0, 1_000_000)
        if (v := get("RTVOICE_OVERLOAD_LAG_MS")) is not None:
            kw["overload_lag_ms"] = _parse_float("RTVOICE_OVERLOAD_LAG_MS", v, 0.0, 60_000.0)
        if (v := get("RTVOICE_DRAIN_TIMEOUT")) is not None:
            kw["drain_timeout_s"] = _parse_float("RTVOICE_DRAIN_TIMEOUT", v, 0.0, 3600.0)
        if (v := get("RTVOICE_LOG_LEVEL")) is not None:
            kw["log_level"] = _parse_choice("RTVOICE_LOG_LEVEL", v.upper(), LOG_LEVELS)
        if (v := get("RTVOICE_LOG_JSON")) is not None:
            kw["log_json"] = _parse_bool("RTVOICE_LOG_JSON", v)

        if (v := get("RTVOICE_INSTRUCTIONS")) is not None:
            kw["instructions"] = v
        if (v := get("RTVOICE_GREETING")) is not None:
            kw["greeting"] = v
        if (v := get("RTVOICE_TWIML_GREETING")) is not None:
            kw["twiml_greeting"] = v
        if (v := get("RTVOICE_SCENARIO")) is not None:
            if not Path(v).is_file():
                raise ConfigError(f"RTVOICE_SCENARIO={v!r}: no such file")
            kw["scenario_path"] = v

        if (v := get("RTVOICE_VAD_AGGRESSIVENESS")) is not None:
            kw["vad_aggressiveness"] = _parse_int("RTVOICE_VAD_AGGRESSIVENESS", v, 0, 3)
        if (v := get("RTVOICE_VAD_ONSET_FRAMES")) is not None:
            kw["vad_onset_frames"] = _parse_int("RTVOICE_VAD_ONSET_FRAMES", v, 1, 50)
        if (v := get("RTVOICE_VAD_HANGOVER_FRAMES")) is not None:
            kw["vad_hangover_frames"] = _parse_int("RTVOICE_VAD_HANGOVER_FRAMES", v, 1, 500)
        if (v := get("RTVOICE_MAX_QUEUED_MS")) is not None:
            kw["max_queued_ms"] = _parse_int("RTVOICE_MAX_QUEUED_MS", v, 40, 10_000)
        if (v := get("RTVOICE_MARK_INTERVAL_MS")) is not None:
            kw["mark_interval_ms"] = _parse_int("RTVOICE_MARK_INTERVAL_MS", v, 20, 1000)
        if (v := get("RTVOICE_ECHO_DELAY_MS")) is not None:
            kw["echo_delay_ms"] = _parse_int("RTVOICE_ECHO_DELAY_MS", v, 0, 10_000)
        if (v := get("RTVOICE_BARGEIN_POLICY")) is not None:
            kw["bargein_policy"] = _parse_choice(
                "RTVOICE_BARGEIN_POLICY", v.strip().lower(), BARGEIN_POLICIES
            )

        kw["openai_api_key"] = get("OPENAI_API_KEY") or ""
        if (v := get("OPENAI_BASE_URL")) is not None:
            kw["openai_base_url"] = _parse_url("OPENAI_BASE_URL", v, ("https", "http"))
        if (v := get("OPENAI_WEBSOCKET_BASE_URL")) is not None:
            kw["openai_websocket_base_url"] = _parse_url("OPENAI_WEBSOCKET_BASE_URL", v, ("wss", "ws"))
        if (v := get("OPENAI_REALTIME_MODEL")) is not None:
            kw["openai_model"] = v.strip()
        if (v := get("OPENAI_VOICE")) is not None:
            kw["openai_voice"] = v.strip()
        if (v := get("OPENAI_AUDIO_FORMAT")) is not None:
            kw["openai_audio_format"] = _parse_choice("OPENAI_AUDIO_FORMAT", v, OPENAI_AUDIO_FORMATS)
        if (v := get("OPENAI_TRANSCRIPTION_MODEL")) is not None:
            kw["openai_transcription_model"] = v.strip()

        kw["elevenlabs_api_key"] = get("ELEVENLABS_API_KEY") or ""
        kw["elevenlabs_agent_id"] = get("ELEVENLABS_AGENT_ID") or ""
        if (v := get("ELEVENLABS_BASE_URL")) is not None:
            kw["elevenlabs_base_url"] = _parse_url("ELEVENLABS_BASE_URL", v, ("https", "http"))
        if (v := get("ELEVENLABS_VOICE_ID")) is not None:
            kw["elevenlabs_voice_id"] = v.strip()
        if (v := get("ELEVENLABS_MODEL_ID")) is not None:
            kw["elevenlabs_model_id"] = v.strip()
        if (v := get("ELEVENLABS_OUTPUT_FORMAT")) is not None:
            kw["elevenlabs_output_format"] = _parse_choice(
                "ELEVENLABS_OUTPUT_FORMAT", v, ELEVENLABS_OUTPUT_FORMATS
            )
        if (v := get("ELEVENLABS_SIGNED_URL")) is not None:
            kw["elevenlabs_signed_url"] = _parse_bool("ELEVENLABS_SIGNED_URL", v)
        if (v := get("RTVOICE_VENDOR_FIRST_BYTE_TIMEOUT")) is not None:
            kw["vendor_first_byte_timeout_s"] = _parse_float("RTVOICE_VENDOR_FIRST_BYTE_TIMEOUT", v, 0.5, 120.0)

        kw["twilio_account_sid"] = get("TWILIO_ACCOUNT_SID") or ""
        kw["twilio_auth_token"] = get("TWILIO_AUTH_TOKEN") or ""
        kw["twilio_phone_number"] = get("TWILIO_PHONE_NUMBER") or ""
        if kw["twilio_account_sid"] and not (
            kw["twilio_account_sid"].startswith("AC") and len(kw["twilio_account_sid"]) == 34
        ):
            raise ConfigError(
                f"TWILIO_ACCOUNT_SID={kw['twilio_account_sid']!r}: expected 'AC' followed by 32 hex characters"
            )
        if kw["twilio_phone_number"] and not (
            kw["twilio_phone_number"].startswith("+") and kw["twilio_phone_number"][1:].isdigit()
        ):
            raise ConfigError(
                f"TWILIO_PHONE_NUMBER={kw['twilio_phone_number']!r}: expected an E.164 number like +15551234567"
            )
        if (v := get("TWILIO_API_BASE_URL")) is not None:
            kw["twilio_api_base_url"] = _parse_url("TWILIO_API_BASE_URL", v, ("https", "http"))

        if (v := get("RTVOICE_API_TOKEN")) is not None:
            kw["api_token"] = v
        if (v := get("RTVOICE_DB_PATH")) is not None:
            kw["db_path"] = v
        if (v := get("RTVOICE_PROFILES")) is not None:
            if not Path(v).is_file():
                raise ConfigError(f"RTVOICE_PROFILES={v!r}: no such file (an agent profiles TOML file)")
            kw["profiles_path"] = v
        if (v := get("RTVOICE_RECORD_AUDIO_DIR")) is not None:
            kw["record_audio_dir"] = v
        if (v := get("RTVOICE_MAX_CALL_MINUTES")) is not None:
            kw["max_call_minutes"] = _parse_float("RTVOICE_MAX_CALL_MINUTES", v, 0.0, 10_000.0)
        if (v := get("RTVOICE_MAX_CALL_TOKENS")) is not None:
            kw["max_call_tokens"] = _parse_int("RTVOICE_MAX_CALL_TOKENS", v, 0, 10**12)
        if (v := get("RTVOICE_MAX_DAY_MINUTES")) is not None:
            kw["max_day_minutes"] = _parse_float("RTVOICE_MAX_DAY_MINUTES", v, 0.0, 10**7)
        if (v := get("RTVOICE_MAX_DAY_TOKENS")) is not None:
            kw["max_day_tokens"] = _parse_int("RTVOICE_MAX_DAY_TOKENS", v, 0, 10**12)

        # The agent mode: explicit, or the best one the configured keys allow (local when there are none).
        if (v := get("RTVOICE_AGENT")) is not None:
            kw["agent"] = _parse_choice("RTVOICE_AGENT", v, AGENT_MODES)
        elif kw["elevenlabs_agent_id"] and kw["elevenlabs_api_key"]:
            kw["agent"] = "elevenlabs-agent"
        elif kw["openai_api_key"]:
            kw["agent"] = "openai"
        else:
            kw["agent"] = "local"

        known = {f.name for f in fields(cls)}
        assert set(kw) <= known, set(kw) - known
        return cls(**kw)

    def check_agent_credentials(self) -> None:
        """Raise :class:`ConfigError` naming the variable a chosen agent mode needs but lacks."""
        needs: dict[str, tuple[tuple[str, str], ...]] = {
            "openai": (("OPENAI_API_KEY", self.openai_api_key),),
            "openai-elevenlabs": (
                ("OPENAI_API_KEY", self.openai_api_key),
                ("ELEVENLABS_API_KEY", self.elevenlabs_api_key),
            ),
            "elevenlabs-agent": (("ELEVENLABS_AGENT_ID", self.elevenlabs_agent_id),),
        }
        for var, value in needs.get(self.agent, ()):
            if not value:
                raise ConfigError(f"RTVOICE_AGENT={self.agent} needs {var}: set it in the environment or .env")
        if self.agent == "elevenlabs-agent" and self.elevenlabs_signed_url and not self.elevenlabs_api_key:
            raise ConfigError("ELEVENLABS_SIGNED_URL=1 needs ELEVENLABS_API_KEY to request the signed URL")
