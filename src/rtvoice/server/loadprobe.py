"""Server-side latency probe for the load benchmark (``python -m rtvoice bench load``).

Enabled only when the server runs with ``RTVOICE_LOAD_PROBE=1`` (the load benchmark sets it); it then adds
``GET /debug/latency`` (``?reset=1`` zeroes the histograms after reading them). Nothing here runs otherwise.

What it measures, and why this way. The server-added latency of one media frame is the time its bytes wait
in the socket before the event loop gets to them, plus the time the server spends on the frame (WebSocket
unframing, parse, μ-law decode, VAD, the agent's ``send_audio`` that queues it for the vendor). Both are
measured inside the server with ``time.perf_counter_ns`` into preallocated histograms, so the probe costs a
few hundred nanoseconds per sample and no allocation:

- **wait** (``loop_lag``): every ``PERIOD_S`` a timer picks a moment of the loop's life and makes a callback
  ready (``call_soon``); the sample is how long that callback waits to run: the rest of the current
  iteration plus the I/O callbacks of the next one, which is what a frame whose bytes arrive at that moment
  waits (inbound from Twilio or from the vendor alike: both sit in the same loop). The timer's own lateness
  is mostly rounding (uvloop timers have 1 ms resolution) and is added only when over 2 ms: then the loop
  was stalled (a long iteration, a GC pause) and a frame arriving then would have waited as long.
- **processing** (``frame``): the per-frame time :mod:`rtvoice.call.session` already measures for
  ``rtvoice_frame_processing_seconds`` (``on_text`` of a ``media`` message, the agent's ``send_audio``
  included). The probe taps ``metrics.FRAME_STATS`` to keep a finer copy (10 µs buckets).

- **vendor processing** (``vendor``): the other direction, vendor audio -> Twilio frame out: the time the
  OpenAI Realtime link spends on each vendor message from its bytes to the end of its handling (JSON,
  base64, the conversion to 8 kHz μ-law, the pacer writing the first Twilio frame of new audio), through
  ``metrics.VENDOR_MESSAGES``. The pacer's designed 20 ms pacing of the rest is not server-added latency.

The reported server-added latency is the distribution of wait + processing, assuming the two independent
(convolution of the two histograms); its max is the sum of the maxima.

"""

from __future__ import annotations

import asyncio
import json
import os
import time
from array import array
from typing import Any

__all__ = ["BUCKET_NS", "PROBE", "Histogram", "LoadProbe", "enabled", "register"]

#: Histogram resolution: 10 µs buckets up to 200 ms (anything slower lands in the last bucket).
BUCKET_NS = 10_000
N_BUCKETS = 20_000
#: Loop-lag timer period: 200 wake-ups per second cost well under 1 % of a core.
PERIOD_S = 0.005
#: Timer lateness above this is a stall, not the 1 ms timer rounding of uvloop.
STALL_NS = 2_000_000
#: A loop-lag sample over this (the benchmark's 5 ms budget) is late: counted, and checked against GC pauses.
LATE_NS = 5_000_000


def enabled() -> bool:
    """True when the server was started with ``RTVOICE_LOAD_PROBE`` set to a true value."""
    return os.environ.get("RTVOICE_LOAD_PROBE", "").lower() in ("1", "true", "yes", "on")


class Histogram:
    """Fixed-bucket latency histogram in a preallocated ``array``: ``record`` allocates nothing."""

    __slots__ = ("count", "counts", "max_ns", "total_ns")

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * N_BUCKETS))
        self.count = 0
        self.max_ns = 0
        self.total_ns = 0

    def record(self, ns: int) -> None:
        """Add one sample (nanoseconds; negative values count as 0)."""
        if ns < 0:
            ns = 0
        i = ns // BUCKET_NS
        self.counts[i if i < N_BUCKETS else N_BUCKETS - 1] += 1
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def reset(self) -> None:
        self.counts = array("q", bytes(8 * N_BUCKETS))
        self.count = 0
        self.max_ns = 0
        self.total_ns = 0

    def to_json(self) -> dict[str, Any]:
        """Sparse form: ``{"count", "max_ns", "total_ns", "buckets": {index: count}}``."""
        return {
            "count": self.count,
            "max_ns": self.max_ns,
            "total_ns": self.total_ns,
            "buckets": {str(i): c for i, c in enumerate(self.counts) if c},
        }


def percentile_us(buckets: dict[int, int], q: float) -> float:
    """The ``q`` quantile (0..1) of a sparse bucket map, in µs (upper edge of the bucket)."""
    total = sum(buckets.values())
    if total == 0:
        return 0.0
    target = q * total
    seen = 0
    for i in sorted(buckets):
        seen += buckets[i]
        if seen >= target:
            return (i + 1) * BUCKET_NS / 1000.0
    return (max(buckets) + 1) * BUCKET_NS / 1000.0


def convolve(a: dict[int, int], b: dict[int, int], cap: int = N_BUCKETS) -> dict[int, float]:
    """Distribution of the sum of two independent histograms (normalised to probabilities)."""
    ta, tb = sum(a.values()), sum(b.values())
    if not ta or not tb:
        return {}
    out: dict[int, float] = {}
    for i, ca in a.items():
        pa = ca / ta
        for j, cb in b.items():
            k = min(i + j, cap - 1)
            out[k] = out.get(k, 0.0) + pa * cb / tb
    return out


