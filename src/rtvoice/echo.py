"""Echo-robust barge-in: an echo canceller fed by what rtvoice played, and the barge-in gates built on it.

A speakerphone caller's microphone picks up the bot: a plain VAD then "hears the caller" in the bot's own
echo and interrupts the bot. rtvoice knows what it sent and, through the playback ledger (Twilio's marks),
when it played, so it can subtract the echo:

* :class:`EchoCanceller` (compiled core ``rtvoice._dsp.EchoCancellerCore``): per 20 ms frame, a bulk-delay
  estimator (cross-correlation of 2 ms envelopes over 0-350 ms) places a short NLMS filter (48 taps = 6 ms)
  on the echo; a double-talk detector compares the residual with the echo the reference could still produce
  (a learned, peak-following residual-echo gain times the aligned reference energy; the loudest reference
  frame in the delay window before the delay is known, assuming 0 dB echo return loss until it has learned
  better). A frame is the caller only if it is also 9 dB above the line's background (the mean residual of
  recent non-caller frames: bursts of background voices are not the caller). Once the filter has converged,
  its own echo estimate arbitrates: a microphone holding clearly more than it is the caller even when the
  residual test is blunted by a noisy line, and one holding hardly more than it (mic < 1.1 x (estimate +
  background)) is not, even when the residual jumped because the echo slipped by a few ms (a playout
  underrun, jitter at the I/O edge).
  Adaptation freezes during double talk; a lost inbound frame advances the reference without adapting.
  Echo-only frames are brought down to the noise level (residual echo suppression), so a VAD run on the
  output sees the caller, not the bot. About 5 µs per frame per call.
* :class:`ReferenceTap`: the bot audio sent to Twilio (tapped from the pacer) in a ring indexed by the
  ledger's stream position; each inbound frame it hands out the 20 ms the ledger says played meanwhile.
* Gates for :class:`rtvoice.call.bargein.BargeInController` (``RTVOICE_BARGEIN_POLICY``):
  :class:`EchoAwareGate` ("echo-aware", the default), :class:`VadGate` ("vad": plain webrtcvad on the raw
  audio), :class:`IgnoreFirstGate` ("ignore-first-3s", what some peers do). A gate with a ``frame`` method
  is also the call's VAD front end: :meth:`EchoAwareGate.frame` returns the echo-reduced frame for the VAD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from rtvoice import _dsp
from rtvoice.audio import ulaw_decode

if TYPE_CHECKING:
    from rtvoice.call.bargein import Source
    from rtvoice.call.ledger import PlaybackLedger

FRAME = 160  # samples (and μ-law bytes) per 20 ms frame
FRAME_MS = 20
#: inbound gaps longer than this (frames) are not replayed into the canceller: the stream stalled
MAX_SKIP_FRAMES = 25
#: EchoCanceller.process flag bits
NEAR_END = 1
REF_ACTIVE = 2
LOCKED = 4
_SILENCE = b"\xff" * FRAME
#: outbound ring: far more than Twilio ever queues (max_queued_ms is <= 10 s in config, 200 ms by default)
RING_BYTES = 1 << 17  # 16.4 s of μ-law


class EchoCanceller:
    """Typed façade over the compiled canceller (see the module docstring).

    ``process(mic, ref, out)`` takes three buffers of 160 int16 samples (320 bytes: numpy int16 arrays,
    ``memoryview(...).cast("h")``, bytearrays): the caller's frame, the bot audio played during it, and where
    to write the echo-reduced frame. Returns flag bits (:data:`NEAR_END`, :data:`REF_ACTIVE`, :data:`LOCKED`).
    """

    __slots__ = ("_core",)

    def __init__(
        self, taps: int = 48, max_delay_ms: int = 350, mu: float = 0.4, dt_threshold_db: float = 6.0
    ) -> None:
        self._core = _dsp.EchoCancellerCore(taps, max_delay_ms, mu, dt_threshold_db)

    def process(self, mic: _dsp.BufferLike, ref: _dsp.BufferLike, out: _dsp.BufferLike) -> int:
        """Cancel the echo in one frame (no allocation; the arithmetic runs without the GIL)."""
        return int(self._core.process(mic, ref, out))

    def skip(self, ref: _dsp.BufferLike) -> None:
        """A lost inbound frame: advance the reference timeline by ``ref`` (what played meanwhile) so that the
        echo delay stays aligned; nothing is adapted or decided."""
        self._core.skip(ref)

    def reset(self) -> None:
        """Forget the learned echo path (a new call)."""
        self._core.reset()

    @property
    def delay_ms(self) -> float:
        """Bulk echo delay found (ms)."""
        return float(self._core.delay_ms)

    @property
    def locked(self) -> bool:
        """True once the bulk-delay estimator has found the echo."""
        return bool(self._core.locked)

    @property
    def erle_db(self) -> float:
        """Echo return loss enhancement on recent echo-only frames (dB)."""
        return float(self._core.erle_db)

    @property
    def last_energies(self) -> tuple[float, float]:
        """(mic, residual) sum of squares of the last frame: for ERLE measurements over chosen frames."""
        return float(self._core.last_ed), float(self._core.last_ee)

    @property
    def taps(self) -> list[float]:
        """The adaptive filter's taps in delay order (from the bulk delay on)."""
        return list(self._core.taps_copy())


