"""One periodic timer per event loop for every vendor link's watchdog, instead of a sleeping task per call.

Each vendor link checks, a few times a second, whether its vendor has stalled (no first byte of an answer
within ``RTVOICE_VENDOR_FIRST_BYTE_TIMEOUT``) and whether client events are waiting. Done as a task per link
that loops on ``asyncio.sleep(0.2)``, every call costs the loop a timer, a future and a task step five times a
second: at a few hundred calls per core that was ~2 % of the core (``docs/performance.md``) for nothing but
wake-ups. Here one ``call_later`` timer per loop runs every subscriber's callback in turn and re-arms itself
while anyone is subscribed.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

__all__ = ["WATCHDOG_PERIOD_S", "Ticker", "ticker_for"]

log = logging.getLogger("rtvoice.agents")

#: How often the vendor links' watchdogs run (s): stall timeouts are seconds, so 200 ms is precise enough.
WATCHDOG_PERIOD_S = 0.2


class Ticker:
    """Calls each subscribed ``fn(now)`` every ``period_s`` (``now``: the loop's time) from one timer."""

    __slots__ = ("__weakref__", "_handle", "_loop", "_subs", "period_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float = WATCHDOG_PERIOD_S) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        # weakly: the per-loop table (``ticker_for``) is keyed by the loop, and a strong reference from its
        # value would keep every loop that ever had a ticker (one per test, say) alive for good
        self._loop = weakref.ref(loop)
        self.period_s = period_s
        # insertion-ordered set of callbacks (a bound method is equal to, and hashes like, itself)
        self._subs: dict[Callable[[float], None], None] = {}
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._subs)

    def add(self, fn: Callable[[float], None]) -> None:
        """Subscribe ``fn`` (idempotent); the timer starts with the first subscriber."""
        self._subs[fn] = None
        if self._handle is None:
            self._arm()

    def remove(self, fn: Callable[[float], None]) -> None:
        """Unsubscribe ``fn`` (no error if it was not subscribed); the timer stops with the last one."""
        self._subs.pop(fn, None)
        if not self._subs and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            self._handle = loop.call_later(self.period_s, self._tick)

    def _tick(self) -> None:
        self._handle = None
        loop = self._loop()
        if loop is None:
            return
        now = loop.time()
        for fn in list(self._subs):  # a callback may unsubscribe itself or others
            if fn not in self._subs:
                continue
            try:
                fn(now)
            except Exception:  # one link's bug must not stop every other call's watchdog
                log.exception("watchdog callback %r raised", fn)
        if self._subs and self._handle is None:
            self._arm()


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticker] = weakref.WeakKeyDictionary()


def ticker_for(loop: asyncio.AbstractEventLoop | None = None) -> Ticker:
    """The watchdog :class:`Ticker` of ``loop`` (default: the running loop), created on first use."""
    if loop is None:
        loop = asyncio.get_running_loop()
    ticker = _TICKERS.get(loop)
    if ticker is None:
        ticker = _TICKERS[loop] = Ticker(loop)
    return ticker
