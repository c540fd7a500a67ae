"""``GET /healthz`` and ``GET /metrics`` served by the real server on loopback."""

from __future__ import annotations

import asyncio
import json

import websockets

from rtvoice import metrics
from rtvoice.config import Settings
from rtvoice.server import observability
from rtvoice.server.echo_app import build_app
from rtvoice.server.limits import ANSWERS, ErrorKind
from server_testutil import TIMEOUT, read_response, serving


class _Calls:
    active_calls = 3


async def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        return await read_response(reader)
    finally:
        writer.close()


async def test_healthz_reports_active_calls_from_the_registry() -> None:
    app = build_app(Settings())
    observability.register(app, Settings(), _Calls())  # re-register with a registry that has calls
    async with serving(app) as srv:
        status, headers, body = await _get(srv.port, "/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["ok"] is True and doc["active_calls"] == 3 and isinstance(doc["pid"], int)


async def test_healthz_without_a_registry_says_zero() -> None:
    async with serving(build_app(Settings())) as srv:
        _, _, body = await _get(srv.port, "/healthz")
    assert json.loads(body)["active_calls"] == 0


async def test_metrics_exposition_counts_requests_and_websockets() -> None:
    async with serving(build_app(Settings())) as srv:
        await _get(srv.port, "/healthz")
        await _get(srv.port, "/no-such-path")
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/echo") as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            _, _, during = await _get(srv.port, "/metrics")
        await asyncio.sleep(0.1)
        status, headers, body = await _get(srv.port, "/metrics")
    assert status == 200
    # Prometheus text exposition; prometheus-client pairs generate_latest() with this content type.
    assert headers["content-type"] == metrics.CONTENT_TYPE_LATEST
    assert headers["content-type"].startswith("text/plain; version=")
    text = body.decode()
    assert 'rtvoice_http_requests_total{route="/healthz",status="200"}' in text
    assert 'rtvoice_http_requests_total{route="unmatched",status="404"}' in text
    assert 'rtvoice_websocket_closed_total{code="1000"}' in text
    for name in ("rtvoice_active_calls", "rtvoice_frames_in_total", "rtvoice_frames_out_total",
                 "rtvoice_frames_dropped_total", "rtvoice_frames_late_total",
                 "rtvoice_frame_processing_seconds_bucket", "rtvoice_connections "):
        assert name in text, name
    # The WebSocket gauge was 1 higher while the socket was open.
    def gauge(exposition: bytes) -> float:
        lines = exposition.decode().splitlines()
        line = next(x for x in lines if x.startswith("rtvoice_websocket_connections "))
        return float(line.split()[1])

    assert gauge(during) == gauge(body) + 1


def test_every_error_kind_has_an_answer_matching_the_architecture_table() -> None:
    assert set(ANSWERS) == set(ErrorKind)
    assert ANSWERS[ErrorKind.HEADERS_TOO_LARGE][0] == 431
    assert ANSWERS[ErrorKind.BODY_TOO_LARGE][0] == 413
    assert ANSWERS[ErrorKind.MALFORMED_HTTP][0] == 400
    assert ANSWERS[ErrorKind.TOO_MANY_CONNECTIONS][0] == 503
    assert ANSWERS[ErrorKind.BAD_SIGNATURE][0] == 403
    assert ANSWERS[ErrorKind.MESSAGE_TOO_BIG][1] == 1009
    assert ANSWERS[ErrorKind.BAD_STREAM_TOKEN][1] == 1008
    assert ANSWERS[ErrorKind.PROTOCOL_VIOLATION][1] == 1008
    assert ANSWERS[ErrorKind.SEND_QUEUE_OVERFLOW][1] == 1008
    assert ANSWERS[ErrorKind.SHUTTING_DOWN][1] == 1001
    assert ANSWERS[ErrorKind.INTERNAL] == (500, 1011)


def test_render_uses_the_dedicated_registry() -> None:
    body, _ = metrics.render()
    assert b"rtvoice_errors_total" in body or b"# TYPE rtvoice_errors_total counter" in body
    assert b"python_gc_objects" not in body  # not the default global registry
