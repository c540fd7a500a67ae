"""Agent profiles: TOML loading, validation errors with line numbers, templating, env overrides, selection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtvoice.config import ConfigError, Settings
from rtvoice.profiles import ProfileError, load_profiles, locate, parse_profiles, select_profile

GOOD = """\
default = "front-desk"

[numbers]
"+15550001000" = "front-desk"
"+15550002000" = "sales"

[profiles.front-desk]
instructions = '''You are the front desk. The caller is {caller}, calling {callee} at {time} on {date}.
Call {call_sid}, profile {profile}. Literal {{braces}} stay.'''
greeting = "Hello {caller}!"
voice = "cedar"
language = "it"
model = "gpt-realtime"
agent = "openai"
timezone = "Europe/Rome"
tools = ["end_call", "transfer_call"]
transfer_number = "+15550009999"

[profiles.front-desk.turn_detection]
vad_aggressiveness = 3
onset_frames = 5
hangover_frames = 20
max_queued_ms = 160

[profiles.sales]
instructions = "Sell."
"""


def test_load_apply_and_template(tmp_path: Path) -> None:
    f = tmp_path / "profiles.toml"
    f.write_text(GOOD)
    profiles = load_profiles(f, environ={})
    desk = profiles.get("front-desk")
    assert desk.tools == ("end_call", "transfer_call")
    now = dt.datetime(2026, 12, 2, 8, 30, tzinfo=dt.UTC)
    s = desk.apply(Settings(), caller="+15557654321", callee="+15550001000", call_sid="CA" + "1" * 32, now=now)
    assert s.instructions == (
        "You are the front desk. The caller is +15557654321, calling +15550001000 at 09:30 on 2026-12-02.\n"
        f"Call CA{'1' * 32}, profile front-desk. Literal {{braces}} stay."
    )
    assert s.greeting == "Hello +15557654321!"
    assert (s.openai_voice, s.openai_model, s.agent) == ("cedar", "gpt-realtime", "openai")
    assert (s.vad_aggressiveness, s.vad_onset_frames, s.vad_hangover_frames, s.max_queued_ms) == (3, 5, 20, 160)
    assert s.extra["profile"] == "front-desk" and s.extra["language"] == "it"
    assert s.extra["transfer_number"] == "+15550009999"
    # Unset fields keep the global settings.
    sales = profiles.get("sales").apply(Settings(openai_voice="marin", vad_onset_frames=4))
    assert (sales.instructions, sales.openai_voice, sales.vad_onset_frames) == ("Sell.", "marin", 4)


def test_selection_by_number() -> None:
    profiles = parse_profiles(GOOD, environ={})
    assert profiles.select("+15550002000").name == "sales"  # type: ignore[union-attr]
    assert profiles.select("+15559999999").name == "front-desk"  # type: ignore[union-attr]
    assert select_profile(profiles, "+15550001000").name == "front-desk"  # type: ignore[union-attr]
    assert select_profile(None, "+15550001000") is None
    # Outbound: our number is From; an explicit ?profile= wins.
    out = profiles.select_for_call("+15557654321", "+15550002000", "outbound-api")
    assert out is not None and out.name == "sales"
    assert profiles.select_for_call("+1555", "", "inbound", requested="sales").name == "sales"  # type: ignore[union-attr]
    with pytest.raises(KeyError, match="unknown profile"):
        profiles.select_for_call("+1555", requested="nope")
    no_default = parse_profiles(GOOD.replace('default = "front-desk"\n', ""), environ={})
    assert no_default.select("+15559999999") is None


def test_env_overrides() -> None:
    env = {
        "RTVOICE_PROFILE__FRONT_DESK__VOICE": "alloy",
        "RTVOICE_PROFILE__FRONT_DESK__ONSET_FRAMES": "7",
        "RTVOICE_PROFILE__SALES__TOOLS": "end_call, send_dtmf",
        "RTVOICE_DEFAULT_PROFILE": "sales",
        "UNRELATED": "x",
    }
    profiles = parse_profiles(GOOD, environ=env)
    assert profiles.get("front-desk").voice == "alloy"
    assert profiles.get("front-desk").turn_detection.onset_frames == 7
    assert profiles.get("sales").tools == ("end_call", "send_dtmf")
    assert profiles.default == "sales"
    with pytest.raises(ProfileError, match="onset_frames: expected a whole number"):
        parse_profiles(GOOD, environ={"RTVOICE_PROFILE__FRONT_DESK__ONSET_FRAMES": "99"})
    with pytest.raises(ProfileError, match="no profile named like 'NOPE'"):
        parse_profiles(GOOD, environ={"RTVOICE_PROFILE__NOPE__VOICE": "x"})


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        ('greeting = "Hello {caller}!"', 'greeting = "Hello {name}!"', "greeting =", "unknown placeholder {name}"),
        ('greeting = "Hello {caller}!"', 'greeting = "Hi {caller.__class__}"', "greeting =", "placeholder"),
        ('greeting = "Hello {caller}!"', 'greeting = "Hi {caller!r}"', "greeting =", "placeholder {caller!r}"),
        ('greeting = "Hello {caller}!"', 'greeting = "Hi {caller:>40}"', "greeting =", "placeholder"),
        ('greeting = "Hello {caller}!"', 'greeting = "Hi {"', "greeting =", "bad template"),
        ('voice = "cedar"', "voice = 3", "voice = 3", "expected a string"),
        ('agent = "openai"', 'agent = "gpt"', "agent =", "expected one of"),
        ('timezone = "Europe/Rome"', 'timezone = "Mars/Base"', "timezone =", "unknown time zone"),
        ('tools = ["end_call", "transfer_call"]', 'tools = ["end_call", "rm_rf"]', "tools =", "unknown tool 'rm_rf'"),
        ("onset_frames = 5", "onset_frames = 0", "onset_frames =", "from 1 to 50"),
        ("onset_frames = 5", "onset_frams = 5", "onset_frams", "unknown key"),
        ('language = "it"', 'language = "Italian!"', "language =", "a code like 'en'"),
        ('transfer_number = "+15550009999"', 'transfer_number = "555"', "transfer_number", "E.164"),
        ('"+15550002000" = "sales"', '"+15550002000" = "salez"', '"+15550002000"', "unknown profile 'salez'"),
        ('"+15550002000" = "sales"', '"5550002000" = "sales"', '"5550002000"', "E.164"),
        ('default = "front-desk"', 'default = "nobody"', "default =", "unknown profile 'nobody'"),
        ('model = "gpt-realtime"', 'modle = "gpt-realtime"', "modle", "unknown key"),
    ],
)
def test_semantic_errors_point_at_the_line(old: str, new: str, needle: str, message: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new)
    with pytest.raises(ProfileError) as err:
        parse_profiles(text, "p.toml", environ={})
    assert str(err.value).startswith(f"p.toml:{_line_of(text, needle)}:"), str(err.value)
    assert message in str(err.value)
    assert isinstance(err.value, ConfigError)  # the CLI prints it as a configuration error


def test_syntax_error_has_line(tmp_path: Path) -> None:
    text = GOOD.replace('voice = "cedar"', "voice = cedar")
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profiles(f, environ={})
    assert str(err.value).startswith(f"{f}:{_line_of(text, 'voice = cedar')}: TOML syntax error")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no profiles"):
        parse_profiles("", environ={})
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="RTVOICE_PROFILES"):
        Settings.from_env({"RTVOICE_PROFILES": str(tmp_path / "nope.toml")})
    f = tmp_path / "p.toml"
    f.write_text(GOOD)
    assert Settings.from_env({"RTVOICE_PROFILES": str(f)}).profiles_path == str(f)


def test_locate_handles_quoted_tables() -> None:
    src = '[profiles."front-desk"]\nvoice = "x"\n\n[profiles.sales]\nvoice = 1\n'
    assert locate(src, ("profiles", "front-desk"), "voice") == 2
    assert locate(src, ("profiles", "sales"), "voice") == 5
    assert locate(src, ("profiles", "sales"), "missing") == 4
    assert locate(src, ("nope",), "voice") is None


def test_settings_for_call() -> None:
    from rtvoice.profiles import settings_for_call

    profiles = parse_profiles(GOOD, environ={})
    now = dt.datetime(2026, 12, 2, 8, 30, tzinfo=dt.UTC)
    # Inbound on the sales number.
    s, p = settings_for_call(Settings(), profiles, to_number="+15550002000", from_number="+15557654321")
    assert p is not None and p.name == "sales" and s.instructions == "Sell."
    # Outbound from the sales number, placed with ?profile=front-desk&agent=echo: the request wins, and
    # {caller} is the remote party.
    s, p = settings_for_call(
        Settings(), profiles, call_sid="CA" + "7" * 32, from_number="+15550002000", to_number="+15557654321",
        direction="outbound-api", requested_profile="front-desk", agent="echo", now=now,
    )
    assert p is not None and p.name == "front-desk" and s.agent == "echo"
    assert s.greeting == "Hello +15557654321!" and s.openai_voice == "cedar"
    s, _ = settings_for_call(Settings(), profiles, to_number="+15550002000", prompt="Just say hi.")
    assert s.instructions == "Just say hi."
    # No profiles file: settings pass through; asking for a profile is an error.
    base = Settings(instructions="base")
    assert settings_for_call(base, None, to_number="+15550002000") == (base, None)
    with pytest.raises(KeyError):
        settings_for_call(base, None, requested_profile="sales")
    with pytest.raises(ValueError, match="agent"):
        settings_for_call(base, profiles, agent="gpt-9")

_template = st.lists(
    st.one_of(
        st.sampled_from(["{", "}", "{caller}", "{time}", "{x}", "{0}", "{caller.real}", "!r", ":"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(template=_template)
def test_accepted_templates_always_render(template: str) -> None:
    """Whatever a template is, it is refused at load time or renders at call time: never a mid-call error."""
    import json

    doc = f"[profiles.p]\ngreeting = {json.dumps(template)}\n"
    try:
        profile = parse_profiles(doc, environ={}).get("p")
    except ProfileError:
        return
    s = profile.apply(Settings(), caller="+15551234567", call_sid="CA" + "0" * 32)
    assert isinstance(s.greeting, str)
