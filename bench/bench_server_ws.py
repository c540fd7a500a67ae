"""Budget: rtvoice's WebSocket glue adds little to the websockets sans-I/O library it drives.

Per inbound Twilio-sized text frame: ``WebSocketConnection.data_received`` -> handler ``on_text`` ->
``send_text``
-> transport write (a null transport: the syscall is not what this measures; see bench/server_echo_cost.py for
the loopback figure). Reference, measured in the same run: the bare library floor for the same work
(``receive_data``, ``events_received``, decode, ``send_text``, ``data_to_send``). Min over interleaved rounds.
"""

from __future__ import annotations

import base64
import os
import time

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from rtvoice.config import Settings
from rtvoice.server.api import Request
from rtvoice.server.echo_app import EchoHandler, build_app
from rtvoice.server.http import ServerState
from rtvoice.server.limits import ServerLimits
from rtvoice.server.websocket import WebSocketConnection

#: Our per-message cost may be at most this multiple of the bare library's.
BUDGET_RATIO = 1.5
#: Generous absolute ceiling per message on a noisy shared 2-core machine.
CEILING_US = 60.0


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def set_protocol(self, protocol: object) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _frames(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        payload = base64.b64encode(os.urandom(160)).decode()
        text = (
            f'{{"event":"media","sequenceNumber":"{i}","media":{{"track":"inbound","chunk":"{i}",'
            f'"timestamp":"{20 * i}","payload":"{payload}"}},'
            '"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
        )
        out.append(Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[]))
    return out


async def _measure() -> tuple[float, float]:
    state = ServerState(build_app(Settings()), ServerLimits(), 10)
    frames = _frames(2000)
    ours: list[float] = []
    floor: list[float] = []
    request = Request("GET", "/echo", "/echo", "", [])
    for _ in range(15):
        proto = ServerProtocol(max_size=65536, state=State.OPEN)
        ws = WebSocketConnection(state, _NullTransport(), request, proto)  # type: ignore[arg-type]
        ws._handler = EchoHandler(ws)  # what start() does after the handshake
        t0 = time.perf_counter()
        for f in frames:
            ws.data_received(f)
        ours.append((time.perf_counter() - t0) / len(frames))

        proto = ServerProtocol(max_size=65536, state=State.OPEN)
        t0 = time.perf_counter()
        for f in frames:
            proto.receive_data(f)
            for event in proto.events_received():
                proto.send_text(event.data.decode().encode())  # type: ignore[union-attr]
            proto.data_to_send()
        floor.append((time.perf_counter() - t0) / len(frames))
    return min(ours), min(floor)


async def test_websocket_glue_costs_at_most_budget_times_the_library_floor() -> None:
    ours, floor = await _measure()
    print(f"\nper message: rtvoice {ours * 1e6:.2f} µs, websockets sans-I/O floor {floor * 1e6:.2f} µs, "
          f"ratio {ours / floor:.2f} (budget {BUDGET_RATIO})")
    assert ours <= BUDGET_RATIO * floor
    assert ours * 1e6 <= CEILING_US
