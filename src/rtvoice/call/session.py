"""``WS /media-stream``: the thin I/O edge between a Twilio Media Stream, the :class:`Call` and the agent.

Everything that decides lives in :class:`rtvoice.call.call.Call` (sans-I/O); this module only parses text
frames, verifies the stream token, starts and closes the agent, maps errors to close codes, logs and counts.

* Upgrade: ``X-Twilio-Signature`` is checked over the ``wss://`` URL built from ``PUBLIC_BASE_URL`` (never the
  Host header) when ``RTVOICE_VALIDATE_SIGNATURES`` is on; a bad or missing one gets 403 and no handshake.
* ``start``: the per-call stream token (a TwiML ``<Parameter>``) must verify for the start's CallSid, else
  close 1008. The agent prepared at webhook time is taken (or a new one made) and ``agent.start`` runs in a
  task; the caller's frames meanwhile are kept by the Call (up to 1 s) and flushed to the agent once it is
  ready.
* Protocol violations (non-JSON, bad base64, a binary frame, media before start) close 1008 after a log line
  with the CallSid; unknown events are logged once per stream and ignored.
* The end (``stop``, the socket closing, a replacement stream, shutdown): the agent is closed, the call record
  gets its outcome, metrics are counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from importlib import resources

from rtvoice import metrics
from rtvoice.agents.base import Agent, CallInfo
from rtvoice.call.call import Call, CallError, CallObserver, CallState, Outcome
from rtvoice.call.registry import CallRegistry, CallSetup
from rtvoice.config import Settings
from rtvoice.logs import call_context
from rtvoice.server.api import App, Request, Response, WebSocket, WebSocketHandler
from rtvoice.twilio.fastmedia import media_kernel, parse  # fast paths: compiled per-frame kernel, parser
from rtvoice.twilio.media import Connected, Dtmf, Mark, Media, ProtocolViolation, Start, Stop, Unknown
from rtvoice.twilio.stream_token import StreamTokenError

log = logging.getLogger("rtvoice.call")

_perf_ns = time.perf_counter_ns
_monotonic = time.monotonic
#: Vendor usage goes to the call recorder (and its limits are checked) at most this often during a call, s.
USAGE_REPORT_INTERVAL_S = 1.0
_FRAME_STATS = metrics.FRAME_STATS

PATH = "/media-stream"
#: ``agent.start`` that has not returned by then is a fatal ``start_timeout`` fault (apology, hang up). Agents
#: report their own stalls sooner; this only guards against one that never returns.
AGENT_START_TIMEOUT_S = 20.0
#: A mark's echo is placed at most this far (ms) after the last inbound frame's end (one frame period).
MARK_TIME_CAP_MS = 20

ObserverFactory = Callable[[], CallObserver]

_apology_cache: list[bytes | None] = []


def load_apology() -> bytes | None:
    """The bundled spoken apology (8 kHz μ-law, ``assets/apology_8k.ulaw``), or None if it is not there."""
    if not _apology_cache:
        data: bytes | None
        try:
            data = resources.files("rtvoice").joinpath("assets/apology_8k.ulaw").read_bytes() or None
        except (FileNotFoundError, OSError):
            data = None
        _apology_cache.append(data)
    return _apology_cache[0]


class MediaStreamHandler:
    """One Media Stream WebSocket (see the module docstring)."""

    def __init__(
        self,
        ws: WebSocket,
        settings: Settings,
        registry: CallRegistry,
        observer: CallObserver | None = None,
        apology: bytes | None = None,
    ) -> None:
        self.ws = ws
        self.settings = settings
        self.registry = registry
        self.call = Call(
            settings,
            None,
            send=self._send,
            close=self._close,
            observer=observer,
            apology=apology if apology is not None else load_apology(),
        )
        self.agent: Agent | None = None
        self.call_sid = ""
        self._start_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._unknown_logged = False
        self._finished = False
        self._last_frame_ns = 0  # perf_counter ns at the end of the last inbound frame
        self._bytes_reported = 0
        self._counted_active = False
        self._usage_reported: dict[str, int] = {}
        self._usage_at = 0.0
        #: the compiled per-frame parser/decoder (None with RTVOICE_FASTPATH=0), see :meth:`on_text_bytes`
        self._kernel = media_kernel(self.call.pcm_buffer)

    # --- WebSocketHandler
    # ---------------------------------------------------------------------------------------
    def on_text_bytes(self, data: bytes) -> bool:
        """A text message's raw bytes, before any UTF-8 decoding (the WebSocket layer offers them first). A
        plain ``media`` message is parsed, base64- and μ-law-decoded by the call's compiled kernel in one call
        and handed to :meth:`Call.on_media_frame` (no str, no :class:`Media`): True. Anything else, or the
        fast paths off: False, nothing done (the layer decodes the text strictly and calls :meth:`on_text`).
        The kernel takes ASCII only, so what it takes is valid UTF-8."""
        kernel = self._kernel
        if kernel is None:
            return False
        t0 = _perf_ns()
        n = kernel.feed(data)
        if n < 0:
            return False
        try:
            # the payload is a view of the kernel's buffer, reused next frame: the call copies what it keeps
            self.call.on_media_frame(kernel.chunk, kernel.timestamp, kernel.payload, n == 160)
        except CallError as exc:
            self._violation(exc.reason, str(exc))
            return True
        self._frame_done(t0)
        return True

    def on_text(self, text: str) -> None:
        t0 = _perf_ns()
        try:
            event = parse(text)
        except ProtocolViolation as exc:
            self._violation(exc.reason, str(exc))
            return
        if type(event) is Media:
            try:
                self.call.on_media(event)
            except CallError as exc:
                self._violation(exc.reason, str(exc))
                return
            self._frame_done(t0)
            return
        if type(event) is Mark:
            mono = _monotonic()
            elapsed = (_perf_ns() - self._last_frame_ns) // 1_000_000
            self.call.on_mark(event, self.call.now + min(max(elapsed, 0), MARK_TIME_CAP_MS))
            # at most once a second: marks come every few hundred ms per talking call and the usage
            # diff (dataclass fields, dict building) was ~1.5 % of the loop under load
            if mono - self._usage_at >= USAGE_REPORT_INTERVAL_S:
                self._usage_at = mono
                self._report_usage()
        elif type(event) is Start:
            self._on_start(event)
        elif type(event) is Dtmf:
            self.call.on_dtmf(event)
        elif type(event) is Stop:
            self.call.on_stop(event)
            self._finish()
            self.ws.close(1000, "stream stopped")
        elif type(event) is Connected:
            pass
        elif type(event) is Unknown and not self._unknown_logged:
            self._unknown_logged = True
            log.info(
                "unknown media stream event ignored", extra={"call_sid": self.call_sid, "event": event.event}
            )

    def _frame_done(self, t0: int) -> None:
        """Bookkeeping after one inbound frame (started at ``t0``, perf_counter ns)."""
        frames = 0
        sent = self.call.pacer.bytes_sent
        if sent - self._bytes_reported >= 160:
            frames = (sent - self._bytes_reported) // 160
            self._bytes_reported += frames * 160
        # plain ints, folded into Prometheus at a low rate (rtvoice.metrics.FrameStats)
        self._last_frame_ns = end = _perf_ns()
        _FRAME_STATS.frame(end - t0, frames)

    def on_binary(self, data: bytes) -> None:
        self._violation("binary_frame", "Twilio sends only text frames")

    def on_close(self, code: int | None, reason: str) -> None:
        if self.call.state is CallState.STREAMING and self.call.outcome is None:
            self.call.outcome = Outcome.DISCONNECTED
        self._finish()

    # --- registry hooks
    # -----------------------------------------------------------------------------------------
    def replace(self) -> None:
        """A newer stream for this call took over."""
        self.call.end(Outcome.REPLACED)
        self._finish()
        self.ws.close(1000, "replaced by a newer stream")

    async def shutdown(self) -> None:
        self.call.end(Outcome.SHUTDOWN)
        self._finish()
        self.ws.close(1001, "server shutting down")
        if self._close_task is not None:
            await asyncio.gather(self._close_task, return_exceptions=True)

    # --- internals
    # ----------------------------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        if not self.ws.closed:
            self.ws.send_text(text)

    def _close(self, code: int, reason: str) -> None:
        self._finish()
        self.ws.close(code, reason)

    def _violation(self, reason: str, detail: str) -> None:
        log.warning(
            "media stream protocol violation",
            extra={"call_sid": self.call_sid, "reason": reason, "detail": detail},
        )
        metrics.ERRORS.labels(kind="media_protocol").inc()
        if self.call.outcome is None:
            connecting = self.call.state is CallState.CONNECTING
            self.call.outcome = Outcome.REJECTED if connecting else Outcome.DISCONNECTED
        self._finish()
        self.ws.close(1008, reason[:100])

    def _on_start(self, start: Start) -> None:
        if self.call.state is not CallState.CONNECTING:
            self._violation("duplicate_start", "a second start on one stream")
            return
        self.call_sid = start.call_sid
        try:
            self.registry.stream_tokens.verify(start.custom_parameters.get("token"), start.call_sid)
        except StreamTokenError as exc:
            log.warning("stream token refused", extra={"call_sid": start.call_sid, "reason": exc.reason})
            metrics.ERRORS.labels(kind="stream_token").inc()
            self.call.outcome = Outcome.REJECTED
            self._finish()
            self.ws.close(1008, f"stream token {exc.reason}")
            return
        try:
            setup = self._setup(start)
        except Exception as exc:  # e.g. ConfigError for missing credentials: no agent, no call
            log.error("cannot create agent", extra={"call_sid": start.call_sid, "error": str(exc)})
            metrics.ERRORS.labels(kind="agent_create").inc()
            self.call.outcome = Outcome.AGENT_FAULT
            self._finish()
            self.ws.close(1011, "agent unavailable")
            return
        agent = setup.agent
        self.agent = agent
        self.call.agent = agent
        self.call.configure(setup.settings)  # the call's profile: VAD and pacing settings
        self._wire_observer(setup)
        info = self.call.on_start(start)
        self._record_legs(setup.settings)
        self.registry.stream_started(start.call_sid, self)
        metrics.ACTIVE_CALLS.inc()
        self._counted_active = True
        log.info(
            "media stream started",
            extra={
                "call_sid": start.call_sid,
                "stream_sid": start.stream_sid,
                "profile": getattr(setup.profile, "name", None),
                "agent": setup.settings.agent,
            },
        )
        # The agent's tasks (and the tools it runs) inherit the bound CallSid: their log lines carry it.
        with call_context(start.call_sid):
            self._start_task = asyncio.get_running_loop().create_task(self._start_agent(agent, info))

    def _setup(self, start: Start) -> CallSetup:
        """The agent and settings prepared at webhook time, or worked out again from the stream's
        parameters (the webhook ran on another worker, or the prepared agent expired)."""
        setup = self.registry.take_call(start.call_sid)
        if setup is not None:
            return setup
        params = start.custom_parameters
        return self.registry.new_call(
            start.call_sid,
            params.get("from", ""),
            params.get("to", ""),
            params.get("direction", "") or "inbound",
            profile=params.get("profile") or None,
            agent=params.get("agent") or None,
        )

    def _wire_observer(self, setup: CallSetup) -> None:
        """Tell a call recorder (``rtvoice.records.CallRecorder``) the call's agent and profile, and make a
        usage limit end the call politely. Other observers are left alone."""
        observer = self.call.observer
        if hasattr(observer, "agent"):
            observer.agent = setup.settings.agent
        if setup.profile is not None and hasattr(observer, "profile"):
            observer.profile = str(setup.profile.name)
        if hasattr(observer, "on_limit"):
            observer.on_limit = self._usage_limit

    def _usage_limit(self, reason: str) -> None:
        # Polite: the bot finishes what it is saying (queued audio plays), then the stream closes.
        log.warning(
            "usage limit reached, ending the call",
            extra={"call_sid": self.call_sid, "limit": reason},
        )
        self.call.hang_up(f"usage limit: {reason}")

    def _report_usage(self) -> None:
        """Vendor usage since the last report (the agents keep call totals, e.g. summed ``response.done``
        usage) to a recorder's ``agent_usage``: at marks while the bot talks (so usage limits can end a call)
        and at the end. Never per frame."""
        report = getattr(self.call.observer, "agent_usage", None)
        usage = getattr(self.agent, "usage", None)
        if report is None or usage is None or not hasattr(usage, "as_dict"):
            return
        now: dict[str, int] = usage.as_dict()
        delta = {k: v - self._usage_reported.get(k, 0) for k, v in now.items()}
        if not any(delta.values()):
            return
        self._usage_reported = now
        try:
            report(delta)
        except Exception as exc:
            log.warning("agent usage not recorded", extra={"call_sid": self.call_sid, "error": str(exc)})

    def _record_legs(self, settings: Settings) -> None:
        """``RTVOICE_RECORD_AUDIO_DIR``: both legs to WAV via the call recorder (after ``call_started``)."""
        record = getattr(self.call.observer, "record_audio", None)
        if not settings.record_audio_dir or record is None:
            return
        try:
            self.call.record_legs(record(settings.record_audio_dir))
        except OSError as exc:
            log.error("cannot record the call audio", extra={"call_sid": self.call_sid, "error": str(exc)})

    async def _start_agent(self, agent: Agent, info: CallInfo) -> None:
        try:
            await asyncio.wait_for(agent.start(info, self.call), AGENT_START_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            detail = f"agent.start did not return in {AGENT_START_TIMEOUT_S:.0f} s"
            self.call.fault("start_timeout", detail, True)
            return
        except Exception as exc:
            self.call.fault("start", f"{type(exc).__name__}: {exc}", True)
            return
        if self.call.state is CallState.STREAMING:
            self.call.on_agent_ready()

    def _finish(self) -> None:
        """End of the stream, whatever the cause (idempotent): close the agent, record the outcome."""
        if self._finished:
            return
        self._finished = True
        call = self.call
        self._report_usage()  # into the record before it is closed
        call.end(call.outcome or Outcome.DISCONNECTED)
        outcome = call.outcome.value if call.outcome is not None else "disconnected"
        metrics.FRAME_STATS.flush()  # this call's frames are in the Prometheus metrics when it ends
        if self._counted_active:
            metrics.ACTIVE_CALLS.dec()
            metrics.CALLS_TOTAL.labels(outcome=outcome).inc()
            self.registry.stream_ended(self.call_sid, self)
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        agent = self.agent
        if agent is not None:
            with call_context(self.call_sid):
                self._close_task = asyncio.get_running_loop().create_task(self._close_agent(agent))
        log.info(
            "media stream ended",
            extra={
                "call_sid": self.call_sid,
                "outcome": outcome,
                "frames_in": call.frames_in,
                "barge_ins": len(call.barge_ins),
            },
        )

    async def _close_agent(self, agent: Agent) -> None:
        try:
            await agent.close()
        except Exception as exc:
            log.warning("agent close failed", extra={"call_sid": self.call_sid, "error": str(exc)})


def register(
    app: App,
    settings: Settings,
    registry: CallRegistry,
    observer_factory: ObserverFactory | None = None,
) -> None:
    """Add ``WS /media-stream`` to ``app``; on shutdown, close the agents prepared for streams not yet
    started.

    ``observer_factory`` makes one :class:`CallObserver` per stream (e.g. a ``rtvoice.records`` recorder);
    without it the registry's ``observer_factory`` attribute is used if set, else nothing is recorded.
    """
    from rtvoice.twilio.signature import public_ws_url, validate

    factory = observer_factory or getattr(registry, "observer_factory", None)

    async def accept(request: Request) -> Response | Callable[[WebSocket], WebSocketHandler]:
        if settings.validate_signatures:
            target = request.target if request.target.startswith(PATH) else PATH
            url = public_ws_url(settings, target)
            if not validate(settings, url, {}, request.header("x-twilio-signature")):
                log.warning("media stream upgrade refused: bad or missing X-Twilio-Signature")
                metrics.ERRORS.labels(kind="signature").inc()
                return Response.text(403, "invalid Twilio signature\n")

        def make(ws: WebSocket) -> WebSocketHandler:
            observer = factory() if factory is not None else None
            return MediaStreamHandler(ws, settings, registry, observer)

        return make

    async def drain() -> None:
        await registry.drain()

    app.websocket(PATH, accept)
    app.on_shutdown.append(drain)


__all__ = ["PATH", "MediaStreamHandler", "load_apology", "register"]
