"""The calls of one worker process: active streams, agents pre-opened at webhook time, stream tokens.

First-turn latency: the vendor session is opened when Twilio's webhook arrives (:meth:`CallRegistry.prepare`),
while Twilio is still ringing the Media Stream up, and handed to the stream when its ``start`` arrives
(:meth:`CallRegistry.take_prepared`). Opening it on the WebSocket upgrade instead costs the caller ~2-3 s of
dead air (openclaw#85847). A prepared agent nobody takes (the stream never came, or landed on another worker)
is closed after ``PREPARED_TTL_S``.

Duplicate streams (two streams for the same CallSid, e.g. Twilio reconnecting a stream, or a double webhook
producing two ``<Connect><Stream>``: call-gpt PR#61, openclaw PR#29862): **the newer stream replaces the older
one.** The stream token is single-use, so a second stream that passed verification carries a fresh token the
webhook issued: it is Twilio's current view of the call, and the old socket is the one that is stale (Twilio
does not send audio to two bidirectional streams of one call). The old stream is closed with 1000 and its call
record ends with outcome ``replaced``; the new one gets a fresh agent (the old agent's session is closed with
it, since its conversation state belongs to a stream that no longer plays).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rtvoice import metrics
from rtvoice.agents.base import Agent
from rtvoice.call.admission import Admission, Verdict
from rtvoice.config import Settings
from rtvoice.logs import call_context
from rtvoice.twilio.stream_token import StreamTokens

log = logging.getLogger("rtvoice.call")

#: How long a pre-opened agent waits for its stream before it is closed.
PREPARED_TTL_S = 30.0
#: How long a call placed through ``POST /calls`` counts as pending while it rings (Twilio's default ring
#: timeout is 60 s); its answer webhook turns it into a prepared call.
DIALLING_TTL_S = 75.0


def refusal(registry: Any, *, answered_outbound: bool = False) -> Verdict | None:
    """Whether a new call is refused by ``registry`` (anything with :attr:`CallRegistry.accepting`; None or a
    registry without one takes every call): None when it is taken, else why not, counted in
    ``rtvoice_calls_refused_total{reason}``. For the webhook and ``POST /calls``.

    ``answered_outbound``: the webhook of an outbound call, which Twilio requests once the callee has
    answered. It was admitted when it was dialled (``POST /calls``); hanging up on someone who just picked up
    is worse than a busy worker, so only a draining worker refuses it."""
    verdict: Verdict = getattr(registry, "accepting", Verdict.ADMIT)
    if verdict is Verdict.ADMIT or (answered_outbound and verdict is not Verdict.DRAINING):
        return None
    metrics.CALLS_REFUSED.labels(verdict.value).inc()
    return verdict


class ActiveStream(Protocol):
    """What the registry needs from a live stream (the session's MediaStreamHandler)."""

    def replace(self) -> None:
        """A newer stream for the same call took over: end this one (close 1000, outcome ``replaced``)."""

    async def shutdown(self) -> None:
        """The server is draining: end the call (close 1001)."""


@dataclass(slots=True)
class _Prepared:
    agent: Agent
    from_number: str
    to_number: str
    direction: str
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    #: The settings the call runs with (its profile applied) and the profile (``rtvoice.profiles.Profile``).
    settings: Settings | None = None
    profile: Any = None


@dataclass(frozen=True, slots=True)
class CallSetup:
    """What a stream needs to run its call: the agent, the call's settings and its profile (or None)."""

    agent: Agent
    settings: Settings
    profile: Any = None


@dataclass(slots=True)
class CallStatus:
    """The last ``/call-status`` callback seen for a call."""

    status: str
    params: dict[str, str] = field(default_factory=dict)


class CallRegistry:
    """Per-process call bookkeeping (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        agent_factory: Callable[[Settings], Agent] | None = None,
        prepared_ttl_s: float = PREPARED_TTL_S,
        profiles: Any = None,
    ) -> None:
        self.settings = settings
        if profiles is None and settings.profiles_path:
            from rtvoice.profiles import load_from_settings

            profiles = load_from_settings(settings)  # validated now: a bad file stops startup with file:line
        #: The agent profiles (``rtvoice.profiles.Profiles``) or None: every call runs on ``settings``.
        self.profiles = profiles
        if agent_factory is None:
            from rtvoice.agents.registry import create_agent

            agent_factory = create_agent
        self.agent_factory = agent_factory
        self.prepared_ttl_s = prepared_ttl_s
        #: Shared by the webhook (issue) and the Media Stream session (verify).
        self.stream_tokens = StreamTokens.from_settings(settings)
        self._prepared: dict[str, _Prepared] = {}
        self._dialling: dict[str, float] = {}  # CallSid -> monotonic deadline (calls placed, not answered yet)
        self._streams: dict[str, ActiveStream] = {}
        self._status: dict[str, CallStatus] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.closed = False
        #: Whether this worker takes one more call (``RTVOICE_MAX_CALLS``, ``RTVOICE_OVERLOAD_LAG_MS``); its
        #: loop-lag samples come from the server (:func:`rtvoice.routes.build_app` wires the monitor).
        self.admission = Admission(settings.max_calls, settings.overload_lag_ms / 1000.0)

    # --- counts
    # -----------------------------------------------------------------------------------------------
    @property
    def active_calls(self) -> int:
        """Media streams currently in a call in this process."""
        return len(self._streams)

    @property
    def prepared_count(self) -> int:
        """Calls answered by this worker's webhook whose stream has not started (yet, or ever: a stream that
        landed on another worker leaves its entry here for ``PREPARED_TTL_S``)."""
        return len(self._prepared)

    @property
    def accepting(self) -> Verdict:
        """May this worker take one more call now (:mod:`rtvoice.call.admission`)? Counts the streams in a
        call, the calls answered and not streaming yet, and the calls placed here that still ring."""
        if self.closed:
            return Verdict.DRAINING
        if self._dialling:
            now = time.monotonic()
            for sid in [sid for sid, deadline in self._dialling.items() if deadline <= now]:
                del self._dialling[sid]
        return self.admission.verdict(len(self._streams), len(self._prepared) + len(self._dialling))

    def dialled(self, call_sid: str, now: float | None = None) -> None:
        """A call placed through ``POST /calls``: it counts against ``RTVOICE_MAX_CALLS`` while it rings (up to
        ``DIALLING_TTL_S`` from ``now``, monotonic seconds), until its answer webhook prepares it."""
        self._dialling[call_sid] = (time.monotonic() if now is None else now) + DIALLING_TTL_S

    # --- webhook time
    # -----------------------------------------------------------------------------------------
    def call_settings(
        self,
        call_sid: str,
        from_number: str,
        to_number: str,
        direction: str,
        *,
        profile: str | None = None,
        agent: str | None = None,
        prompt: str | None = None,
    ) -> tuple[Settings, Any]:
        """The settings a call runs with and its profile (:func:`rtvoice.profiles.settings_for_call`).

        Raises ``KeyError`` for an unknown requested profile and ``ValueError`` for an unknown agent mode.
        """
        from rtvoice.profiles import settings_for_call

        return settings_for_call(
            self.settings,
            self.profiles,
            call_sid=call_sid,
            from_number=from_number,
            to_number=to_number,
            direction=direction,
            requested_profile=profile,
            agent=agent,
            prompt=prompt,
        )

    def prepare(
        self,
        call_sid: str,
        from_number: str,
        to_number: str,
        direction: str,
        *,
        settings: Settings | None = None,
        profile: Any = None,
    ) -> None:
        """Create the call's agent now and start opening its vendor session in the background.

        ``settings``/``profile`` are the call's (from :meth:`call_settings`); by default they are worked out
        here from the numbers. Never raises into the webhook for a vendor problem: a failed ``prepare()`` is
        logged, and the agent is still handed over (its ``start`` reports the fault through the sink). Needs a
        running event loop.
        """
        if self.closed or not call_sid:
            return
        self._dialling.pop(call_sid, None)  # answered: a prepared call from now on
        old = self._prepared.pop(call_sid, None)
        if old is not None:  # a repeated webhook for the same call: the newer one wins
            self._discard(call_sid, old)
        if settings is None:
            settings, profile = self.call_settings(call_sid, from_number, to_number, direction)
        agent = self.agent_factory(settings)
        entry = _Prepared(agent, from_number, to_number, direction, settings=settings, profile=profile)
        loop = asyncio.get_running_loop()
        with call_context(call_sid):  # the vendor session's tasks log with the CallSid
            entry.task = loop.create_task(self._run_prepare(call_sid, agent))
        entry.timer = loop.call_later(self.prepared_ttl_s, self._expire, call_sid, entry)
        self._prepared[call_sid] = entry

    async def _run_prepare(self, call_sid: str, agent: Agent) -> None:
        try:
            await agent.prepare()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "agent prepare failed", extra={"call_sid": call_sid, "error": f"{type(exc).__name__}: {exc}"}
            )

    def _expire(self, call_sid: str, entry: _Prepared) -> None:
        if self._prepared.get(call_sid) is entry:
            del self._prepared[call_sid]
            log.info("prepared agent unused, closing", extra={"call_sid": call_sid})
            self._discard(call_sid, entry)

    def _discard(self, call_sid: str, entry: _Prepared) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        self._close_later(entry.agent)

    def _close_later(self, agent: Agent) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await agent.close()

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def take_call(self, call_sid: str) -> CallSetup | None:
        """Like :meth:`take_prepared`, with the call's settings and profile."""
        entry = self._prepared.pop(call_sid, None)
        if entry is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        return CallSetup(entry.agent, entry.settings or self.settings, entry.profile)

    def new_call(
        self,
        call_sid: str,
        from_number: str = "",
        to_number: str = "",
        direction: str = "inbound",
        *,
        profile: str | None = None,
        agent: str | None = None,
    ) -> CallSetup:
        """A call for a stream that had no prepared agent (another worker took the webhook, or a test): its
        settings are worked out again from the stream's parameters (raises like :meth:`call_settings`)."""
        settings, prof = self.call_settings(
            call_sid, from_number, to_number, direction, profile=profile, agent=agent
        )
        return CallSetup(self.agent_factory(settings), settings, prof)

    def take_prepared(self, call_sid: str) -> Agent | None:
        """The agent prepared for ``call_sid``, or None. Taken once; its ``prepare()`` may still be running
        (every agent's ``start`` waits for its own connection)."""
        entry = self._prepared.pop(call_sid, None)
        if entry is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        return entry.agent

    def new_agent(self) -> Agent:
        """An agent for a stream that had no prepared one (another worker took the webhook, or a test)."""
        return self.agent_factory(self.settings)

    # --- streams
    # ----------------------------------------------------------------------------------------------
    def stream_started(self, call_sid: str, stream: ActiveStream) -> None:
        """Register a live stream; an older stream of the same call is replaced (see module docstring)."""
        old = self._streams.get(call_sid)
        self._streams[call_sid] = stream
        if old is not None and old is not stream:
            log.warning("second stream for the call replaces the first", extra={"call_sid": call_sid})
            old.replace()

    def stream_ended(self, call_sid: str, stream: ActiveStream) -> None:
        if self._streams.get(call_sid) is stream:
            del self._streams[call_sid]

    def call_status(self, call_sid: str, status: str, params: dict[str, Any] | None = None) -> None:
        """Twilio's status callback. A call that ended before its stream started frees its prepared agent."""
        self._status[call_sid] = CallStatus(status, {k: str(v) for k, v in (params or {}).items()})
        if len(self._status) > 10_000:  # bounded: oldest first
            del self._status[next(iter(self._status))]
        if status in ("completed", "busy", "failed", "no-answer", "canceled"):
            entry = self._prepared.pop(call_sid, None)
            if entry is not None:
                self._discard(call_sid, entry)

    def status_of(self, call_sid: str) -> CallStatus | None:
        return self._status.get(call_sid)

    async def drain(self) -> None:
        """The server is draining: refuse new preparations and close the agents no stream has taken. Live
        streams run on until the server closes them (1001 after the drain timeout)."""
        self.closed = True
        for call_sid, entry in list(self._prepared.items()):
            self._discard(call_sid, entry)
        self._prepared.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def shutdown(self) -> None:
        """Close every prepared agent and end every live stream."""
        self.closed = True
        for call_sid, entry in list(self._prepared.items()):
            self._discard(call_sid, entry)
        self._prepared.clear()
        streams = list(self._streams.values())
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.shutdown()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
