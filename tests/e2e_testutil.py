"""Test helpers for end-to-end tests: rtvoice's real app (routes, webhook, session) served on a loopback port."""

from __future__ import annotations

import asyncio
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
