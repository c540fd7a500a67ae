"""The vendor-neutral interface between a call and the AI on the other end.

A call feeds an :class:`Agent` caller audio (20 ms frames of G.711 μ-law, 8 kHz, plus the same frame decoded to
int16 PCM, so nobody decodes twice) and events; the agent answers through an :class:`AgentSink` with bot audio
tagged by an item id, transcripts and state. All audio crossing this boundary is μ-law 8 kHz, Twilio's native
format: a vendor that speaks another format converts inside its own module with :mod:`rtvoice.audio`.

Rules every agent follows, so the call never branches on the vendor:

* Input methods (``send_audio``, ``send_dtmf``, ``barge_in``, ``playback``) are synchronous and never block: they
  queue work for the agent's own tasks. ``send_audio`` is on the per-frame hot path: no logging, no allocation
  beyond what the vendor message needs.
* Output goes through the sink, whose methods are synchronous and cheap. An agent calls the sink only after
  ``start`` has been called and never after ``close`` has returned.
* Faults are reported with :meth:`AgentSink.fault`, never raised into the call. A fatal fault means the agent
  cannot continue; the call then plays its apology and hangs up.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What an agent knows about the call it serves (from Twilio's ``start`` message)."""

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Heard:
    """How much of a bot item the caller actually heard when they barged in.

    ``audio_end_ms`` counts from the start of the item's audio (what OpenAI's ``conversation.item.truncate`` takes).
    """

    item_id: str
    audio_end_ms: int


class AgentSink(Protocol):
    """Where an agent delivers its output. Implemented by the call; every method is synchronous and cheap."""

    def bot_audio(self, item_id: str, ulaw: bytes) -> None:
        """Bot speech for item ``item_id``: μ-law 8 kHz bytes, any length. Items play in the order they start."""

    def bot_audio_done(self, item_id: str) -> None:
        """The agent will send no more audio for ``item_id``."""

    def bot_text(self, item_id: str, text: str, final: bool) -> None:
        """Text of what the bot says in ``item_id``: a delta (``final=False``) or the whole text (``final=True``)."""

    def caller_text(self, text: str, final: bool) -> None:
        """What the caller said, as the agent recognised it."""

    def speech_started(self) -> None:
        """The vendor's own VAD heard the caller start speaking (a barge-in hint; the call decides)."""

    def interrupt(self) -> None:
        """The vendor has stopped the bot itself (e.g. ElevenLabs ``interruption``): flush playback now."""

    def hang_up(self, reason: str) -> None:
        """The agent wants the call to end (after any audio already queued has played)."""

    def fault(self, kind: str, message: str, fatal: bool) -> None:
        """A vendor error. ``kind`` is a short metric label (``connect``, ``dropped``, ``error_event``, ...)."""


class Agent(abc.ABC):
    """One agent instance serves one call. Construct it cheaply; do I/O in :meth:`prepare` / :meth:`start`."""

    #: The ``RTVOICE_AGENT`` mode name.
    name: ClassVar[str]

    async def prepare(self) -> None:  # noqa: B027 - optional hook
        """Open the vendor session early (while Twilio sets up the stream). Default: nothing to do."""

    @abc.abstractmethod
    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        """Begin serving ``call``; output goes to ``sink``. Returns once the agent is ready for audio."""

    @abc.abstractmethod
    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        """One inbound frame: ``ulaw`` as Twilio sent it and ``pcm`` the same frame as int16 at 8 kHz.

        Both may be views of buffers the call reuses for the next frame: valid during this call only, so an
        agent that keeps audio copies it (``bytes(ulaw)``, ``buf += ulaw``)."""

    def send_dtmf(self, digit: str) -> None:  # noqa: B027 - optional hook
        """The caller pressed a key."""

    @abc.abstractmethod
    def barge_in(self, heard: Heard | None) -> None:
        """The caller interrupted: stop generating, and forget what they did not hear.

        ``heard`` is ``None`` when nothing had been cut off (no truncate must be sent then).
        """

    def playback(self, item_id: str, played_ms: int) -> None:  # noqa: B027 - optional hook
        """Twilio confirmed (by a mark) that ``played_ms`` of item ``item_id`` has played."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the session and release everything. Idempotent."""
