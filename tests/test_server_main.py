"""``python -m rtvoice serve`` as a real subprocess: startup output, SIGTERM -> exit 0, two workers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from server_testutil import TIMEOUT, read_response

ECHO_APP = "rtvoice.server.echo_app:build_app"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTVOICE_", "PROMETHEUS_"))}
    env.update({"RTVOICE_LOG_JSON": "0", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _start(args: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "serve.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtvoice", "serve", "--host", "127.0.0.1", *args],
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
        env=_env(**env),
        cwd=tmp_path,  # no stray .env file
    )
    return proc, out


def _wait_for(out: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace")
        if m := re.search(pattern, text):
            return m
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in output:\n{out.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes], out: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"serve did not stop on SIGTERM:\n{out.read_text(errors='replace')}") from None


async def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        return await read_response(reader)
    finally:
        writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_prints_urls_serves_and_drains_websockets_with_1001_on_sigterm(tmp_path: Path) -> None:
    proc, out = _start(
        ["--port", "0", "--app", ECHO_APP, "--drain-timeout", "0.5", "--public-base-url", "https://voice.example.com"],
        tmp_path,
    )
    try:
        port = int(_wait_for(out, r"serving on 127\.0\.0\.1:(\d+)", proc).group(1))
        text = out.read_text()
        assert "https://voice.example.com/incoming-call" in text
        assert "wss://voice.example.com/media-stream" in text
        status, _, body = await _get(port, "/healthz")
        assert status == 200 and json.loads(body)["pid"] == proc.pid
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo") as ws:
            await ws.send("ping?")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ping?"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_two_workers_share_the_port_and_aggregate_metrics(tmp_path: Path) -> None:
    port = _free_port()
    args = ["--port", str(port), "--workers", "2", "--app", ECHO_APP, "--drain-timeout", "1"]
    proc, out = _start(args, tmp_path)
    try:
        _wait_for(out, r"(?s)worker \d+ listening.*worker \d+ listening", proc)
        pids: set[int] = set()
        for _ in range(60):  # each new connection lands on one of the two listeners (kernel hash)
            status, _, body = await _get(port, "/healthz")
            assert status == 200
            pids.add(json.loads(body)["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2 and proc.pid not in pids
        status, _, body = await _get(port, "/metrics")
        assert status == 200
        # Aggregated over both workers (multiprocess mode): the healthz count includes requests both answered.
        total = sum(
            float(line.split()[1])
            for line in body.decode().splitlines()
            if line.startswith('rtvoice_http_requests_total{route="/healthz"')
        )
        assert total >= 2
        assert _stop(proc, out) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_supervisor_restarts_a_crashed_worker(tmp_path: Path) -> None:
    port = _free_port()
    args = ["--port", str(port), "--workers", "2", "--app", ECHO_APP, "--drain-timeout", "1"]
    proc, out = _start(args, tmp_path)
    try:
        first = _wait_for(out, r"(?s)worker (\d+) listening.*worker (\d+) listening", proc)
        victim = int(first.group(1))
        os.kill(victim, signal.SIGKILL)
        _wait_for(out, rf"worker {victim} exited with -9", proc)
        _wait_for(out, r"(?s)(?:worker \d+ listening.*){3}", proc)  # a replacement came up
        pids = set()
        for _ in range(60):
            status, _, body = await _get(port, "/healthz")
            assert status == 200
            pids.add(json.loads(body)["pid"])
            if len(pids) == 2:
                break
        assert victim not in pids and len(pids) == 2
        assert _stop(proc, out) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _real_routes_importable() -> bool:
    try:
        from rtvoice.call import session  # noqa: F401
        from rtvoice.routes import build_app  # noqa: F401
        from rtvoice.server import observability  # noqa: F401
        from rtvoice.twilio import outbound, webhook  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _real_routes_importable(), reason="routes.build_app does not import yet")
async def test_real_app_serves_healthz_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    proc, out = _start(["--port", "0", "--no-validate"], tmp_path, RTVOICE_AGENT="echo")
    try:
        port = int(_wait_for(out, r"serving on 127\.0\.0\.1:(\d+)", proc).group(1))
        assert "signature validation is OFF" in out.read_text()
        status, _, body = await _get(port, "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
        assert _stop(proc, out) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
