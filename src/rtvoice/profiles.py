"""Agent profiles: who the bot is on each number (prompt, voice, greeting, model, turn-taking, tools).

A profiles file is TOML (``RTVOICE_PROFILES=profiles.toml``)::

    default = "front-desk"              # the profile for numbers not listed below (optional)

    [numbers]                           # which profile answers which Twilio number
    "+15550001000" = "front-desk"
    "+15550002000" = "sales"

    [profiles.front-desk]
    instructions = '''You are the front desk of Bella Napoli. The caller is {caller}; it is {time} on {date}.'''
    greeting = "Bella Napoli, how can I help?"
    voice = "marin"                     # OpenAI voice
    elevenlabs_voice_id = "21m00Tcm4TlvDq8ikWAM"
    language = "en"
    model = "gpt-realtime"
    agent = "openai"                    # RTVOICE_AGENT for calls on this profile
    timezone = "Europe/Rome"            # for {time} and {date} (default UTC)
    tools = ["end_call", "transfer_call"]
    transfer_number = "+15550009999"    # used by transfer_call when the model gives no number

    [profiles.front-desk.turn_detection]
    vad_aggressiveness = 2              # 0-3
    onset_frames = 3                    # speech frames (20 ms) before a barge-in
    hangover_frames = 15
    max_queued_ms = 200

Prompt placeholders: ``{caller}``, ``{callee}``, ``{call_sid}``, ``{time}``, ``{date}``, ``{profile}`` (``{{``
and ``}}`` for literal braces). Anything else is refused **when the file is loaded** (no attribute or index
access, no format specs), so a typo never surfaces mid-call and a template cannot reach into Python objects.

Environment overrides win over the file: ``RTVOICE_PROFILE__<NAME>__<KEY>=value`` (name upper-cased with
``-`` as ``_``; e.g. ``RTVOICE_PROFILE__FRONT_DESK__VOICE=cedar``) and ``RTVOICE_DEFAULT_PROFILE``.

Everything is validated at startup; errors name the file and line (TOML syntax errors as tomllib reports them,
semantic errors at the offending key's line).
"""

from __future__ import annotations

import datetime as dt
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rtvoice.config import AGENT_MODES, ConfigError, Settings

PLACEHOLDERS = ("caller", "callee", "call_sid", "time", "date", "profile")
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")

_PROFILE_KEYS = {
    "instructions",
    "greeting",
    "twiml_greeting",
    "voice",
    "elevenlabs_voice_id",
    "language",
    "model",
    "agent",
    "timezone",
    "tools",
    "transfer_number",
    "turn_detection",
}
_TURN_KEYS = {
    "vad_aggressiveness": (0, 3),
    "onset_frames": (1, 50),
    "hangover_frames": (1, 500),
    "max_queued_ms": (40, 10_000),
}


class ProfileError(ConfigError):
    """A profiles file is invalid; the message starts with ``file:line:``."""


