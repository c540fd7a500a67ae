"""The ``python -m rtvoice`` entry point: subcommand dispatch and startup errors, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ELEVENLABS_", "RTVOICE_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "rtvoice", *args], capture_output=True, text=True, env=full_env, timeout=60, cwd="/"
    )


def test_missing_vendor_key_stops_serve_at_startup_naming_the_variable() -> None:
    proc = _run("serve", "--port", "0", RTVOICE_AGENT="openai")
    assert proc.returncode == 2
    assert "OPENAI_API_KEY" in proc.stderr
    assert "serving on" not in proc.stdout


def test_bad_value_is_one_clear_line() -> None:
    proc = _run(RTVOICE_PORT="abc")  # no subcommand: serve
    assert proc.returncode == 2
    assert "RTVOICE_PORT='abc'" in proc.stderr


def test_help_lists_every_command() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for command in ("serve", "simulate", "emulate", "demo", "bench", "call", "calls"):
        assert command in proc.stdout
