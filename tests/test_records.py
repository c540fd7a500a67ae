"""Call records: schema and migrations, the writer thread, the recorder, limits, WAV legs, kill safety."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rtvoice.agents.base import CallInfo, Heard
from rtvoice.call.call import CallObserver, TurnLatency
from rtvoice.records import (
    HEADER_LEN,
    HEADER_REFRESH_BYTES,
    MIGRATIONS,
    SCHEMA_VERSION,
    CallRecorder,
    CallRecords,
    LegRecorder,
    RecordsError,
    UsageLimits,
    connect,
    migrate,
    openai_usage_counts,
    repair_wav,
)

SID = "CA" + "0123456789abcdef" * 2


def _info() -> CallInfo:
    return CallInfo(
        SID, "MZ1", account_sid="AC" + "1" * 32, from_number="+15550001111", to_number="+15559990000"
    )


def _read_mulaw_wav(path: Path) -> tuple[int, int, bytes]:
    """(format tag, sample rate, data) of a WAV, walking its chunks and trusting only the header sizes."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    riff_len = struct.unpack("<I", raw[4:8])[0]
    assert riff_len + 8 <= len(raw)
    pos, fmt_tag, rate, data = 12, 0, 0, b""
    while pos + 8 <= riff_len + 8:
        cid, clen = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        body = raw[pos + 8 : pos + 8 + clen]
        assert len(body) == clen, "chunk runs past the end of the file"
        if cid == b"fmt ":
            fmt_tag, _ch, rate = struct.unpack("<HHI", body[:8])
        elif cid == b"data":
            data = body
        pos += 8 + clen + (clen & 1)
    return fmt_tag, rate, data


