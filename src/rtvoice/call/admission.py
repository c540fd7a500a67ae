"""Call admission: whether this worker takes one more call, decided before Twilio answers it.

Every call a worker carries costs it CPU on every 20 ms frame (``docs/performance.md``: ~40-60 µs per frame,
so a few hundred calls fill a core). Past that point nothing fails loudly: the event loop simply falls
behind, and *every* call on the worker hears late, choppy audio and late barge-ins. The only place to refuse
a call cleanly is before it is answered: the ``/incoming-call`` webhook answers ``<Reject reason="busy"/>``
(the caller hears a busy tone, Twilio does not bill the call, the call ends with status ``busy``) and
``POST /calls`` answers 503 before dialling (a call it placed counts while it rings). An outbound call's
answer webhook, and a media stream that arrives anyway (its webhook was answered by another worker), are
always taken: hanging up an answered call is worse than a busy worker.

Two independent limits, both per worker process (one worker per core, ``--workers``):

- **capacity**: ``max_calls`` calls in progress or answered and not yet streaming (0: no limit). Set it from
  ``python -m rtvoice bench load`` on the production host, below the measured calls per core.
- **overload**: the event loop's lag (how late a timer that should fire every ``LAG_PERIOD_S`` runs),
  smoothed over about a second. A loop that is late by ``lag_limit_s`` on average is already failing the
  calls it has, whatever their number (a mode heavier than the one ``max_calls`` was sized for, a noisy
  neighbour, a GC storm); new calls would only make it worse. It clears with hysteresis (below half the
  limit), so the verdict does not flap. A single long pause (one GC, one slow handler) barely moves the
  average: it is the sustained lag that refuses calls.

:class:`Admission` is sans-I/O: the server's loop-lag timer (:mod:`rtvoice.server.looplag`) feeds it samples
and the call registry asks it (``CallRegistry.accepting``); tests drive both with plain numbers.
"""

from __future__ import annotations

import enum
import math

__all__ = ["LAG_PERIOD_S", "LAG_TIME_CONSTANT_S", "Admission", "LagAverage", "Verdict"]

#: How often the server samples its event-loop lag (a timer callback; 20 per second cost nothing measurable).
LAG_PERIOD_S = 0.05
#: Time constant of the lag average: sustained lag over about a second, not one pause.
LAG_TIME_CONSTANT_S = 1.0


class Verdict(enum.Enum):
    """What :meth:`Admission.decide` says about one new call."""

    ADMIT = "admit"
    #: ``max_calls`` reached.
    FULL = "capacity"
    #: The event loop is lagging: the worker cannot serve the calls it already has on time.
    OVERLOADED = "overload"
    #: The worker is shutting down (decided by the call registry, not by :class:`Admission`).
    DRAINING = "draining"


class LagAverage:
    """Exponentially weighted average of loop-lag samples taken every ``period_s``: about the last
    ``time_constant_s`` of samples count. Every sample has the same weight, so one long pause (one late
    sample) moves the average by a twentieth of its length, while a loop that stays late moves it all the
    way."""

    __slots__ = ("alpha", "value_s")

    def __init__(self, period_s: float = LAG_PERIOD_S, time_constant_s: float = LAG_TIME_CONSTANT_S) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        if not time_constant_s > 0:
            raise ValueError(f"time_constant_s must be > 0, got {time_constant_s}")
        #: Weight of one sample.
        self.alpha = 1.0 - math.exp(-period_s / time_constant_s)
        #: The current average lag, seconds.
        self.value_s = 0.0

    def add(self, lag_s: float) -> float:
        """Add one sample (negative lag, a timer that fired early, counts as 0); returns the new average."""
        self.value_s += self.alpha * (max(0.0, lag_s) - self.value_s)
        return self.value_s


class Admission:
    """The admission decision for one worker process (see the module docstring).

    ``max_calls``: calls in progress plus answered-and-pending; 0 means no limit. ``lag_limit_s``: refuse
    while the average loop lag is above it; 0 switches the overload check off.
    """

    __slots__ = ("_lag", "lag_limit_s", "max_calls", "overloaded")

    def __init__(self, max_calls: int = 0, lag_limit_s: float = 0.0) -> None:
        if max_calls < 0:
            raise ValueError(f"max_calls must be >= 0 (0: no limit), got {max_calls}")
        if not lag_limit_s >= 0:
            raise ValueError(f"lag_limit_s must be >= 0 (0: off), got {lag_limit_s}")
        self.max_calls = max_calls
        self.lag_limit_s = lag_limit_s
        self._lag = LagAverage()
        #: True from when the average lag rose above the limit until it fell below half of it.
        self.overloaded = False

    @property
    def lag_s(self) -> float:
        """The average event-loop lag, seconds."""
        return self._lag.value_s

    def loop_lag(self, lag_s: float) -> None:
        """Feed one loop-lag sample: how late the periodic timer ran, seconds."""
        avg = self._lag.add(lag_s)
        if not self.lag_limit_s:
            return
        if self.overloaded:
            if avg < self.lag_limit_s / 2:
                self.overloaded = False
        elif avg > self.lag_limit_s:
            self.overloaded = True

    def verdict(self, active: int, pending: int = 0) -> Verdict:
        """May one more call start? ``active``: streams in a call on this worker; ``pending``: calls answered
        (or dialled) here whose stream has not started yet."""
        if self.overloaded:
            return Verdict.OVERLOADED
        if self.max_calls and active + pending >= self.max_calls:
            return Verdict.FULL
        return Verdict.ADMIT