@dataclass(frozen=True, slots=True)
class TurnDetection:
    vad_aggressiveness: int | None = None
    onset_frames: int | None = None
    hangover_frames: int | None = None
    max_queued_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    """One agent profile. ``None`` fields keep the global setting."""

    name: str
    instructions: str | None = None
    greeting: str | None = None
    twiml_greeting: str | None = None
    voice: str | None = None
    elevenlabs_voice_id: str | None = None
    language: str | None = None
    model: str | None = None
    agent: str | None = None
    timezone: str = "UTC"
    tools: tuple[str, ...] = ()
    transfer_number: str | None = None
    turn_detection: TurnDetection = field(default_factory=TurnDetection)

    def template_values(
        self, *, caller: str = "", callee: str = "", call_sid: str = "", now: dt.datetime | None = None
    ) -> dict[str, str]:
        """The placeholder values for one call (time and date in the profile's time zone)."""
        now = (now or dt.datetime.now(dt.UTC)).astimezone(ZoneInfo(self.timezone))
        return {
            "caller": caller,
            "callee": callee,
            "call_sid": call_sid,
            "time": now.strftime("%H:%M"),
            "date": now.strftime("%Y-%m-%d"),
            "profile": self.name,
        }

    def render(self, template: str, values: Mapping[str, str]) -> str:
        """Fill a template checked at load time (only known placeholders, so this cannot fail)."""
        return template.format_map(dict(values))

    def apply(
        self,
        settings: Settings,
        *,
        caller: str = "",
        callee: str = "",
        call_sid: str = "",
        now: dt.datetime | None = None,
    ) -> Settings:
        """A copy of ``settings`` for one call on this profile, with the prompt and greeting rendered."""
        values = self.template_values(caller=caller, callee=callee, call_sid=call_sid, now=now)
        changes: dict[str, Any] = {}
        if self.instructions is not None:
            changes["instructions"] = self.render(self.instructions, values)
        if self.greeting is not None:
            changes["greeting"] = self.render(self.greeting, values)
        if self.twiml_greeting is not None:
            changes["twiml_greeting"] = self.render(self.twiml_greeting, values)
        if self.voice is not None:
            changes["openai_voice"] = self.voice
        if self.elevenlabs_voice_id is not None:
            changes["elevenlabs_voice_id"] = self.elevenlabs_voice_id
        if self.model is not None:
            changes["openai_model"] = self.model
        if self.agent is not None:
            changes["agent"] = self.agent
        td = self.turn_detection
        for attr, setting in (
            ("vad_aggressiveness", "vad_aggressiveness"),
            ("onset_frames", "vad_onset_frames"),
            ("hangover_frames", "vad_hangover_frames"),
            ("max_queued_ms", "max_queued_ms"),
        ):
            if (v := getattr(td, attr)) is not None:
                changes[setting] = v
        extra = dict(settings.extra)
        extra["profile"] = self.name
        if self.language is not None:
            extra["language"] = self.language
        if self.tools:
            extra["tools"] = ",".join(self.tools)
        if self.transfer_number is not None:
            extra["transfer_number"] = self.transfer_number
        changes["extra"] = extra
        return replace(settings, **changes)


@dataclass(frozen=True, slots=True)
class Profiles:
    """All profiles of a file, and which number maps to which."""

    profiles: Mapping[str, Profile]
    numbers: Mapping[str, str] = field(default_factory=dict)
    default: str | None = None
    path: str = ""

    def names(self) -> set[str]:
        return set(self.profiles)

    def get(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise KeyError(f"unknown profile {name!r} (have: {', '.join(sorted(self.profiles))})") from None

    def select(self, number: str) -> Profile | None:
        """The profile answering our Twilio number ``number`` (the default one if unlisted; None if
        neither)."""
        name = self.numbers.get(number, self.default)
        return self.profiles[name] if name is not None else None

    def select_for_call(
        self, to_number: str, from_number: str = "", direction: str = "inbound", requested: str | None = None
    ) -> Profile | None:
        """The profile for a call: the ``requested`` one (outbound ``?profile=``) if given, else by our own
        number, which is ``To`` on inbound calls and ``From`` on outbound ones."""
        if requested:
            return self.get(requested)
        ours = from_number if direction.startswith("outbound") else to_number
        return self.select(ours)


def select_profile(profiles: Profiles | None, to_number: str) -> Profile | None:
    """Module-level shorthand for ``profiles.select(to_number)`` that accepts ``None`` (no profiles file)."""
    return profiles.select(to_number) if profiles is not None else None


def settings_for_call(
    settings: Settings,
    profiles: Profiles | None,
    *,
    call_sid: str = "",
    from_number: str = "",
    to_number: str = "",
    direction: str = "inbound",
    requested_profile: str | None = None,
    agent: str | None = None,
    prompt: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Settings, Profile | None]:
    """The settings one call runs with, and its profile: the one seam the call registry needs.

    The profile is chosen by :meth:`Profiles.select_for_call` (an outbound call's ``?profile=`` first, else
    our own number, else the default) and applied with the call's data (``{caller}`` is the remote party on
    both inbound and outbound calls); then the outbound call's ``?agent=`` and ``?prompt=`` override it.
    Raises ``KeyError`` for an unknown requested profile and ``ValueError`` for an unknown agent mode.
    """
    profile = (
        profiles.select_for_call(to_number, from_number, direction, requested_profile)
        if profiles is not None
        else None
    )
    if profile is None and requested_profile:
        raise KeyError(f"unknown profile {requested_profile!r}: no profiles file is configured")
    outbound = direction.startswith("outbound")
    caller, callee = (to_number, from_number) if outbound else (from_number, to_number)
    out = (
        profile.apply(settings, caller=caller, callee=callee, call_sid=call_sid, now=now)
        if profile is not None
        else settings
    )
    changes: dict[str, Any] = {}
    if agent:
        if agent not in AGENT_MODES:
            raise ValueError(f"unknown agent mode {agent!r}")
        changes["agent"] = agent
    if prompt:
        changes["instructions"] = prompt
    return (replace(out, **changes) if changes else out), profile


# --- loading and validation ---------------------------------------------------------------------------------


def _table_of(header: str) -> tuple[str, ...]:
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_\-]+)', header)
    return tuple(a or b or c for a, b, c in parts)


