"""When does the caller interrupt the bot? The barge-in decision, separate from what the call then does.

Inputs: the local VAD's confirmed onsets (:class:`rtvoice.vad.SpeechStart`, which already ignores blips shorter
than the onset threshold) and vendor hints (OpenAI ``input_audio_buffer.speech_started``, ElevenLabs
``interruption``). A barge-in is only declared while bot audio is queued at Twilio, playing, or waiting in the
pacer: speech while the bot is silent is just the caller's turn, and clearing then would wipe nothing useful (or,
with a blip, a greeting about to start: vellum-assistant#37061).

The ``gate`` is the seam for echo-aware barge-in (issue 6): before a barge-in is declared the gate is asked
whether this onset is really the caller, e.g. by correlating inbound audio with the bot audio played just before.
The default gate allows everything. Vendor ``interrupt`` is not gated: the vendor has already stopped the bot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Source = Literal["vad", "vendor_speech", "vendor_interrupt"]


class BargeInGate(Protocol):
    """Decides whether a speech onset during bot playback is the caller (True) or, e.g., the bot's own
    echo."""

    def allow(self, source: Source, onset_ms: int, now: int) -> bool: ...


class AllowAll:
    """The default gate: every onset during playback is the caller."""

    def allow(self, source: Source, onset_ms: int, now: int) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class BargeIn:
    """A declared barge-in: what triggered it, when the caller's speech began, and when it was decided."""

    source: Source
    onset_ms: int
    decided_at: int

    @property
    def reaction_ms(self) -> int:
        """From the caller's first speech frame to the decision (stream time)."""
        return self.decided_at - self.onset_ms


class BargeInController:
    """Turns speech onsets and vendor hints into at most one barge-in per caller utterance."""

    def __init__(self, gate: BargeInGate | None = None) -> None:
        self.gate: BargeInGate = gate if gate is not None else AllowAll()
        # Set once a barge-in fired for the current utterance; reset when the VAD reports its end, so one long
        # utterance that overlaps a later bot item does not fire twice.
        self._fired_this_utterance = False
        #: Every barge-in declared, in order (reaction times for the call record).
        self.history: list[BargeIn] = []
        #: Onsets refused by the gate (echo suspected), for metrics.
        self.gated = 0

    def speech_start(self, onset_ms: int, now: int, bot_active: bool) -> BargeIn | None:
        """The local VAD confirmed speech that began at ``onset_ms``."""
        if not bot_active or self._fired_this_utterance:
            return None
        if not self.gate.allow("vad", onset_ms, now):
            self.gated += 1
            return None
        return self._fire("vad", onset_ms, now)

    def speech_end(self) -> None:
        """The local VAD says the caller stopped."""
        self._fired_this_utterance = False

    def vendor_speech_started(
        self, now: int, bot_active: bool, onset_ms: int | None = None
    ) -> BargeIn | None:
        """The vendor's VAD heard the caller (a hint: the local VAD may not have confirmed yet)."""
        if not bot_active:
            return None
        onset = now if onset_ms is None else onset_ms
        if not self.gate.allow("vendor_speech", onset, now):
            self.gated += 1
            return None
        return self._fire("vendor_speech", onset, now)

    def vendor_interrupt(self, now: int, bot_active: bool) -> BargeIn | None:
        """The vendor stopped the bot itself: flush whatever is queued (not gated)."""
        if not bot_active:
            return None
        return self._fire("vendor_interrupt", now, now)

    def _fire(self, source: Source, onset_ms: int, now: int) -> BargeIn:
        decision = BargeIn(source, onset_ms, now)
        # Only a local onset is paired with a local end; a vendor hint clears the bot, so it cannot re-fire
        # anyway.
        if source == "vad":
            self._fired_this_utterance = True
        self.history.append(decision)
        return decision