class ReferenceTap:
    """What was played when: outbound μ-law keyed by the ledger's stream position.

    :meth:`sent` is the pacer's ``on_audio`` hook (called in send order, so the ring's write position always
    equals ``ledger.sent_pos``). :meth:`played_frame` is called once per inbound frame and decodes the 20 ms
    of bot audio the ledger says played since the previous frame (silence where nothing played). The read
    cursor advances 160 bytes per frame while audio plays rather than following every correction of the
    ledger's estimate (a mark echo moves it by a few ms): the canceller's delay estimator absorbs a fixed
    offset, but not a reference that jumps back and forth. It resynchronises after a clear or a drift of more
    than 60 ms.
    """

    __slots__ = ("_cursor", "_epoch", "_frame", "_ring", "_written", "pcm")

    def __init__(self) -> None:
        self._ring = bytearray(RING_BYTES)
        self._written = 0
        self._cursor = 0
        self._epoch = 0
        self._frame = bytearray(b"\xff" * FRAME)
        #: the last reference frame, int16
        self.pcm = memoryview(bytearray(FRAME * 2)).cast("h")

    def sent(self, payload: bytes | memoryview) -> None:
        """Bot audio just sent to Twilio (the pacer's hook)."""
        n = len(payload)
        at = self._written % RING_BYTES
        first = min(n, RING_BYTES - at)
        self._ring[at : at + first] = payload[:first]
        if first < n:
            self._ring[: n - first] = payload[first:]
        self._written += n

    def played_frame(self, ledger: PlaybackLedger, now: int) -> memoryview:
        """int16 view of the bot audio played in the 20 ms ending at stream time ``now`` (valid until the next
        call)."""
        pos = ledger.played_pos(now)
        if ledger.epoch != self._epoch:  # a clear: what was queued was discarded, never played
            self._epoch = ledger.epoch
            self._cursor = max(self._cursor, pos - FRAME)
        cursor = self._cursor
        # The reference advances exactly one frame per inbound frame while audio plays: the ledger's estimate
        # moves by a few ms whenever a mark echo re-anchors it (and by wall-clock jitter at the I/O edge), and
        # following it would shift the reference against the echo. Only a drift beyond 60 ms resyncs.
        drift = pos - (cursor + FRAME)
        if drift > 3 * FRAME or drift < -3 * FRAME:
            cursor = max(pos - FRAME, 0)
        frame = self._frame
        if cursor >= pos:
            frame[:] = _SILENCE  # nothing (more) has played
        else:
            n = min(FRAME, self._written - cursor)
            at = cursor % RING_BYTES
            first = min(n, RING_BYTES - at)
            frame[:first] = self._ring[at : at + first]
            if first < n:
                frame[first:n] = self._ring[: n - first]
            if n < FRAME:
                frame[n:] = _SILENCE[: FRAME - n]
            cursor += n
        self._cursor = cursor
        ulaw_decode(frame, self.pcm)
        return self.pcm


class FrameGate(Protocol):
    """A barge-in gate that also sees every inbound frame (and may hand the VAD a different one)."""

    def frame(self, pcm: memoryview, now: int, bot_active: bool) -> memoryview: ...

    def allow(self, source: Source, onset_ms: int, now: int) -> bool: ...


class VadGate:
    """Policy "vad": every VAD onset during bot playback is a barge-in (the raw audio goes to the VAD)."""

    def frame(self, pcm: memoryview, now: int, bot_active: bool) -> memoryview:
        return pcm

    def allow(self, source: Source, onset_ms: int, now: int) -> bool:
        return True