def locate(source: str, table: tuple[str, ...], key: str | None) -> int | None:
    """1-based line of ``key`` inside TOML table ``table`` in ``source`` (or of the table header)."""
    current: tuple[str, ...] = ()
    header_line: int | None = None
    k = re.escape(key or "")
    key_re = re.compile(rf"""^\s*(?:"{k}"|'{k}'|{k})\s*=""") if key else None
    for n, line in enumerate(source.splitlines(), 1):
        m = re.match(r"^\s*\[\[?([^\]]+)\]\]?\s*(#.*)?$", line)
        if m:
            current = _table_of(m.group(1))
            if current == table and header_line is None:
                header_line = n
            continue
        if current == table and key_re is not None and key_re.match(line):
            return n
    return header_line


class _Loader:
    def __init__(self, source: str, path: str) -> None:
        self.source = source
        self.path = path

    def error(self, table: tuple[str, ...], key: str | None, message: str) -> ProfileError:
        line = locate(self.source, table, key)
        where = ".".join((*table, key) if key else table) or "(top level)"
        return ProfileError(f"{self.path}:{line if line is not None else '?'}: {where}: {message}")

    def string(self, table: tuple[str, ...], key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(table, key, f"expected a string, got {type(value).__name__}")
        return value

    def template(self, table: tuple[str, ...], key: str, value: Any) -> str:
        text = self.string(table, key, value)
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            hint = "write {{ and }} for literal braces"
            raise self.error(table, key, f"bad template ({exc}); {hint}") from None
        for _literal, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                conv = f"!{conversion}" if conversion else ""
                shown = "{" + name + conv + (f":{spec}" if spec else "") + "}"
                allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise self.error(table, key, f"unknown placeholder {shown}; allowed: {allowed}")
        return text

    def profile(self, name: str, raw: Any) -> Profile:
        table = ("profiles", name)
        if not NAME_RE.match(name):
            raise self.error(table, None, "profile names may use letters, digits, _ . - (at most 64)")
        if not isinstance(raw, dict):
            raise self.error(("profiles",), name, "expected a table [profiles.NAME]")
        for key in raw:
            if key not in _PROFILE_KEYS:
                raise self.error(table, key, f"unknown key; known keys: {', '.join(sorted(_PROFILE_KEYS))}")
        kw: dict[str, Any] = {"name": name}
        for key in ("instructions", "greeting", "twiml_greeting"):
            if key in raw:
                kw[key] = self.template(table, key, raw[key])
        for key in ("voice", "elevenlabs_voice_id", "model"):
            if key in raw:
                value = self.string(table, key, raw[key]).strip()
                if not value:
                    raise self.error(table, key, "must not be empty")
                kw[key] = value
        if "language" in raw:
            lang = self.string(table, "language", raw["language"])
            if not LANG_RE.match(lang):
                raise self.error(table, "language", f"expected a code like 'en' or 'en-US', got {lang!r}")
            kw["language"] = lang
        if "agent" in raw:
            agent = self.string(table, "agent", raw["agent"])
            if agent not in AGENT_MODES:
                raise self.error(table, "agent", f"expected one of {', '.join(AGENT_MODES)}, got {agent!r}")
            kw["agent"] = agent
        if "timezone" in raw:
            tz = self.string(table, "timezone", raw["timezone"])
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                hint = "e.g. 'Europe/Rome'"
                raise self.error(table, "timezone", f"unknown time zone {tz!r} ({hint})") from None
            kw["timezone"] = tz
        if "transfer_number" in raw:
            number = self.string(table, "transfer_number", raw["transfer_number"])
            if not E164_RE.match(number):
                msg = f"expected an E.164 number like +15551234567, got {number!r}"
                raise self.error(table, "transfer_number", msg)
            kw["transfer_number"] = number
        if "tools" in raw:
            tools = raw["tools"]
            if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
                raise self.error(table, "tools", "expected a list of tool names")
            from rtvoice import tools as tool_registry

            known = tool_registry.names()
            for t in tools:
                if t not in known:
                    raise self.error(table, "tools", f"unknown tool {t!r}; known: {', '.join(sorted(known))}")
            kw["tools"] = tuple(tools)
        if "turn_detection" in raw:
            kw["turn_detection"] = self.turn_detection(name, raw["turn_detection"])
        return Profile(**kw)

    def turn_detection(self, name: str, raw: Any) -> TurnDetection:
        table = ("profiles", name, "turn_detection")
        if not isinstance(raw, dict):
            raise self.error(("profiles", name), "turn_detection", "expected a table")
        kw: dict[str, int] = {}
        for key, value in raw.items():
            if key not in _TURN_KEYS:
                raise self.error(table, key, f"unknown key; known keys: {', '.join(_TURN_KEYS)}")
            lo, hi = _TURN_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise self.error(table, key, f"expected a whole number from {lo} to {hi}, got {value!r}")
            kw[key] = value
        return TurnDetection(**kw)


def _env_overrides(doc: dict[str, Any], environ: Mapping[str, str]) -> None:
    profiles = doc.get("profiles")
    for var, value in environ.items():
        if var == "RTVOICE_DEFAULT_PROFILE" and value.strip():
            doc["default"] = value.strip()
            continue
        if not var.startswith("RTVOICE_PROFILE__"):
            continue
        parts = var[len("RTVOICE_PROFILE__") :].split("__")
        if len(parts) != 2 or not isinstance(profiles, dict):
            raise ProfileError(f"{var}: expected RTVOICE_PROFILE__<PROFILE>__<KEY>")
        wanted, key = parts[0], parts[1].lower()
        matches = [n for n in profiles if n.upper().replace("-", "_").replace(".", "_") == wanted]
        if not matches:
            raise ProfileError(f"{var}: no profile named like {wanted!r} in the profiles file")
        target = profiles[matches[0]]
        if key in ("vad_aggressiveness", "onset_frames", "hangover_frames", "max_queued_ms"):
            try:
                target.setdefault("turn_detection", {})[key] = int(value)
            except ValueError:
                raise ProfileError(f"{var}={value!r}: expected a whole number") from None
        elif key == "tools":
            target["tools"] = [t.strip() for t in value.split(",") if t.strip()]
        else:
            target[key] = value


def parse_profiles(
    source: str, path: str = "<profiles>", environ: Mapping[str, str] | None = None
) -> Profiles:
    """Parse and validate a profiles document; raises :class:`ProfileError` with ``path:line:``."""
    try:
        doc = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = m.group(1) if m else "?"
        raise ProfileError(f"{path}:{line}: TOML syntax error: {exc}") from None
    loader = _Loader(source, path)
    if environ:
        _env_overrides(doc, environ)
    for key in doc:
        if key not in ("default", "numbers", "profiles"):
            raise loader.error((), key, "unknown top-level key; expected default, [numbers], [profiles.NAME]")
    raw_profiles = doc.get("profiles", {})
    if not isinstance(raw_profiles, dict) or not raw_profiles:
        raise ProfileError(f"{path}:?: no profiles: add at least one [profiles.NAME] table")
    profiles = {name: loader.profile(name, raw) for name, raw in raw_profiles.items()}
    numbers: dict[str, str] = {}
    raw_numbers = doc.get("numbers", {})
    if not isinstance(raw_numbers, dict):
        raise loader.error((), "numbers", "expected a table [numbers]")
    for number, name in raw_numbers.items():
        if not E164_RE.match(number):
            raise loader.error(("numbers",), number, 'expected an E.164 number like "+15551234567"')
        if not isinstance(name, str) or name not in profiles:
            raise loader.error(("numbers",), number, f"unknown profile {name!r}")
        numbers[number] = name
    default = doc.get("default")
    if default is not None and (not isinstance(default, str) or default not in profiles):
        have = ", ".join(sorted(profiles))
        raise loader.error((), "default", f"unknown profile {default!r} (have: {have})")
    return Profiles(profiles=profiles, numbers=numbers, default=default, path=path)


def load_profiles(path: str | Path, environ: Mapping[str, str] | None = None) -> Profiles:
    """Load and validate the profiles file at ``path`` (env overrides from ``environ``, default
    ``os.environ``)."""
    import os

    p = Path(path)
    try:
        source = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p}: cannot read the profiles file: {exc}") from None
    return parse_profiles(source, str(p), os.environ if environ is None else environ)


def load_from_settings(settings: Settings) -> Profiles | None:
    """The profiles named by ``RTVOICE_PROFILES``, validated (None when unset)."""
    return load_profiles(settings.profiles_path) if settings.profiles_path else None
