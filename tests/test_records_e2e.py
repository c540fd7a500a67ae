"""The serving path records every call: ``build_app(settings)`` (as ``python -m rtvoice serve`` builds it)
opens the records database at the first call; an inbound simulated call leaves its record, and an
unopenable database leaves calls unrecorded but working."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from call_fakes import voiced
from e2e_testutil import TOKEN, loopback_settings, loopback_socket
from rtvoice.config import Settings
from rtvoice.records import CallRecords
from rtvoice.routes import build_app
from rtvoice.server.http import start_server
from rtvoice.sim.twilio import CallScript, SimulatedTwilio

TIMEOUT = 60.0


async def _call(settings: Settings, port: int, sock: socket.socket) -> str:
    server = await start_server(build_app(settings), settings, sock=sock)
    try:
        twilio = SimulatedTwilio(f"http://127.0.0.1:{port}", auth_token=TOKEN, speed=5.0)
        result = await twilio.call(
            CallScript().say(voiced(1000)).hangup(after_bot_silence_ms=500),
            from_number="+15557654321",
            to_number="+15550001000",
            timeout_s=TIMEOUT,
        )
        assert result.outcome == "completed" and result.bot_audio_bytes > 0
        return result.call_sid
    finally:
        await asyncio.wait_for(server.shutdown(0.0), 20)


def _settings(port: int, db: Path) -> Settings:
    return loopback_settings(port, agent="echo", echo_delay_ms=200, db_path=str(db))


async def test_serving_app_records_inbound_calls(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite3"
    sock, port = loopback_socket()
    settings = _settings(port, db)
    build_app(settings)  # building an app opens nothing
    assert not db.exists()
    sid = await _call(settings, port, sock)
    with CallRecords(db) as rec:
        for _ in range(200):  # the writer commits within milliseconds of the call's end
            got = rec.get(sid)
            if got is not None and got["outcome"] is not None:
                break
            await asyncio.sleep(0.05)
    assert got is not None and got["outcome"] == "completed"
    assert (got["direction"], got["from_number"], got["to_number"], got["agent"]) == (
        "inbound",
        "+15557654321",
        "+15550001000",
        "echo",
    )
    assert [t["role"] for t in got["turns"]] == ["bot"]  # the echo agent's item (it has no text)


async def test_unopenable_database_leaves_calls_working(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    sock, port = loopback_socket()
    sid = await _call(_settings(port, tmp_path / "file" / "calls.sqlite3"), port, sock)
    assert sid.startswith("CA")