class IgnoreFirstGate:
    """Policy "ignore-first-3s": no barge-in during the first ``ignore_ms`` of each bot turn (a peer's
    workaround for echo; it also ignores a caller who really does interrupt early)."""

    def __init__(self, ignore_ms: int = 3000) -> None:
        self.ignore_ms = ignore_ms
        self._turn_start: int | None = None

    def frame(self, pcm: memoryview, now: int, bot_active: bool) -> memoryview:
        if not bot_active:
            self._turn_start = None
        elif self._turn_start is None:
            self._turn_start = now
        return pcm

    def allow(self, source: Source, onset_ms: int, now: int) -> bool:
        start = self._turn_start
        return start is None or now - start >= self.ignore_ms


class EchoAwareGate:
    """Policy "echo-aware" (the default): the VAD runs on the echo-reduced signal, and an onset counts only
    with double-talk evidence (the caller's voice above the echo the played audio can explain).

    ``ledger`` gives the played position; :attr:`tap` must receive the outbound audio (``pacer.on_audio``).
    Vendor speech hints are gated the same way (the vendor hears the raw audio, echo included); vendor
    interrupts are not gated by the controller.
    """

    def __init__(self, ledger: PlaybackLedger, canceller: EchoCanceller | None = None) -> None:
        self.ledger = ledger
        self.tap = ReferenceTap()
        self.canceller = canceller if canceller is not None else EchoCanceller()
        self._out = memoryview(bytearray(FRAME * 2)).cast("h")
        self._recent = 0  # near-end flags of the last frames, newest in bit 0
        self._echo_only = 0  # frames with audible echo and no caller, newest in bit 0
        self._primed = False  # any bot audio sent yet (until then the canceller has nothing to do)
        self._last_now = 0
        #: frames processed / with double talk while bot audio could echo
        self.frames = 0
        self.double_talk_frames = 0

    def frame(self, pcm: memoryview, now: int, bot_active: bool) -> memoryview:
        """Cancel echo in one decoded inbound frame (the 20 ms ending at ``now``); returns the frame for the
        VAD (valid until the next call)."""
        last, self._last_now = self._last_now, now
        if not self._primed:
            # nothing has been played yet: no echo possible, the VAD hears the caller as is
            if self.tap._written == 0:
                self._recent = (self._recent << 1 | 1) & 0xFF
                return pcm
            self._primed = True
        elif now - last > FRAME_MS:
            # frames lost on the way in (the call fills them with silence for the agent): the canceller's
            # reference must still advance by what played meanwhile, or the echo delay slips by 20 ms per loss
            missing = min((now - last) // FRAME_MS - 1, MAX_SKIP_FRAMES)
            for i in range(missing, 0, -1):
                self.canceller.skip(self.tap.played_frame(self.ledger, now - i * FRAME_MS))
        ref = self.tap.played_frame(self.ledger, now)
        flags = self.canceller.process(pcm, ref, self._out)
        near = flags & NEAR_END
        self._recent = (self._recent << 1 | near) & 0xFF
        # echo-only: bot audio could echo, the mic is not quiet, and the detector says it is all echo
        echo = bool(flags & REF_ACTIVE) and not near and self.canceller.last_energies[0] > FRAME * 2500.0
        self._echo_only = (self._echo_only << 1 | echo) & 0xFF
        self.frames += 1
        if near and flags & REF_ACTIVE:
            self.double_talk_frames += 1
        return self._out

    def allow(self, source: Source, onset_ms: int, now: int) -> bool:
        if source == "vad":
            # the VAD saw the echo-reduced signal; at least 2 of the last 3 frames must show the caller above
            # the echo
            r = self._recent & 0b111
            return (r & 1) + (r >> 1 & 1) + (r >> 2 & 1) >= 2
        # a vendor hint (its VAD hears the raw audio): refused only when the last 3 frames were audible echo
        return self._echo_only & 0b111 != 0b111


def make_gate(policy: str, ledger: PlaybackLedger) -> FrameGate:
    """The gate for ``RTVOICE_BARGEIN_POLICY`` (``echo-aware``, ``vad`` or ``ignore-first-3s``)."""
    if policy == "echo-aware":
        return EchoAwareGate(ledger)
    if policy == "vad":
        return VadGate()
    if policy == "ignore-first-3s":
        return IgnoreFirstGate(3000)
    raise ValueError(f"unknown barge-in policy {policy!r}: expected echo-aware, vad or ignore-first-3s")


__all__ = [
    "LOCKED",
    "NEAR_END",
    "REF_ACTIVE",
    "EchoAwareGate",
    "EchoCanceller",
    "FrameGate",
    "IgnoreFirstGate",
    "ReferenceTap",
    "VadGate",
    "make_gate",
]
