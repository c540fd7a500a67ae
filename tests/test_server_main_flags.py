"""``serve --max-calls`` and the worker environment (sans-I/O: the parser and the settings, no process)."""

from __future__ import annotations

import argparse

import pytest

from rtvoice.config import ConfigError, Settings
from rtvoice.server.main import _settings_env, configure, settings_from_args


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def test_max_calls_flag_reaches_settings_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTVOICE_MAX_CALLS", raising=False)
    monkeypatch.setenv("RTVOICE_OVERLOAD_LAG_MS", "25")
    monkeypatch.chdir("/")  # no .env file
    settings = settings_from_args(_args("--max-calls", "250"))
    assert (settings.max_calls, settings.overload_lag_ms) == (250, 25.0)
    env = _settings_env(settings)  # what each worker of --workers N starts with
    assert env["RTVOICE_MAX_CALLS"] == "250" and float(env["RTVOICE_OVERLOAD_LAG_MS"]) == 25.0
    back = Settings.from_env(env, dotenv=None)
    assert (back.max_calls, back.overload_lag_ms) == (250, 25.0)


def test_bad_max_calls_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    with pytest.raises(ConfigError, match="--max-calls -3"):
        settings_from_args(_args("--max-calls", "-3"))
