"""The corked write of a read is deferred to the end of the loop iteration (fast paths on): what the handler
sends during the read, and in callbacks that run before the deferred write, leaves in one write and in order;
a read that sends nothing leaves no cork behind (a later send from a timer is written, not held); a close
still follows everything sent before it. Real sockets on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from rtvoice.server import websocket as ws_module
from rtvoice.server.api import App, Request, WebSocket
from rtvoice.server.websocket import WebSocketConnection
from server_testutil import TIMEOUT, serving
from test_server_websocket import _upgrade_request


class Counting:
    def __init__(self, inner: Any, writes: list[bytes]) -> None:
        self._inner = inner
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Handler:
    def __init__(self, ws: WebSocket, writes: list[bytes]) -> None:
        self.ws = ws
        assert isinstance(ws, WebSocketConnection)
        ws._transport = Counting(ws._transport, writes)  # type: ignore[assignment]

    def on_text(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        if text == "burst":
            self.ws.send_text("r1")
            loop.call_soon(self.ws.send_text, "cb")  # runs before the deferred write: same write
            self.ws.send_text("r2")
        elif text == "quiet":
            loop.call_later(0.02, self.ws.send_text, "timer")  # nothing sent in the read itself
        elif text == "bye":
            self.ws.send_text("last")
            self.ws.close(1000, "done")

    def on_binary(self, data: bytes) -> None: ...
    def on_close(self, code: int | None, reason: str) -> None: ...


def _client(data: bytes) -> bytes:
    return Frame(Opcode.TEXT, data).serialize(mask=True, extensions=[])


def _texts(data: bytes) -> list[str]:
    out, pos = [], 0
    while pos + 2 <= len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        if opcode == 1:
            out.append(data[pos + 2 : pos + 2 + n].decode())
        else:
            out.append(f"<{opcode}>")
        pos += 2 + n
    return out


async def _read_texts(reader: asyncio.StreamReader, want: int) -> list[str]:
    data = b""
    while len(_texts(data)) < want:
        data += await asyncio.wait_for(reader.read(65536), TIMEOUT)
    return _texts(data)


@pytest.mark.parametrize("defer", [True, False])
async def test_deferred_cork(monkeypatch: pytest.MonkeyPatch, defer: bool) -> None:
    monkeypatch.setattr(ws_module, "_DEFER_UNCORK", defer)
    writes: list[bytes] = []
    app = App()

    async def accept(request: Request) -> Any:
        return lambda ws: Handler(ws, writes)

    app.websocket("/ws", accept)
    async with serving(app) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(_upgrade_request())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101")
        writes.clear()
        writer.write(_client(b"burst"))
        assert await _read_texts(reader, 3) == ["r1", "r2", "cb"]
        if defer:
            assert [_texts(w) for w in writes] == [["r1", "r2", "cb"]]  # one write
        else:
            assert [_texts(w) for w in writes] == [["r1", "r2"], ["cb"]]
        writes.clear()
        writer.write(_client(b"quiet"))
        assert await _read_texts(reader, 1) == ["timer"]  # not held in a leftover cork
        writer.write(_client(b"bye"))
        rest = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            if not chunk:
                break
            rest += chunk
        writer.close()
    assert _texts(rest) == ["last", "<8>"]  # the close frame after the text sent before it


class _FakeConn:
    def __init__(self, log: list[str], name: str) -> None:
        self._uncork_scheduled = True
        self.log = log
        self.name = name

    def _uncork(self) -> None:
        self.log.append(self.name)


async def test_one_callback_per_iteration_flushes_every_deferred_connection() -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    real = loop.call_soon

    def counting(cb: Any, *args: Any, **kw: Any) -> Any:
        if cb is ws_module._uncork_all:
            scheduled.append(cb)
        return real(cb, *args, **kw)

    loop.call_soon = counting  # type: ignore[method-assign]
    try:
        log: list[str] = []
        a, b = _FakeConn(log, "a"), _FakeConn(log, "b")
        ws_module._defer_uncork(a, loop)  # type: ignore[arg-type]
        ws_module._defer_uncork(b, loop)  # type: ignore[arg-type]
        assert scheduled == [ws_module._uncork_all] and log == []
        await asyncio.sleep(0)
        assert log == ["a", "b"] and not a._uncork_scheduled and not b._uncork_scheduled
        ws_module._defer_uncork(a, loop)  # type: ignore[arg-type]  # the next iteration schedules again
        assert len(scheduled) == 2
        await asyncio.sleep(0)
        assert log == ["a", "b", "a"]
    finally:
        loop.call_soon = real  # type: ignore[method-assign]
