"""The outbound text-frame fast path of :class:`rtvoice.server.websocket.WebSocketConnection`.

``server_text_frame`` must give exactly the bytes of websockets' ``Frame.serialize(mask=False)``, and a real
server must put exactly the same bytes on the wire with the fast path on and off: texts of every length class
(7/16/64-bit), non-ASCII text, sends inside a read (corked) and outside one (a timer callback), a ping in the
middle (the library's pong must stay in order) and the close frame after them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from rtvoice.server import websocket as ws_module
from rtvoice.server.api import App, Request, WebSocket
from rtvoice.server.clientframes import server_text_frame
from server_testutil import read_to_eof, serving
from test_server_websocket import _client_frame, _open_upgraded

_BOUNDARY_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def _library(data: bytes) -> bytes:
    return Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("n", _BOUNDARY_SIZES)
def test_frame_at_every_length_boundary_equals_the_library(n: int) -> None:
    data = b"x" * n
    assert server_text_frame(data) == _library(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_payload_equals_the_library(data: bytes) -> None:
    assert server_text_frame(data) == _library(data)


class Answer:
    """Answers 'size:<n>' with a text of n bytes, 'uni' with non-ASCII text, 'later' with two texts sent from a
    timer callback (outside any read), 'bye' with a close."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    def on_text(self, text: str) -> None:
        if text.startswith("size:"):
            self.ws.send_text("a" * int(text[5:]))
        elif text == "uni":
            self.ws.send_text("héllo ☎ 𝄞")
        elif text == "later":
            asyncio.get_running_loop().call_soon(self._later)
        elif text == "bye":
            self.ws.send_text("last")
            self.ws.close(1000, "done")
        else:
            self.ws.send_text(text)

    def _later(self) -> None:
        self.ws.send_text("later-1")
        self.ws.send_text("later-2" * 40)

    def on_binary(self, data: bytes) -> None: ...
    def on_close(self, code: int | None, reason: str) -> None: ...


async def _session(monkeypatch: pytest.MonkeyPatch, fast: bool) -> bytes:
    monkeypatch.setattr(ws_module, "_FAST_SEND", fast)
    app = App()

    async def accept(request: Request) -> Any:
        return Answer

    app.websocket("/ws", accept)
    async with serving(app) as srv:
        reader, writer = await _open_upgraded(srv.port)
        msgs = [_client_frame(Opcode.TEXT, f"size:{n}".encode()) for n in _BOUNDARY_SIZES]
        msgs.insert(3, _client_frame(Opcode.PING, b"p"))  # its pong is written between two texts
        msgs += [_client_frame(Opcode.TEXT, b"uni"), _client_frame(Opcode.TEXT, b"later")]
        writer.write(b"".join(msgs[:5]))
        await asyncio.sleep(0.05)
        writer.write(b"".join(msgs[5:]))
        await asyncio.sleep(0.05)  # the 'later' texts leave from the timer callback
        writer.write(_client_frame(Opcode.TEXT, b"bye"))
        data = await read_to_eof(reader)
        writer.close()
    return data


async def test_same_bytes_on_the_wire_fast_and_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = await _session(monkeypatch, True)
    slow = await _session(monkeypatch, False)
    assert fast == slow
    # and the stream is what was asked for: the texts, the pong in its place, 'last', then the close frame
    expected = b"".join(_library(b"a" * n) for n in _BOUNDARY_SIZES[:3])
    expected += Frame(Opcode.PONG, b"p").serialize(mask=False, extensions=[])
    expected += b"".join(_library(b"a" * n) for n in _BOUNDARY_SIZES[3:])
    expected += _library("héllo ☎ 𝄞".encode()) + _library(b"later-1") + _library(b"later-2" * 40)
    expected += _library(b"last")
    assert fast.startswith(expected)
    assert fast[len(expected)] == 0x88  # the close frame follows
