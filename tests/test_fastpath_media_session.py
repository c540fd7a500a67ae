"""The compiled media kernel wired in: WebSocket layer (``on_text_bytes``), session, call, agents.

Real loopback sockets throughout. The WebSocket layer offers a text message's raw bytes to a handler's
``on_text_bytes`` first and still enforces UTF-8 (1007) on everything the handler leaves; the media stream
session takes plain ``media`` frames through the kernel (no ``on_text``), and the agent gets every frame's own
audio, bit-exact, even though the kernel reuses one buffer: also for the frames kept while the agent starts
(the early-audio list must copy).
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.frames import Frame, Opcode

from call_fakes import voiced
from e2e_testutil import TOKEN, serving
from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.audio import ulaw_decode
from rtvoice.call.session import MediaStreamHandler
from rtvoice.config import Settings
from rtvoice.server.api import WebSocket
from rtvoice.sim.twilio import CallScript, SimulatedTwilio
from server_testutil import TIMEOUT, Recorder, recorder_app
from server_testutil import serving as serving_app
from test_server_websocket import _upgrade_request

SPEED = 5.0
CALL_TIMEOUT = 60.0


class BytesRecorder(Recorder):
    """A handler that takes messages starting with ``fast:`` as raw bytes (and fails on ``fast:boom``)."""

    def __init__(self, ws: WebSocket) -> None:
        super().__init__(ws)
        self.fast: list[bytes] = []

    def on_text_bytes(self, data: bytes) -> bool:
        if not data.startswith(b"fast:"):
            return False
        if data == b"fast:boom":
            raise RuntimeError("handler failure requested by the test")
        self.fast.append(bytes(data))
        self.ws.send_text("took " + data.decode())
        return True


async def test_raw_bytes_hook_first_then_strict_text() -> None:
    handlers: list[BytesRecorder] = []
    async with serving_app(recorder_app(handlers, BytesRecorder)) as srv:
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/ws") as ws:
            await ws.send(b"fast:1", text=True)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "took fast:1"
            await ws.send("slow ☎")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "slow ☎"
        h = handlers[0]
        await asyncio.wait_for(h.closed.wait(), TIMEOUT)
        assert h.fast == [b"fast:1"] and h.texts == ["slow ☎"]


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"fast-not:\xc3(", b'{"event":"media"\x80}'])
async def test_invalid_utf8_still_closes_1007_with_the_bytes_hook(payload: bytes) -> None:
    handlers: list[BytesRecorder] = []
    async with serving_app(recorder_app(handlers, BytesRecorder)) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        frame = Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])
        writer.write(_upgrade_request() + frame)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        close = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1007
        writer.close()
        await asyncio.wait_for(handlers[0].closed.wait(), TIMEOUT)
        assert handlers[0].texts == [] and handlers[0].fast == []


async def test_bytes_hook_raising_closes_1011() -> None:
    handlers: list[BytesRecorder] = []
    async with serving_app(recorder_app(handlers, BytesRecorder)) as srv:
        ws = await websockets.connect(f"ws://127.0.0.1:{srv.port}/ws")
        await ws.send(b"fast:boom", text=True)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        await ws.close()


class KeepingAgent(Agent):
    """Keeps a copy of every frame it is given (and checks the PCM is that frame's decode); may start slowly,
    so that the call keeps the first frames in its early-audio list."""

    name = "keeping"

    def __init__(self, settings: Settings, start_delay_s: float = 0.0) -> None:
        self.start_delay_s = start_delay_s
        self.frames: list[bytes] = []
        self.pcm_mismatches = 0

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        await asyncio.sleep(self.start_delay_s)

    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        frame = bytes(ulaw)
        if bytes(pcm.cast("B")) != bytes(ulaw_decode(frame, bytearray(2 * len(frame)))):
            self.pcm_mismatches += 1
        self.frames.append(frame)

    def barge_in(self, heard: Heard | None) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("start_delay_s", [0.0, 0.1])
async def test_agent_gets_every_frame_exactly_through_the_kernel(
    monkeypatch: pytest.MonkeyPatch, start_delay_s: float
) -> None:
    # count the media messages that still take the text path (there must be none)
    text_media = 0
    original = MediaStreamHandler.on_text

    def counting(self: MediaStreamHandler, text: str) -> None:
        nonlocal text_media
        text_media += text.startswith('{"event":"media"')
        original(self, text)

    monkeypatch.setattr(MediaStreamHandler, "on_text", counting)
    agents: list[KeepingAgent] = []

    def make(s: Settings) -> Agent:
        agent = KeepingAgent(s, start_delay_s)
        agents.append(agent)
        return agent

    utterance = voiced(600, seed=3)
    async with serving(make, agent="echo") as srv:
        twilio = SimulatedTwilio(f"http://127.0.0.1:{srv.port}", auth_token=TOKEN, speed=SPEED)
        # spoken from 20 ms on: with a slow start, its first frames reach the agent via the early-audio list
        result = await twilio.call(
            CallScript().say(utterance, at_ms=20), max_duration_ms=3000, timeout_s=CALL_TIMEOUT
        )
    assert result.violations == []
    agent = agents[0]
    assert text_media == 0
    assert agent.pcm_mismatches == 0
    assert len(agent.frames) >= 50 and all(len(f) == 160 for f in agent.frames)
    # every frame is its own: the utterance arrives intact, in order (a buffer shared across frames would
    # repeat the last frame's audio)
    assert b"".join(agent.frames).find(utterance) >= 0
