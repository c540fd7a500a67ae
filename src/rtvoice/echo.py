"""Echo-robust barge-in: an echo canceller fed by what rtvoice played, and the barge-in gates built on it.

A speakerphone caller's microphone picks up the bot: a plain VAD then "hears the caller" in the bot's own
echo and interrupts the bot. rtvoice knows what it sent and, through the playback ledger (Twilio's marks),
when it played, so it can subtract the echo:

* :class:`EchoCanceller` (compiled core ``rtvoice._dsp.EchoCancellerCore``): per 20 ms frame, a bulk-delay
  estimator (cross-correlation of 2 ms envelopes over 0-350 ms) places a short NLMS filter (48 taps = 6 ms)
  on the echo; a double-talk detector compares the residual with the echo the reference could still produce
  (a learned, peak-following residual-echo gain times the aligned reference energy; the loudest reference
  frame in the delay window before the delay is known, assuming 0 dB echo return loss until it has learned
  better). Until the filter has converged, each echo delay is also a hypothesis the microphone can refute:
  a quiet microphone while the reference at that lag was loud bounds the echo gain at that lag, and a
  microphone 6 dB above the most pessimistic echo any lag still allows is the caller (so a caller talking
  over the start of a bot turn on a line with no echo is not taken for unconverged echo). A frame is the
  caller only if it is also 9 dB above the line's background (the mean residual of
  recent non-caller frames, capped at ~8 dB above the noise floor so that the residue of a filter still
  converging does not count as background; it starts from the first frame's level: bursts of background
  voices are not the caller). Frames with no echo possible must clear the same background test to count
  for a barge-in (:data:`ABOVE_BG`). Once the filter has converged,
  its own echo estimate arbitrates: a microphone holding clearly more than it is the caller even when the
  residual test is blunted by a noisy line, and one holding hardly more than it (mic < 1.1 x (estimate +
  background)) is not, even when the residual jumped because the echo slipped by a few ms (a playout
  underrun, jitter at the I/O edge).
  Adaptation freezes during double talk and on digitally silent (all-zero) mic frames (a muted or
  silence-suppressed caller leg says nothing about the echo path; adapting on it unlearned the path); a lost
  inbound frame advances the reference without adapting.
  Echo-only frames are brought down to the noise level (residual echo suppression), so a VAD run on the
  output sees the caller, not the bot; the frame right after double talk passes unsuppressed (a flickering
  detector must not break the VAD's onset run). A converged filter keeps its window when the delay estimate
  wobbles by a block and moving would drop the taps holding the echo path. About 5 µs per frame per call
  while adapting on an echo (``python -m rtvoice bench quality`` measures it); far less when there is nothing
  to cancel: the compiled core skips the arithmetic whose result is known exactly (zero taps, an all-zero
  reference window, a silent mic), bit-identical to its per-sample reference loops (issue 7;
  ``bench/test_bench_echo_cost.py``, ``tests/test_echo_fastpath.py``).
* The gate's per-frame work (reference lookup in the outbound ring, μ-law decode, cancellation, the history
  bits ``allow`` reads) is one compiled call (``rtvoice._dsp.EchoGateCore``): about 0.5 µs on top of the
  canceller.
* :class:`ReferenceTap`: the bot audio sent to Twilio (tapped from the pacer) in a ring indexed by the
  ledger's stream position; each inbound frame it hands out the 20 ms the ledger says played meanwhile.
* Gates for :class:`rtvoice.call.bargein.BargeInController` (``RTVOICE_BARGEIN_POLICY``):
  :class:`EchoAwareGate` ("echo-aware", the default), :class:`VadGate` ("vad": plain webrtcvad on the raw
  audio), :class:`IgnoreFirstGate` ("ignore-first-3s", what some peers do). A gate with a ``frame`` method
  is also the call's VAD front end: :meth:`EchoAwareGate.frame` returns the echo-reduced frame for the VAD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from rtvoice import _dsp

if TYPE_CHECKING:
    from rtvoice.call.bargein import Source
    from rtvoice.call.ledger import PlaybackLedger

FRAME = 160  # samples (and μ-law bytes) per 20 ms frame
FRAME_MS = 20
#: inbound gaps longer than this (frames) are not replayed into the canceller: the stream stalled
MAX_SKIP_FRAMES = _dsp.EG_MAX_SKIP
#: EchoCanceller.process flag bits
NEAR_END = _dsp.EC_NEAR_END
REF_ACTIVE = _dsp.EC_REF_ACTIVE
LOCKED = _dsp.EC_LOCKED
#: the residual is well above the line's background (noise, babble): set with or without echo
ABOVE_BG = _dsp.EC_ABOVE_BG
#: EchoGateCore.frame: no bot audio sent yet (the frame was not processed)
_UNPRIMED = _dsp.EG_UNPRIMED
#: the compiled canceller's filter length limit
MAX_TAPS = _dsp.EC_MAX_TAPS


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (not a bool) in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


def _check_real(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite real number in ``[lo, hi]`` (``(lo, hi]`` with
    ``lo_open``). NaN fails every comparison, so it would pass a plain ``not lo <= x`` test as "in range" in
    some spellings and poison the detector's state: it is refused explicitly."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (lo < value if lo_open else lo <= value)
        and value <= hi
    )
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value!r}")


@dataclass(frozen=True, slots=True)
class EchoTuning:
    """The double-talk detector's tunables (attributes of the compiled core; defaults chosen on the quality
    benchmark's scenario matrix, and equal to the core's own: ``tests/test_echo.py`` checks). Every field is
    validated here, at construction: a value outside its range raises ValueError naming the field and the range
    (``rise=0`` would divide by zero in the per-frame gain update; a ratio under 1 would call the bot's own echo
    the caller). Pass one to :class:`EchoCanceller`.
    """

    #: converged filter: a microphone this many times above the echo estimate (+ noise) is the caller
    ncc_ratio: float = 1.6
    #: rise rate of the learned residual-echo gains per frame (an EMA coefficient; also a divisor)
    rise: float = 0.15
    #: cap of one frame's gain rise (x ``1 + rise_cap - rise``); below ``rise`` the gains could never rise
    rise_cap: float = 0.3
    #: a caller frame must be this many times above the line's background
    bg_ratio: float = 8.0
    #: converged filter: a microphone under this many times (echo estimate + background) is not the caller
    #: (0 turns the veto off)
    veto_ratio: float = 1.1
    #: the background is capped at this many times the noise floor
    bg_cap_ratio: float = 6.0
    #: frames after double talk that pass unsuppressed when the microphone is ``pass_ratio`` above the echo
    pass_hang: int = 0
    pass_ratio: float = 1.25
    #: before convergence: a microphone this many times above the most pessimistic echo any lag allows is the
    #: caller
    ub_ratio: float = 4.0
    #: how fast a per-lag echo-gain bound falls on evidence (an EMA coefficient) and rises again per frame
    ub_fall: float = 0.9
    ub_rise: float = 1.02
    #: lag blocks either side a bound covers (a reference timeline that jitters)
    ub_spread: int = 5

    def __post_init__(self) -> None:
        _check_real("ncc_ratio", self.ncc_ratio, 1.0, 100.0)
        _check_real("rise", self.rise, 0.0, 1.0, lo_open=True)
        _check_real("rise_cap", self.rise_cap, 0.0, 10.0, lo_open=True)
        if self.rise_cap < self.rise:
            raise ValueError(f"rise_cap must be >= rise ({self.rise:g}), got {self.rise_cap!r}")
        _check_real("bg_ratio", self.bg_ratio, 1.0, 1000.0)
        _check_real("veto_ratio", self.veto_ratio, 0.0, 10.0)
        _check_real("bg_cap_ratio", self.bg_cap_ratio, 1.0, 1000.0)
        _check_int("pass_hang", self.pass_hang, 0, 50)
        _check_real("pass_ratio", self.pass_ratio, 1.0, 100.0)
        _check_real("ub_ratio", self.ub_ratio, 1.0, 100.0)
        _check_real("ub_fall", self.ub_fall, 0.0, 1.0, lo_open=True)
        _check_real("ub_rise", self.ub_rise, 1.0, 2.0)
        _check_int("ub_spread", self.ub_spread, 0, 64)


class EchoCanceller:
    """Typed façade over the compiled canceller (see the module docstring).

    ``process(mic, ref, out)`` takes three buffers of 160 int16 samples (320 bytes: numpy int16 arrays,
    ``memoryview(...).cast("h")``, bytearrays): the caller's frame, the bot audio played during it, and where
    to write the echo-reduced frame. Returns flag bits (:data:`NEAR_END`, :data:`REF_ACTIVE`, :data:`LOCKED`).

    Every knob is validated at construction (ValueError naming it and its range): ``taps`` a multiple of 8 in
    8..256, ``max_delay_ms`` 20..1000, ``mu`` (NLMS step) in (0, 1], ``dt_threshold_db`` (double-talk margin
    over the predicted echo) in [0, 40], and the detector's tunables through ``tuning`` (:class:`EchoTuning`).
    """

    __slots__ = ("_core",)

    def __init__(
        self,
        taps: int = 48,
        max_delay_ms: int = 350,
        mu: float = 0.4,
        dt_threshold_db: float = 6.0,
        *,
        tuning: EchoTuning | None = None,
    ) -> None:
        if isinstance(taps, bool) or not isinstance(taps, int) or not 8 <= taps <= MAX_TAPS or taps % 8:
            raise ValueError(f"taps must be a multiple of 8 in 8..{MAX_TAPS}, got {taps!r}")
        _check_int("max_delay_ms", max_delay_ms, 20, 1000)
        _check_real("mu", mu, 0.0, 1.0, lo_open=True)
        _check_real("dt_threshold_db", dt_threshold_db, 0.0, 40.0)
        if tuning is not None and not isinstance(tuning, EchoTuning):
            raise ValueError(f"tuning must be an EchoTuning, got {type(tuning).__name__}")
        self._core = _dsp.EchoCancellerCore(taps, max_delay_ms, mu, dt_threshold_db)
        if tuning is not None:
            for f in fields(EchoTuning):
                setattr(self._core, f.name, getattr(tuning, f.name))

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
    """What was played when: outbound μ-law keyed by the ledger's stream position (compiled ring
    ``rtvoice._dsp.ReferenceRing``).

    :meth:`sent` is the pacer's ``on_audio`` hook (called in send order, so the ring's write position always
    equals ``ledger.sent_pos``). :meth:`played_frame` is called once per inbound frame and decodes the 20 ms
    of bot audio the ledger says played since the previous frame (silence where nothing played). The read
    cursor advances 160 bytes per frame while audio plays rather than following every correction of the
    ledger's estimate (a mark echo moves it by a few ms): the canceller's delay estimator absorbs a fixed
    offset, but not a reference that jumps back and forth. It resynchronises after a clear or a drift of more
    than 60 ms.
    """

    __slots__ = ("pcm", "ring", "sent")

    def __init__(self) -> None:
        self.ring = _dsp.ReferenceRing()
        #: bot audio just sent to Twilio (the pacer's hook)
        self.sent = self.ring.sent
        #: the last reference frame, int16
        self.pcm = memoryview(bytearray(FRAME * 2)).cast("h")

    @property
    def written(self) -> int:
        """Bytes sent so far (the ring's write position)."""
        return int(self.ring.written)

    def played_frame(self, ledger: PlaybackLedger, now: int) -> memoryview:
        """int16 view of the bot audio played in the 20 ms ending at stream time ``now`` (valid until the next
        call)."""
        self.ring.played(ledger.played_pos(now), ledger.epoch, self.pcm)
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
        _check_int("ignore_ms", ignore_ms, 0, 60_000)  # 0: no grace period (the plain "vad" policy)
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
        # the per-frame work (reference, cancellation, history bits) is one compiled call
        self._core = _dsp.EchoGateCore(self.tap.ring, self.canceller._core)
        self._out = memoryview(self._core.out).cast("h")
        self._frame_at = self._core.frame_at

    @property
    def frames(self) -> int:
        """Frames processed while bot audio could echo."""
        return int(self._core.frames)

    @property
    def double_talk_frames(self) -> int:
        """Frames in which the detector heard the caller over possible echo."""
        return int(self._core.double_talk_frames)

    def frame(self, pcm: memoryview, now: int, bot_active: bool) -> memoryview:
        """Cancel echo in one decoded inbound frame (the 20 ms ending at ``now``); returns the frame for the
        VAD (valid until the next call)."""
        # One compiled call: the ledger's position (usually its memo: the call asked for the same ``now`` just
        # before) and epoch, the frames lost on the way in (the call fills them with silence for the agent; the
        # canceller's reference still advances by what played meanwhile, at most MAX_SKIP_FRAMES, or the echo
        # delay would slip by 20 ms per loss), reference, cancellation, history bits.
        if self._frame_at(pcm, self.ledger, now) & _UNPRIMED:
            return pcm  # nothing has been played yet: no echo possible, the VAD hears the caller as is
        return self._out

    def allow(self, source: Source, onset_ms: int, now: int) -> bool:
        if source == "vad":
            # the VAD saw the echo-reduced signal; at least 2 of the last 3 frames must show the caller above
            # the echo
            r = self._core.recent & 0b111
            return (r & 1) + (r >> 1 & 1) + (r >> 2 & 1) >= 2
        # a vendor hint (its VAD hears the raw audio): refused only when the last 3 frames were audible echo
        return self._core.echo_only & 0b111 != 0b111


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
    "ABOVE_BG",
    "LOCKED",
    "NEAR_END",
    "REF_ACTIVE",
    "EchoAwareGate",
    "EchoCanceller",
    "EchoTuning",
    "FrameGate",
    "IgnoreFirstGate",
    "ReferenceTap",
    "VadGate",
    "make_gate",
]
