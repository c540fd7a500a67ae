"""Test helpers for end-to-end tests: rtvoice's real app (routes, webhook, session) served on a loopback port."""

from __future__ import annotations

import asyncio
import bisect
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from rtvoice.agents.base import Agent
from rtvoice.call.registry import CallRegistry
from rtvoice.config import Settings
from rtvoice.records import CallRecords, attach
from rtvoice.routes import build_app
from rtvoice.server.http import RunningServer, start_server
from rtvoice.sim.twilio import PlayoutEmulator

TOKEN = "test-auth-token-0123456789abcdef"


def loopback_socket() -> tuple[socket.socket, int]:
    """A TCP socket bound to a free loopback port (bound before the settings need the port), and the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def loopback_settings(port: int, **kw: Any) -> Settings:
    """Settings for an rtvoice on ``port`` that the simulated Twilio reaches directly (auth token ``TOKEN``)."""
    kw.setdefault("twilio_auth_token", TOKEN)
    return Settings(port=port, public_base_url=f"http://127.0.0.1:{port}", **kw)


@dataclass
class Served:
    settings: Settings
    server: RunningServer
    registry: CallRegistry
    records: CallRecords | None
    port: int


@asynccontextmanager
async def serving(
    agent_factory: Callable[[Settings], Agent] | None = None, *, record: bool = False, **settings_kw: Any
) -> AsyncIterator[Served]:
    """Serve ``build_app`` on loopback with ``loopback_settings(port, **settings_kw)``; with ``record`` the
    calls leave records (``settings.db_path``). Shuts the registry and the server down (and closes the
    records) on exit."""
    sock, port = loopback_socket()
    settings = loopback_settings(port, **settings_kw)
    registry = CallRegistry(settings, agent_factory=agent_factory)
    records = attach(registry, settings) if record else None
    server = await start_server(build_app(settings, registry), settings, sock=sock)
    try:
        yield Served(settings, server, registry, records, port)
    finally:
        await registry.shutdown()
        await asyncio.wait_for(server.shutdown(0.0), 20)
        if records is not None:
            records.close()


class PlayoutTimeline:
    """What the simulated caller had heard of the bot at any stream time, not only "now".

    A loopback test that reads ``call.playout.played_total`` when a ``clear`` *arrives* measures at a moment
    that depends on the wall clock: on a busy machine the simulated Twilio may send a few more frames (and play
    20 ms of bot audio for each) before it reads the clear. Comparing at the stream time of the frame the call
    decided on is exact whatever the machine's load. Wraps ``playout.advance`` (the only place audio plays) and
    records the played byte count at every step."""

    def __init__(self, playout: PlayoutEmulator) -> None:
        self._pos: list[int] = [0]  # bytes of the heard timeline rendered (8 per ms of stream time)
        self._played: list[int] = [0]  # bot audio bytes played by then
        inner = playout.advance

        def advance(now_ms: float) -> list[str]:
            due = inner(now_ms)
            if len(playout.heard) > self._pos[-1]:
                self._pos.append(len(playout.heard))
                self._played.append(playout.played_total)
            return due

        playout.advance = advance  # type: ignore[method-assign]

    def played_ms_at(self, t_ms: float) -> float:
        """ms of bot audio played by stream time ``t_ms`` (within one rendering step: audio plays from the
        start of each step, so inside one the count is interpolated at 8 bytes per ms, capped by the step's)."""
        target = int(t_ms * 8)
        i = bisect.bisect_right(self._pos, target) - 1
        played = self._played[i]
        if i + 1 < len(self._pos):
            played += min(target - self._pos[i], self._played[i + 1] - self._played[i])
        return played / 8


def stamp_barge_ins(agent: Agent, times: list[int]) -> Agent:
    """Make ``agent`` append the call's stream time (``Call.now``: the end of the inbound frame the call decided
    on) to ``times`` at each barge-in, so a test can check the barge-in on the stream clock instead of when the
    ``clear`` happened to reach the simulated Twilio. Wraps ``start`` (to keep the sink, the call) and
    ``barge_in``; call it before the agent starts. Returns the agent."""
    sinks: list[Any] = []
    start, barge_in = agent.start, agent.barge_in

    async def stamped_start(call: Any, sink: Any) -> None:
        sinks.append(sink)
        await start(call, sink)

    def stamped_barge_in(heard: Any) -> None:
        times.append(sinks[-1].now)
        barge_in(heard)

    agent.start = stamped_start  # type: ignore[method-assign]
    agent.barge_in = stamped_barge_in  # type: ignore[method-assign]
    return agent


def stamp_bot_audio(agent: Agent, times: list[int]) -> Agent:
    """Make the call ``agent`` talks to append its stream time (``Call.now``) to ``times`` each time the agent
    hands it bot audio (with an empty playout queue the call sends it to Twilio in that frame). Wraps ``start``
    to wrap the sink's ``bot_audio``; call it before the agent starts. Returns the agent."""
    start = agent.start

    async def stamped_start(call: Any, sink: Any) -> None:
        inner = sink.bot_audio

        def bot_audio(item_id: str, ulaw: bytes) -> None:
            times.append(sink.now)
            inner(item_id, ulaw)

        sink.bot_audio = bot_audio
        await start(call, sink)

    agent.start = stamped_start  # type: ignore[method-assign]
    return agent
