"""Test helpers for the vendor agents: a recording sink and caller audio frames (no vendor, no mock of
one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np

from rtvoice.agents.base import Agent, CallInfo
from rtvoice.audio import ulaw_decode, ulaw_encode
from rtvoice.sim import voice

FRAME = 160  # 20 ms of μ-law at 8 kHz
A = TypeVar("A", bound=Agent)


class RecordingSink:
    """Implements AgentSink; records every call with its loop time."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.times: list[float] = []

    def _rec(self, *call: Any) -> None:
        self.calls.append(call)
        self.times.append(time.perf_counter())

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        self._rec("bot_audio", item_id, bytes(ulaw))

    def bot_audio_done(self, item_id: str) -> None:
        self._rec("bot_audio_done", item_id)

    def bot_text(self, item_id: str, text: str, final: bool) -> None:
        self._rec("bot_text", item_id, text, final)

    def caller_text(self, text: str, final: bool) -> None:
        self._rec("caller_text", text, final)

    def speech_started(self) -> None:
        self._rec("speech_started")

    def interrupt(self) -> None:
        self._rec("interrupt")

    def hang_up(self, reason: str) -> None:
        self._rec("hang_up", reason)

    def fault(self, kind: str, message: str, fatal: bool) -> None:
        self._rec("fault", kind, message, fatal)

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]

    def audio(self, item_id: str | None = None) -> bytes:
        return b"".join(c[2] for c in self.of("bot_audio") if item_id is None or c[1] == item_id)

    def faults(self) -> list[tuple[str, bool]]:
        return [(c[1], c[3]) for c in self.of("fault")]


async def start_agent(agent: A, call: CallInfo) -> tuple[A, RecordingSink]:
    """Prepare ``agent`` and start it on ``call`` with a fresh :class:`RecordingSink`."""
    sink = RecordingSink()
    await agent.prepare()
    await agent.start(call, sink)
    return agent, sink


@asynccontextmanager
async def running(agent: A, call: CallInfo) -> AsyncIterator[tuple[A, RecordingSink]]:
    """:func:`start_agent` for an ``async with`` block; the agent is closed when the block exits."""
    agent, sink = await start_agent(agent, call)
    try:
        yield agent, sink
    finally:
        await agent.close()


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


def speech_ulaw(text: str = "hello can you hear me", ms_per_char: float = 60.0) -> bytes:
    """Voiced synthetic speech (webrtcvad hears it) as μ-law 8 kHz."""
    return bytes(ulaw_encode(voice.render(text, 8000, ms_per_char)))


def silence_ulaw(ms: int) -> bytes:
    """Digital silence as μ-law 8 kHz."""
    return bytes(ulaw_encode(np.zeros(ms * 8, dtype=np.int16)))


def frames(ulaw: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """20 ms frames as the call hands them to an agent: (μ-law bytes, int16 PCM memoryview)."""
    pad = (-len(ulaw)) % FRAME
    ulaw = ulaw + b"\xff" * pad
    for off in range(0, len(ulaw), FRAME):
        u = ulaw[off : off + FRAME]
        pcm = ulaw_decode(u).astype(np.int16)
        yield u, memoryview(pcm)


async def speak(agent: Agent, ulaw: bytes, *, silence_ms: int = 800, pace_s: float = 0.002) -> None:
    """Feed a caller turn (speech then silence) at a fast pace (faster than real time)."""
    for u, pcm in frames(ulaw + b"\xff" * (8 * silence_ms)):
        agent.send_audio(u, pcm)
        await asyncio.sleep(pace_s)
