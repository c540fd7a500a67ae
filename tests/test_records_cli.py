"""``python -m rtvoice calls list|show|export|usage`` against a real records database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtvoice.records import CallRecords

DAY = 1_764_633_600.0  # 2025-12-02 00:00 UTC
SID1 = "CA" + "1" * 32
SID2 = "CA" + "2" * 32


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "calls.sqlite3"
    with CallRecords(path) as rec:
        rec.start_call(SID1, from_number="+15557654321", to_number="+15550001000", agent="openai",
                       profile="desk", started_at=DAY + 60)
        rec.add_turn(SID1, "caller", "when do you open", 0, 1500)
        rec.add_turn(SID1, "bot", "At nine", 1900, 2600, full_text="At nine, and we close at five",
                     interrupted=True)
        rec.add_barge_in(SID1, 2600, 700, 58.0, "item_1")
        rec.add_latency(SID1, "eos_to_first_audio_sent", 400)
        rec.add_fault(SID1, "dropped", "socket closed", vendor="openai")
        rec.add_usage(SID1, "openai", {"input_audio_tokens": 300, "output_audio_tokens": 120})
        rec.end_call(SID1, "completed", ended_at=DAY + 180)
        rec.start_call(SID2, from_number="+15550001000", to_number="+15551112222", direction="outbound-api",
                       agent="openai-elevenlabs", profile="sales", started_at=DAY + 3600)
        rec.add_usage(SID2, "elevenlabs", {"characters": 420})
        rec.add_usage(SID2, "openai", {"input_text_tokens": 50})
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTVOICE_")}
    return subprocess.run(
        [sys.executable, "-m", "rtvoice", "calls", *args],
        capture_output=True, text=True, timeout=120, env=env, cwd="/",
    )


def test_list_table(db: Path) -> None:
    r = _cli("--db", str(db), "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["CALL", "SID", "STARTED"]
    assert lines[2].startswith(SID2) and "outbound-api" in lines[2] and "(open)" in lines[2]  # newest first
    assert lines[3].startswith(SID1) and "completed" in lines[3] and "2.00" in lines[3]
    assert lines[3].split()[-3:] == ["2", "1", "1"]  # turns, barge-ins, errors


def test_show_human_and_json(db: Path) -> None:
    r = _cli("--db", str(db), "show", SID1)
    assert r.returncode == 0, r.stderr
    assert "inbound from +15557654321 to +15550001000" in r.stdout
    assert "caller: when do you open" in r.stdout
    assert "bot: At nine  [interrupted]" in r.stdout
    assert "heard 700 ms of item_1, reaction 58 ms" in r.stdout
    assert "eos_to_first_audio_sent: 400 ms" in r.stdout
    assert "openai dropped: socket closed" in r.stdout
    assert "openai: input_audio_tokens=300, output_audio_tokens=120" in r.stdout
    j = json.loads(_cli("--db", str(db), "show", SID1, "--json").stdout)
    assert j["turns"][1]["full_text"] == "At nine, and we close at five" and j["minutes"] == 2.0
    missing = _cli("--db", str(db), "show", "CA" + "9" * 32)
    assert missing.returncode == 1 and "no call" in missing.stderr


def test_export_json_and_jsonl(db: Path, tmp_path: Path) -> None:
    r = _cli("--db", str(db), "export")
    assert r.returncode == 0, r.stderr
    calls = json.loads(r.stdout)
    assert [c["call_sid"] for c in calls] == [SID1, SID2]
    assert calls[1]["usage"] == {"elevenlabs": {"characters": 420.0}, "openai": {"input_text_tokens": 50.0}}
    out = tmp_path / "calls.jsonl"
    assert _cli("--db", str(db), "export", "--format", "jsonl", "-o", str(out)).returncode == 0
    assert [json.loads(line)["call_sid"] for line in out.read_text().splitlines()] == [SID1, SID2]


def test_usage(db: Path) -> None:
    r = _cli("--db", str(db), "usage", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(x["day"], x["profile"], x["calls"]) for x in report] == [
        ("2025-12-02", "desk", 1),
        ("2025-12-02", "sales", 1),
    ]
    assert report[0]["minutes"] == 2.0 and report[0]["openai.input_audio_tokens"] == 300
    assert report[1]["elevenlabs.characters"] == 420
    table = _cli("--db", str(db), "usage").stdout.splitlines()
    assert "elevenlabs.characters" in table[0] and table[2].startswith("2025-12-02  desk")


def test_missing_database(tmp_path: Path) -> None:
    r = _cli("--db", str(tmp_path / "none.sqlite3"), "list")
    assert r.returncode == 1 and "no call records" in r.stderr
