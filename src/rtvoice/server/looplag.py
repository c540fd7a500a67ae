"""Event-loop lag sampling: the I/O edge of :class:`rtvoice.call.admission.Admission`'s overload check.

A timer that should run every ``period_s`` is armed on the serving loop; how late it actually runs is the
loop's lag: the time any callback made ready at that moment (a media frame's bytes, a vendor message) waited
behind the work already queued. Each sample goes to ``sink(lag_s)``. The timer costs one callback
per period (20 per second by default); uvloop timers have 1 ms resolution, which is far below the lags that
matter here (tens of ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rtvoice.call.admission import LAG_PERIOD_S

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Arms a periodic timer on the running loop and reports how late each run is."""

    __slots__ = ("_clock", "_due", "_handle", "_loop", "period_s", "samples", "sink")

    def __init__(
        self,
        sink: Callable[[float], None],
        period_s: float = LAG_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.sink = sink
        self.period_s = period_s
        #: Samples taken so far.
        self.samples = 0
        self._clock = clock
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._clock() + self.period_s
        self._handle = self._loop.call_later(self.period_s, self._fire)

    def _fire(self) -> None:
        now = self._clock()
        lag = now - self._due
        self._arm()  # first: a sink that raises must not stop the sampling
        self.samples += 1
        self.sink(lag)