def test_migrations_create_versioned_schema(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    with CallRecords(db) as rec:
        assert rec.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    conn = connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    # Re-opening applies nothing twice.
    assert migrate(conn) == SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_upgrade_from_version_1_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO schema_version VALUES (1, 0)")
    conn.execute("INSERT INTO calls (call_sid, started_at, updated_at) VALUES (?, 1, 1)", (SID,))
    conn.close()
    with CallRecords(db) as rec:
        assert rec.schema_version == SCHEMA_VERSION
        got = rec.get(SID)
    assert got is not None and got["recording_in"] == ""


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    CallRecords(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(RecordsError, match="newer"):
        CallRecords(db)


def test_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecordsError, match="cannot open"):
        CallRecords(tmp_path / "file" / "db.sqlite3")


async def test_recorder_full_call(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]
    with CallRecords(tmp_path / "r.sqlite3") as rec:
        r = CallRecorder(rec, agent="openai", profile="desk", clock=lambda: clock[0])
        observer: CallObserver = r  # the call engineer's protocol
        observer.call_started(_info())
        observer.turn("caller", "what time do you open", 0, 1800)
        observer.latency(TurnLatency(caller_end_ms=1800, first_audio_sent_ms=2212, first_heard_ms=2300))
        full = "We open at nine and close at five"
        r.turn("bot", "We open at nine", 2200, 3100, full_text=full, interrupted=True)
        observer.barge_in(Heard("item_1", 900), 64)
        observer.barge_in(None, 30)
        r.usage("openai", **openai_usage_counts(_RESPONSE_DONE_USAGE))
        r.usage("elevenlabs", characters=33)
        r.fault("dropped", "socket closed", vendor="openai")
        clock[0] += 90
        observer.call_ended("completed")
        observer.call_ended("error")  # a second end is ignored
        await rec.flush()
        got = rec.get(SID)
    assert got is not None
    assert got["from_number"] == "+15550001111" and got["to_number"] == "+15559990000"
    assert got["agent"] == "openai" and got["profile"] == "desk" and got["direction"] == "inbound"
    assert got["outcome"] == "completed" and got["minutes"] == pytest.approx(1.5)
    assert [(t["role"], t["text"]) for t in got["turns"]] == [
        ("caller", "what time do you open"),
        ("bot", "We open at nine"),
    ]
    assert got["turns"][1]["interrupted"] is True
    assert got["turns"][1]["full_text"] == "We open at nine and close at five"
    assert [(b["item_id"], b["heard_ms"], b["reaction_ms"]) for b in got["barge_ins"]] == [
        ("item_1", 900, 64.0),
        ("", None, 30.0),
    ]
    assert [(x["name"], x["value_ms"], x["at_ms"]) for x in got["latencies"]] == [
        ("eos_to_first_audio_sent", 412.0, 1800),
        ("eos_to_first_audio_heard", 500.0, 1800),
    ]
    assert got["stream_sid"] == "MZ1" and got["account_sid"] == "AC" + "1" * 32
    assert got["faults"][0]["kind"] == "dropped" and got["faults"][0]["vendor"] == "openai"
    assert got["usage"]["openai"] == {
        "input_text_tokens": 120,
        "input_audio_tokens": 300,
        "input_cached_tokens": 64,
        "output_text_tokens": 20,
        "output_audio_tokens": 150,
    }
    assert got["usage"]["elevenlabs"] == {"characters": 33}
    assert r.tokens == 120 + 300 + 20 + 150


_RESPONSE_DONE_USAGE = {
    "total_tokens": 590,
    "input_tokens": 420,
    "output_tokens": 170,
    "input_token_details": {
        "text_tokens": 120,
        "audio_tokens": 300,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 20, "audio_tokens": 150},
}


async def test_writes_never_block_the_loop(tmp_path: Path) -> None:
    """Hold the database's write lock from another connection: writes still return at once (they queue)."""
    db = tmp_path / "r.sqlite3"
    with CallRecords(db) as rec:
        blocker = connect(db)
        blocker.execute("BEGIN IMMEDIATE")
        rec.start_call(SID)
        for i in range(200):
            rec.add_turn(SID, "caller", f"turn {i}", i, i + 1)
        fut = rec.flush_future()
        await asyncio.sleep(0.2)
        assert not fut.done()  # the writer is stuck behind the lock, the loop is not
        blocker.execute("COMMIT")
        blocker.close()
        await rec.flush()
        got = rec.get(SID)
    assert got is not None and len(got["turns"]) == 200


def test_bad_event_does_not_lose_its_neighbours(tmp_path: Path) -> None:
    with CallRecords(tmp_path / "r.sqlite3") as rec:
        rec.start_call(SID)
        rec.add_turn("CA-unknown", "caller", "orphan")  # foreign key violation
        rec.add_turn(SID, "caller", "kept")
        rec.flush_sync()
        got = rec.get(SID)
        assert rec.write_errors == 1
    assert got is not None and [t["text"] for t in got["turns"]] == ["kept"]


def test_two_writers_share_one_file(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    with CallRecords(db) as a, CallRecords(db) as b:

        def run(rec: CallRecords, prefix: str) -> None:
            for i in range(50):
                rec.start_call(f"{prefix}{i:032x}")

        threads = [threading.Thread(target=run, args=(a, "CA")), threading.Thread(target=run, args=(b, "CB"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a.flush_sync()
        b.flush_sync()
        assert len(a.list_calls(limit=1000)) == 100


def test_usage_report_and_day_usage(tmp_path: Path) -> None:
    day1 = 1_700_000_000.0  # 2023-11-14 UTC
    with CallRecords(tmp_path / "r.sqlite3") as rec:
        for i, (profile, start) in enumerate([("desk", day1), ("desk", day1 + 60), ("sales", day1 + 86400)]):
            sid = f"CA{i:032x}"
            rec.start_call(sid, profile=profile, started_at=start)
            rec.add_usage(sid, "openai", {"input_audio_tokens": 100, "output_audio_tokens": 50})
            rec.add_usage(sid, "elevenlabs", {"characters": 10})
            rec.end_call(sid, "completed", ended_at=start + 120)
        rec.flush_sync()
        report = rec.usage_report()
        today = rec.day_usage("2023-11-14")
    assert [(r["day"], r["profile"], r["calls"]) for r in report] == [
        ("2023-11-14", "desk", 2),
        ("2023-11-15", "sales", 1),
    ]
    assert report[0]["minutes"] == pytest.approx(4.0)
    assert report[0]["openai.input_audio_tokens"] == 200 and report[0]["elevenlabs.characters"] == 20
    assert today == {"minutes": pytest.approx(4.0), "tokens": 300.0}


def test_usage_limits() -> None:
    lim = UsageLimits(call_minutes=5, call_tokens=1000, day_minutes=60, day_tokens=10_000)
    assert lim.check(1, 10, 0, 0) is None
    assert lim.check(5, 10, 0, 0) == "call_minutes"
    assert lim.check(1, 1000, 0, 0) == "call_tokens"
    assert lim.check(1, 10, 59, 0) == "day_minutes"
    assert lim.check(1, 10, 0, 9_990) == "day_tokens"
    assert not UsageLimits().enabled and UsageLimits().check(1e9, 1e9, 1e9, 1e9) is None


async def test_recorder_limit_reason(tmp_path: Path) -> None:
    clock = [1000.0]
    with CallRecords(tmp_path / "r.sqlite3") as rec:
        limits = UsageLimits(call_minutes=2, day_tokens=500)
        r = CallRecorder(rec, limits=limits, clock=lambda: clock[0])
        r.call_started(_info())
        await r.load_day_usage()
        assert r.limit_reason() is None
        r.usage("openai", input_audio_tokens=200, input_cached_tokens=10_000)  # cached is not extra usage
        assert r.limit_reason() is None
        r.day_before = {"minutes": 0.0, "tokens": 300.0}
        r.usage("openai", output_audio_tokens=1)
        assert r.limit_reason() == "day_tokens"
        r.day_before = {"minutes": 0.0, "tokens": 0.0}
        clock[0] += 121
        assert r.limit_reason() == "call_minutes"


async def test_on_limit_fires_once_and_is_recorded(tmp_path: Path) -> None:
    hits: list[str] = []
    with CallRecords(tmp_path / "r.sqlite3") as rec:
        r = CallRecorder(rec, limits=UsageLimits(call_tokens=1000), on_limit=hits.append)
        r.call_started(_info())
        r.usage("openai", output_audio_tokens=600)
        assert hits == []
        r.usage("openai", output_audio_tokens=600)
        r.turn("bot", "goodbye", 0, 100)
        r.usage("openai", output_audio_tokens=600)
        assert hits == ["call_tokens"] and r.limit_hit == "call_tokens"
        r.call_ended("usage_limit")
        await rec.flush()
        got = rec.get(SID)
    assert got is not None and got["outcome"] == "usage_limit"
    assert [(f["kind"], f["message"]) for f in got["faults"]] == [("usage_limit", "call_tokens")]


def test_leg_recorder_writes_valid_mulaw_wav(tmp_path: Path) -> None:
    legs = LegRecorder(tmp_path, SID)
    caller = bytes(range(256)) * 100
    for i in range(0, len(caller), 160):
        legs.caller_audio(caller[i : i + 160])
    legs.bot_audio(b"\xff" * 160)
    legs.close()
    tag, rate, data = _read_mulaw_wav(legs.inbound_path)
    assert (tag, rate, data) == (7, 8000, caller)
    assert _read_mulaw_wav(legs.outbound_path)[2] == b"\xff" * 160


_KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from rtvoice.records import CallRecords, CallRecorder
    db, wav_dir, sid = sys.argv[1:4]
    rec = CallRecords(db)
    from rtvoice.agents.base import CallInfo
    r = CallRecorder(rec, agent="local", profile="desk")
    r.call_started(CallInfo(sid, "MZ1", from_number="+15550001111", to_number="+15559990000"))
    legs = r.record_audio(wav_dir)
    for i in range(5):
        r.turn("caller", f"caller turn {i}", i * 1000, i * 1000 + 500)
        r.turn("bot", f"bot turn {i}", i * 1000 + 600, i * 1000 + 900)
    r.usage("openai", input_audio_tokens=77)
    for _ in range(150):   # 3 s of caller audio, 20 ms frames
        legs.caller_audio(b"\\x55" * 160)
    rec.flush_sync()
    print("recorded", flush=True)
    while True:            # mid-call: more audio keeps coming until the process is killed
        legs.caller_audio(b"\\x55" * 160)
        time.sleep(0.02)
    """
)


def test_sigkill_mid_call_loses_nothing_recorded(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(db), str(tmp_path / "wav"), SID],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "recorded"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with CallRecords(db) as rec:  # "after restart"
        got = rec.get(SID)
    assert got is not None
    assert got["ended_at"] is None and got["outcome"] is None  # killed: never ended, but everything is there
    assert len(got["turns"]) == 10 and got["turns"][-1]["text"] == "bot turn 4"
    assert got["usage"] == {"openai": {"input_audio_tokens": 77.0}}
    wav = Path(got["recording_in"])
    # The header was last refreshed at most HEADER_REFRESH_BYTES ago: it is valid and covers >= 2 s.
    tag, rate, data = _read_mulaw_wav(wav)
    assert (tag, rate) == (7, 8000)
    assert len(data) >= 150 * 160 - HEADER_REFRESH_BYTES and set(data) == {0x55}
    # The repair tool extends the header to every byte that reached the file.
    size = wav.stat().st_size
    assert repair_wav(wav) == size - HEADER_LEN
    assert len(_read_mulaw_wav(wav)[2]) == size - HEADER_LEN


def _sample(name: str, labels: dict[str, str]) -> float:
    from rtvoice.metrics import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_recorder_feeds_prometheus_and_maps_agent_usage(tmp_path: Path) -> None:
    from rtvoice.agents.vendor_common import Usage
    from rtvoice.metrics import render

    sent = {"stage": "sent"}
    before = {
        "lat": _sample("rtvoice_turn_latency_seconds_count", sent),
        "barge": _sample("rtvoice_barge_ins_total", {"cut_off": "yes"}),
        "err": _sample("rtvoice_vendor_errors_total", {"vendor": "openai", "kind": "dropped"}),
        "tok": _sample("rtvoice_vendor_usage_total", {"vendor": "openai", "metric": "output_audio_tokens"}),
        "chars": _sample("rtvoice_vendor_usage_total", {"vendor": "elevenlabs", "metric": "characters"}),
    }
    usage = Usage()
    usage.add_openai(_RESPONSE_DONE_USAGE)
    usage.tts_characters = 42
    with CallRecords(tmp_path / "r.sqlite3") as rec:
        r = CallRecorder(rec, agent="openai", profile="desk")
        r.call_started(_info())
        r.latency(TurnLatency(caller_end_ms=1000, first_audio_sent_ms=1450))
        r.barge_in(Heard("item_1", 300), 70)
        r.fault("dropped", "socket closed")
        r.agent_usage(usage)
        r.call_ended("completed")
        await rec.flush()
        got = rec.get(SID)
    assert got is not None
    assert got["usage"]["openai"]["input_cached_tokens"] == 64
    assert got["usage"]["openai"]["output_audio_tokens"] == 150
    assert got["usage"]["elevenlabs"] == {"characters": 42}
    assert _sample("rtvoice_turn_latency_seconds_count", sent) == before["lat"] + 1
    assert _sample("rtvoice_barge_ins_total", {"cut_off": "yes"}) == before["barge"] + 1
    dropped = {"vendor": "openai", "kind": "dropped"}
    assert _sample("rtvoice_vendor_errors_total", dropped) == before["err"] + 1
    out_audio = {"vendor": "openai", "metric": "output_audio_tokens"}
    assert _sample("rtvoice_vendor_usage_total", out_audio) == before["tok"] + 150
    chars = {"vendor": "elevenlabs", "metric": "characters"}
    assert _sample("rtvoice_vendor_usage_total", chars) == before["chars"] + 42
    assert b"rtvoice_turn_latency_seconds_bucket" in render()[0]
