"""WebSocketConnection corks the handler's sends while it processes one read: all the messages sent in
reaction to the bytes of one ``data_received`` leave in one transport write, in order, on a real socket."""

from __future__ import annotations

from typing import Any

from websockets.frames import Opcode

from rtvoice.server.api import App, Request, WebSocket
from rtvoice.server.websocket import WebSocketConnection
from server_testutil import read_to_eof, serving
from test_server_websocket import _client_frame, _open_upgraded


class CountingTransport:
    def __init__(self, inner: Any, log: list[str]) -> None:
        self._inner = inner
        self._log = log

    def write(self, data: bytes) -> None:
        self._log.append("write")
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Triple:
    """Answers every text with three texts; the third message of each answer is a close after 'bye'."""

    def __init__(self, ws: WebSocket, log: list[str]) -> None:
        self.ws = ws
        assert isinstance(ws, WebSocketConnection)
        ws._transport = CountingTransport(ws._transport, log)  # type: ignore[assignment]
        original = ws.data_received
        self.log = log

        def counted(data: bytes) -> None:
            log.append("read")
            original(data)

        ws.data_received = counted  # type: ignore[method-assign]

    def on_text(self, text: str) -> None:
        for i in range(3):
            self.ws.send_text(f"{text}-{i}")
        if text == "bye":
            self.ws.close(1000, "done")

    def on_binary(self, data: bytes) -> None: ...
    def on_close(self, code: int | None, reason: str) -> None: ...


async def test_one_write_per_read_in_order_and_close_after_the_corked_frames() -> None:
    log: list[str] = []
    app = App()

    async def accept(request: Request) -> Any:
        return lambda ws: Triple(ws, log)

    app.websocket("/ws", accept)
    async with serving(app) as srv:
        reader, writer = await _open_upgraded(srv.port)
        writer.write(b"".join(_client_frame(Opcode.TEXT, m) for m in (b"a", b"b", b"bye")))
        data = await read_to_eof(reader)
        writer.close()
    texts = []
    pos = 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        payload = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        if opcode == 1:
            texts.append(payload.decode())
        else:
            assert opcode == 8  # the close frame, after every corked text
            assert pos == len(data)
    assert texts == [f"{t}-{i}" for t in ("a", "b", "bye") for i in range(3)]
    # every read caused at most one write (the close frame goes with the texts before it)
    reads = [i for i, e in enumerate(log) if e == "read"]
    for k, start in enumerate(reads):
        end = reads[k + 1] if k + 1 < len(reads) else len(log)
        assert log[start + 1 : end].count("write") <= 1, log