def quantile_us(dist: dict[int, float], q: float) -> float:
    """The ``q`` quantile of a normalised bucket distribution, in µs (upper bucket edge)."""
    seen = 0.0
    for i in sorted(dist):
        seen += dist[i]
        if seen >= q - 1e-12:
            return (i + 1) * BUCKET_NS / 1000.0
    return (max(dist) + 1) * BUCKET_NS / 1000.0 if dist else 0.0


class LoadProbe:
    """The loop-lag timer and the two histograms (see the module docstring)."""

    def __init__(self) -> None:
        self.loop_lag = Histogram()
        self.frame = Histogram()
        #: Processing of each vendor message (``metrics.VENDOR_MESSAGES``): the vendor -> Twilio direction.
        self.vendor = Histogram()
        self.gc_pause = Histogram()
        #: Per generation: [collections, total pause ns, max pause ns].
        self.gc_by_gen = [[0, 0, 0] for _ in range(3)]
        #: Loop-lag samples over ``LATE_NS``, and how many of them a GC pause overlapped: how much of the
        #: latency tail the collector explains.
        self.late_samples = 0
        self.late_samples_gc = 0
        self._gc_t0 = 0
        self._gc_last_end = 0
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0
        self._timer_due = 0
        self._stall = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch_gc(self) -> None:
        """Record every cyclic-GC pause (``gc.callbacks``) into :attr:`gc_pause`: a stop-the-world pause is
        wait for every frame queued behind it."""
        import gc

        if self._on_gc not in gc.callbacks:  # a bound method compares equal to itself: installed once
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        """Remove the GC callback :meth:`watch_gc` installed (tests)."""
        import gc

        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter_ns()
        else:
            end = self._gc_last_end = time.perf_counter_ns()
            pause = end - self._gc_t0
            self.gc_pause.record(pause)
            gen = info.get("generation")
            if isinstance(gen, int) and 0 <= gen <= 2:
                stats = self.gc_by_gen[gen]
                stats[0] += 1
                stats[1] += pause
                if pause > stats[2]:
                    stats[2] = pause

    def tap_metrics(self) -> None:
        """Record every per-frame processing time (``metrics.FRAME_STATS``, the source of
        ``rtvoice_frame_processing_seconds``) into :attr:`frame` as well, and every vendor message's
        (``metrics.VENDOR_MESSAGES``) into :attr:`vendor`."""
        from rtvoice import metrics

        metrics.FRAME_STATS.tap = self.frame.record  # the histograms are reset in place: the taps stay valid
        metrics.VENDOR_MESSAGES.tap = self.vendor.record

    def start(self) -> None:
        """Arm the loop-lag timer on the running loop (idempotent)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        self._timer_due = time.perf_counter_ns() + int(PERIOD_S * 1e9)
        self._handle = self._loop.call_later(PERIOD_S, self._fire)

    def _fire(self) -> None:
        # The timer only picks a moment of the loop's life; the sample is how long a callback made ready
        # *now* waits to run: the rest of this iteration plus the I/O callbacks of the next one, as a frame
        # would. uvloop timers have 1 ms resolution, so the timer's own lateness is mostly rounding; but when
        # it is clearly more (a long iteration, a GC pause) the timer itself waited like a frame, and that
        # wait is added, so stalls are not missed.
        assert self._loop is not None
        now = time.perf_counter_ns()
        late = now - self._timer_due
        self._stall = late if late > STALL_NS else 0
        self._due = now
        self._loop.call_soon(self._ran)

    def _ran(self) -> None:
        now = time.perf_counter_ns()
        wait = now - self._due + self._stall
        self.loop_lag.record(wait)
        if wait > LATE_NS:
            self.late_samples += 1
            if self._gc_last_end > now - wait:  # a collection ended while this sample was waiting
                self.late_samples_gc += 1
        self._arm()

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        out = {
            "pid": os.getpid(),
            "loop_lag": self.loop_lag.to_json(),
            "frame": self.frame.to_json(),
            "vendor": self.vendor.to_json(),
            "gc_pause": self.gc_pause.to_json(),
            "gc_by_gen": [list(g) for g in self.gc_by_gen],
            "late_samples": self.late_samples,
            "late_samples_gc": self.late_samples_gc,
        }
        if reset:
            self.loop_lag.reset()
            self.frame.reset()
            self.vendor.reset()
            self.gc_pause.reset()
            self.gc_by_gen = [[0, 0, 0] for _ in range(3)]
            self.late_samples = self.late_samples_gc = 0
        return out


#: The registered probe (None unless the server runs with the probe).
PROBE: LoadProbe | None = None


def register(app: Any) -> LoadProbe:
    """Add ``GET /debug/latency`` to ``app`` and tap the per-frame metric. The loop-lag timer starts at the
    first request to the endpoint (the benchmark calls it before measuring)."""
    from rtvoice.server.api import Request, Response

    global PROBE
    probe = PROBE = PROBE or LoadProbe()
    probe.tap_metrics()
    probe.watch_gc()

    async def latency(request: Request) -> Response:
        probe.start()
        reset = "reset=1" in request.target
        return Response.json(200, json.dumps(probe.snapshot(reset)).encode())

    app.route("GET", "/debug/latency", latency)
    return probe
