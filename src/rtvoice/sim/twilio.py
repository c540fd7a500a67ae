"""A simulated Twilio: places calls against rtvoice exactly the way Twilio does, and listens like a caller.

One :class:`SimulatedCall` does what Twilio does for one call:

1. ``POST /incoming-call`` with Twilio's form fields, signed with ``X-Twilio-Signature`` over the public URL;
2. parses the TwiML answer (``<Say>`` noted, ``<Connect><Stream url>`` and its ``<Parameter>``s);
3. opens the WebSocket with Twilio's upgrade headers (``User-Agent: Twilio.TmeWs/1.0``, the signature over the
   ``wss://`` URL with no params, no subprotocol, no compression);
4. sends ``connected``, ``start`` (the Parameters as ``customParameters``) and one 20 ms ``media`` frame every
   20 ms of stream time (counters as strings, exactly Twilio's shape): the caller's audio, silence otherwise;
5. plays the bot's ``media`` in real time through an emulated playout buffer (:class:`PlayoutEmulator`),
   echoes each ``mark`` once the audio queued before it has played, and on ``clear`` drops the unplayed
   audio and returns every pending mark at once;
6. sends DTMF and, on hang-up, ``stop``, then closes the socket.

It records what the caller *heard* as a μ-law timeline aligned with what the caller *sent* (byte ``8 * t`` of
either is stream time ``t`` ms), checks every message rtvoice sends against Twilio's rules (only ``media``,
``mark``, ``clear`` with exactly the documented keys, never binary, never before ``start``, right
``streamSid``), and reports a timing summary. All times are stream time: ms since ``start`` was sent, the
clock of Twilio's media timestamps. ``speed`` runs that clock faster than real time (``speed=10`` sends a
frame every 2 ms of wall time) to keep tests quick.

Calls share nothing: many can run concurrently in one event loop (each is its own set of tasks).

Example (inside a test, against a server on port 5050 whose TWILIO_AUTH_TOKEN is ``tok``)::

    sim = SimulatedTwilio("http://127.0.0.1:5050", auth_token="tok", speed=10)
    script = (CallScript()
              .say("question.wav", at_ms=500)                      # any WAV, int16 array or μ-law bytes
              .say(interruption_ulaw, after_bot_audio_ms=800)      # barge in 800 ms into the answer
    .hangup(after_bot_silence_ms=1500)) call = sim.start_call(script)
    clear = await call.wait_clear()                                # ClearEvent(at_ms, discarded_ms, marks)
    result = await call.wait_done()
    result.heard_until(clear.at_ms)                                # what the caller had heard by then
    print(result.format_summary()); result.write_wav("heard.wav")

Faults for negative tests: ``start_call(..., faults=Faults(webhook_signature="forged",
media_before_start=True, parameters={"token": old_token}, inject=[(100, b"binary")]))``.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode, urlsplit

import numpy as np
import numpy.typing as npt

from rtvoice.twilio import signature
from rtvoice.twilio.twiml import StreamTwiml, TwimlError, first_verb, parse_stream_twiml

if TYPE_CHECKING:
    from rtvoice.sim.line import LineModel

__all__ = [
    "CallResult",
    "CallScript",
    "ClearEvent",
    "Faults",
    "MarkEvent",
    "PlayoutEmulator",
    "SimulatedCall",
    "SimulatedTwilio",
    "caller_audio",
]

FRAME_MS = 20
BYTES_PER_MS = 8
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
SILENCE = 0xFF
USER_AGENT = "Twilio.TmeWs/1.0"

AudioInput = bytes | bytearray | memoryview | npt.NDArray[np.int16] | str | Path


def caller_audio(audio: AudioInput, rate: int = 8000) -> bytes:
    """Caller audio as raw 8 kHz μ-law bytes.

    ``bytes``-like input is taken as μ-law 8 kHz already; a numpy int16 array is PCM at ``rate``; a ``str`` or
    ``Path`` is a WAV file of any rate and encoding :func:`rtvoice.audio.read_wav` reads.
    """
    from rtvoice import audio as core

    if isinstance(audio, str | Path):
        samples, rate = core.read_wav(audio)
        return _pcm_to_ulaw_8k(samples, rate)
    if isinstance(audio, np.ndarray):
        if audio.dtype != np.int16:
            raise ValueError(f"PCM caller audio must be int16, got {audio.dtype}")
        return _pcm_to_ulaw_8k(audio, rate)
    return bytes(audio)


def _pcm_to_ulaw_8k(samples: npt.NDArray[np.int16], rate: int) -> bytes:
    from rtvoice import audio as core

    return core.to_ulaw_8k(np.ascontiguousarray(samples, dtype=np.int16), rate)


# --- the caller's script
# ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Step:
    """One scripted caller action and when it happens (see :class:`CallScript`)."""

    kind: Literal["say", "dtmf", "hangup"]
    audio: bytes = b""
    digits: str = ""
    gap_ms: float = 100.0
    at_ms: float | None = None
    after_ms: float | None = None
    after_bot_silence_ms: float | None = None
    after_bot_audio_ms: float | None = None


class CallScript:
    """What the caller does, in order. Each step waits for its trigger, measured from the moment the previous
    step finished (its *anchor*; 0 for the first step); with no trigger it follows immediately:

    - ``at_ms=T``: at stream time T;
    - ``after_ms=D``: D ms after the anchor;
    - ``after_bot_audio_ms=D``: D ms after the caller starts hearing bot audio (after the anchor);
    - ``after_bot_silence_ms=D``: once the caller has heard bot audio after the anchor and then D ms of
      silence (the bot finished its turn).

    A ``say`` finishes when its last frame is sent. Without a ``hangup`` step the call lasts until rtvoice
    closes the stream or ``max_duration_ms`` passes.
    """

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def _add(self, step: Step) -> CallScript:
        triggers = [step.at_ms, step.after_ms, step.after_bot_silence_ms, step.after_bot_audio_ms]
        if sum(t is not None for t in triggers) > 1:
            raise ValueError("give at most one of at_ms, after_ms, after_bot_silence_ms, after_bot_audio_ms")
        self.steps.append(step)
        return self

    def say(
        self,
        audio: AudioInput,
        *,
        rate: int = 8000,
        at_ms: float | None = None,
        after_ms: float | None = None,
        after_bot_silence_ms: float | None = None,
        after_bot_audio_ms: float | None = None,
    ) -> CallScript:
        """Speak ``audio`` (μ-law bytes, int16 PCM at ``rate``, or a WAV path) into the call."""
        return self._add(
            Step(
                "say",
                caller_audio(audio, rate),
                at_ms=at_ms,
                after_ms=after_ms,
                after_bot_silence_ms=after_bot_silence_ms,
                after_bot_audio_ms=after_bot_audio_ms,
            )
        )

    def dtmf(
        self,
        digits: str,
        *,
        gap_ms: float = 100.0,
        at_ms: float | None = None,
        after_ms: float | None = None,
        after_bot_silence_ms: float | None = None,
        after_bot_audio_ms: float | None = None,
    ) -> CallScript:
        """Press ``digits`` (0-9, *, #, A-D), ``gap_ms`` apart."""
        if not digits or any(d not in "0123456789*#ABCD" for d in digits):
            raise ValueError(f"bad DTMF digits {digits!r}")
        return self._add(
            Step("dtmf", b"", digits, gap_ms, at_ms, after_ms, after_bot_silence_ms, after_bot_audio_ms)
        )

    def hangup(
        self,
        *,
        at_ms: float | None = None,
        after_ms: float | None = None,
        after_bot_silence_ms: float | None = None,
        after_bot_audio_ms: float | None = None,
    ) -> CallScript:
        """Hang up: Twilio sends ``stop`` and closes the stream."""
        return self._add(
            Step("hangup", b"", "", 0, at_ms, after_ms, after_bot_silence_ms, after_bot_audio_ms)
        )


# --- Twilio's playout buffer (sans-I/O)
# ---------------------------------------------------------------------------


def _audible_table() -> npt.NDArray[np.bool_]:
    """For each μ-law code: is it louder than ~-50 dBFS (|sample| > 100)?"""
    from rtvoice.audio import ulaw_decode

    return np.asarray(np.abs(ulaw_decode(bytes(range(256))).astype(np.int32)) > 100)


_AUDIBLE = _audible_table()
#: Quiet gaps shorter than this inside bot speech (between syllables) do not split a segment.
SEGMENT_GAP_MS = 60.0


class PlayoutEmulator:
    """Twilio's outbound buffer: bot audio plays in order at 8 bytes per ms of stream time.

    Everything played (or silence when the buffer is empty) is appended to :attr:`heard`, a μ-law timeline
    where byte ``8 * t`` is stream time ``t`` ms. Marks are returned when the audio queued before them has
    played (immediately when nothing is queued); :meth:`clear` drops the unplayed audio and returns every
    pending mark. No I/O, no clock: the caller passes the current stream time to every method.

    :attr:`segments` are the stretches the caller heard the bot *audibly* (louder than about -50 dBFS; gaps
    under :data:`SEGMENT_GAP_MS` merged): a bot that streams μ-law silence is silent to the caller.
    """

    def __init__(self) -> None:
        self.heard = bytearray()
        self._pending = bytearray()
        self._marks: deque[tuple[int, str]] = deque()  # (queued byte total at the mark, name)
        self.queued_total = 0
        self.played_total = 0
        self.discarded_total = 0
        #: (start_ms, end_ms) of each stretch of bot audio the caller heard; the last may still be open.
        self.segments: list[list[float]] = []
        self.first_audio_ms: float | None = None

    @property
    def position_ms(self) -> float:
        """Stream time up to which the timeline has been rendered."""
        return len(self.heard) / BYTES_PER_MS

    @property
    def buffered_bytes(self) -> int:
        return len(self._pending)

    @property
    def playing(self) -> bool:
        return bool(self._pending)

    @property
    def idle_since_ms(self) -> float | None:
        """When the caller last heard the bot (end of the last audible segment; None before it ever spoke).
        What is still buffered does not count: the caller cannot hear the future."""
        if not self.segments:
            return None
        return self.segments[-1][1]

    def next_mark_due_ms(self) -> float | None:
        """Stream time at which the next pending mark becomes due, if any."""
        if not self._marks:
            return None
        return self.position_ms + (self._marks[0][0] - self.played_total) / BYTES_PER_MS

    def advance(self, now_ms: float) -> list[str]:
        """Play up to stream time ``now_ms``; returns the marks that became due, in order."""
        target = int(now_ms * BYTES_PER_MS)
        room = target - len(self.heard)
        if room <= 0:
            return []
        due: list[str] = []
        if self._pending:
            n = min(room, len(self._pending))
            base = len(self.heard)
            chunk = self._pending[:n]
            self.heard += chunk
            del self._pending[:n]
            self.played_total += n
            self._track_audible(base, chunk)
            while self._marks and self._marks[0][0] <= self.played_total:
                due.append(self._marks.popleft()[1])
            room -= n
        if room > 0:
            self.heard += bytes((SILENCE,)) * room
        return due

    def _track_audible(self, base: int, chunk: bytearray) -> None:
        loud = np.flatnonzero(_AUDIBLE[np.frombuffer(chunk, dtype=np.uint8)])
        if not loud.size:
            return
        # split the loud bytes into runs separated by quiet gaps of at least SEGMENT_GAP_MS
        gap = int(SEGMENT_GAP_MS * BYTES_PER_MS)
        breaks = np.flatnonzero(np.diff(loud) > gap)
        starts = np.concatenate(([loud[0]], loud[breaks + 1]))
        ends = np.concatenate((loud[breaks], [loud[-1]])) + 1
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            start_ms, end_ms = (base + start) / BYTES_PER_MS, (base + end) / BYTES_PER_MS
            if self.segments and start_ms - self.segments[-1][1] < SEGMENT_GAP_MS:
                self.segments[-1][1] = end_ms
            else:
                self.segments.append([start_ms, end_ms])
        if self.first_audio_ms is None:
            self.first_audio_ms = self.segments[0][0]

    def enqueue(self, now_ms: float, payload: bytes) -> list[str]:
        """Bot audio arrives at ``now_ms``; returns marks that became due while catching up."""
        due = self.advance(now_ms)
        self._pending += payload
        self.queued_total += len(payload)
        return due

    def mark(self, now_ms: float, name: str) -> list[str]:
        """A mark arrives; it is returned at once if nothing is left to play before it."""
        due = self.advance(now_ms)
        if not self._pending and not self._marks:
            due.append(name)
        else:
            self._marks.append((self.queued_total, name))
        return due

    def clear(self, now_ms: float) -> tuple[list[str], list[str], int]:
        """Drop unplayed audio: returns (marks due before the clear, marks returned by it, bytes dropped)."""
        due = self.advance(now_ms)
        dropped = len(self._pending)
        self.discarded_total += dropped
        self._pending.clear()
        returned = [name for _, name in self._marks]
        self._marks.clear()
        return due, returned, dropped


# --- results
# --------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ClearEvent:
    at_ms: float
    discarded_ms: float
    marks_returned: list[str]


@dataclass(slots=True)
class MarkEvent:
    name: str
    received_ms: float
    echoed_ms: float | None = None
    #: False when the mark came back because of a clear (its audio was discarded, never heard).
    played: bool | None = None


@dataclass
class CallResult:
    """Everything observed during one simulated call. Times are stream ms (since ``start``)."""

    call_sid: str
    account_sid: str
    from_number: str
    to_number: str
    stream_sid: str = ""
    outcome: str = "pending"
    webhook_status: int | None = None
    twiml: StreamTwiml | None = None
    ws_status: int | None = None
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str | None = None
    frames_sent: int = 0
    first_bot_audio_ms: float | None = None
    first_bot_media_received_ms: float | None = None
    bot_media_messages: int = 0
    bot_audio_bytes: int = 0
    clears: list[ClearEvent] = field(default_factory=list)
    marks: list[MarkEvent] = field(default_factory=list)
    dtmf_sent: list[tuple[float, str]] = field(default_factory=list)
    #: (start_ms, end_ms) of each scripted utterance the caller spoke
    said: list[tuple[float, float]] = field(default_factory=list)
    #: Twilio protocol breaches by rtvoice (Twilio would log 31950/31951 and ignore the message)
    violations: list[str] = field(default_factory=list)
    duration_ms: float = 0.0
    heard: bytearray = field(default_factory=bytearray, repr=False)
    sent: bytearray = field(default_factory=bytearray, repr=False)
    bot_segments: list[list[float]] = field(default_factory=list)

    def heard_until(self, t_ms: float) -> bytes:
        """μ-law the caller had heard by stream time ``t_ms``."""
        return bytes(self.heard[: int(t_ms * BYTES_PER_MS)])

    def bot_heard_ms(self, until_ms: float | None = None) -> float:
        """How many ms of bot audio the caller heard (up to ``until_ms``)."""
        total = 0.0
        for start, end in self.bot_segments:
            if until_ms is not None:
                end = min(end, until_ms)
            total += max(0.0, end - start)
        return total

    def heard_pcm(self) -> npt.NDArray[np.int16]:
        from rtvoice.audio import ulaw_decode

        return np.asarray(ulaw_decode(bytes(self.heard)), dtype=np.int16)

    def write_wav(self, path: str | Path, *, stereo: bool = True) -> None:
        """Write what the caller heard as 16-bit PCM WAV at 8 kHz; ``stereo`` puts the caller's own audio on
        the left channel and what they heard on the right, aligned in time."""
        import wave

        from rtvoice.audio import ulaw_decode

        n = max(len(self.heard), len(self.sent)) if stereo else len(self.heard)
        heard = np.asarray(ulaw_decode(bytes(self.heard).ljust(n, b"\xff")), dtype=np.int16)
        with wave.open(str(path), "wb") as w:
            w.setsampwidth(2)
            w.setframerate(8000)
            if stereo:
                sent = np.asarray(ulaw_decode(bytes(self.sent).ljust(n, b"\xff")), dtype=np.int16)
                w.setnchannels(2)
                w.writeframes(np.column_stack([sent, heard]).astype("<i2").tobytes())
            else:
                w.setnchannels(1)
                w.writeframes(heard.astype("<i2").tobytes())

    def summary(self) -> dict[str, Any]:
        """The timing summary as plain data (JSON-serialisable)."""
        data = asdict(self)
        for key in ("heard", "sent", "twiml"):
            data.pop(key, None)
        data["twiml_says"] = self.twiml.says if self.twiml else []
        data["bot_heard_ms"] = self.bot_heard_ms()
        data["marks_echoed"] = sum(1 for m in self.marks if m.echoed_ms is not None)
        data["marks_dropped_by_clear"] = sum(1 for m in self.marks if m.played is False)
        return data

    def format_summary(self) -> str:
        """A human-readable report (what ``python -m rtvoice simulate`` prints)."""

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} ms"

        echoed = sum(m.echoed_ms is not None for m in self.marks)
        lines = [
            f"call {self.call_sid}  stream {self.stream_sid or '-'}  outcome: {self.outcome}",
            f"  webhook HTTP {self.webhook_status}, websocket {self.ws_status}, "
            f"closed by {self.closed_by or '-'} ({self.close_code} {self.close_reason})".rstrip(),
            f"  duration {ms(self.duration_ms)}, frames sent {self.frames_sent}",
            f"  first bot media received {ms(self.first_bot_media_received_ms)}, "
            f"first bot audio heard {ms(self.first_bot_audio_ms)}",
            f"  bot audio: {self.bot_media_messages} messages, {self.bot_audio_bytes / BYTES_PER_MS:.0f} ms "
            f"received, {self.bot_heard_ms():.0f} ms heard",
            f"  marks: {len(self.marks)} received, {echoed} echoed, "
            f"{sum(m.played is False for m in self.marks)} returned by clear",
        ]
        for said in self.said:
            lines.append(f"  caller said {said[0]:.0f}-{said[1]:.0f} ms")
        for clear in self.clears:
            lines.append(
                f"  clear at {clear.at_ms:.0f} ms: {clear.discarded_ms:.0f} ms of audio dropped, "
                f"{len(clear.marks_returned)} marks returned"
            )
        if self.twiml and self.twiml.says:
            lines.append(f"  <Say>: {' | '.join(self.twiml.says)}")
        for v in self.violations:
            lines.append(f"  PROTOCOL VIOLATION: {v}")
        return "\n".join(lines)


@dataclass
class Faults:
    """Deliberate misbehaviour, for testing how rtvoice copes. The defaults are a well-behaved Twilio."""

    #: signature of the webhook POST / the WebSocket upgrade: valid, forged (wrong key), or absent
    webhook_signature: Literal["valid", "forged", "absent"] = "valid"
    ws_signature: Literal["valid", "forged", "absent"] = "valid"
    #: merged over the TwiML <Parameter>s in ``start.customParameters`` (e.g. replay an old token)
    parameters: dict[str, str] = field(default_factory=dict)
    #: TwiML <Parameter> names left out of ``customParameters`` (e.g. ``("token",)``)
    drop_parameters: tuple[str, ...] = ()
    skip_connected: bool = False
    skip_start: bool = False
    media_before_start: bool = False
    #: raw frames to send at a stream time: ``(at_ms, text or bytes)`` (bad JSON, binary, unknown events...)
    inject: list[tuple[float, str | bytes]] = field(default_factory=list)


# --- the I/O
# ---------------------------------------------------------------------------------------------------------


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class _Http:
    """A minimal HTTP/1.1 client on h11 (one request per connection), enough for Twilio's webhook POSTs."""

    @staticmethod
    async def post_form(
        url: str, form: dict[str, str], headers: Sequence[tuple[str, str]], timeout_s: float
    ) -> tuple[int, bytes]:
        import h11

        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"the simulator speaks plain http to rtvoice, got {url!r}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = urlencode(form).encode()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        try:
            conn = h11.Connection(h11.CLIENT)
            all_headers = [
                ("Host", parts.netloc),
                ("User-Agent", "TwilioProxy/1.1"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
                *headers,
            ]
            writer.write(conn.send(h11.Request(method="POST", target=target, headers=all_headers)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            status = 0
            chunks: list[bytes] = []
            async with asyncio.timeout(timeout_s):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
            return status, b"".join(chunks)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class SimulatedTwilio:
    """Places simulated calls against an rtvoice server.

    ``base_url`` is where rtvoice listens (``http://127.0.0.1:5050``); ``public_base_url`` is the URL Twilio
    would use, over which signatures are computed (rtvoice's ``PUBLIC_BASE_URL``; defaults to ``base_url``).
    Stream URLs in the TwiML that start with the public base are dialled at ``base_url`` instead.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth_token: str,
        account_sid: str | None = None,
        public_base_url: str | None = None,
        speed: float = 1.0,
        webhook_path: str = "/incoming-call",
        timeout_s: float = 10.0,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.base_url = base_url.rstrip("/")
        self.public_base_url = (public_base_url or base_url).rstrip("/")
        self.auth_token = auth_token
        self.account_sid = account_sid or _new_sid("AC")
        self.speed = speed
        self.webhook_path = webhook_path
        self.timeout_s = timeout_s

    def start_call(
        self,
        script: CallScript | None = None,
        *,
        from_number: str = "+15550100001",
        to_number: str = "+15550100002",
        call_sid: str | None = None,
        direction: str = "inbound",
        faults: Faults | None = None,
        max_duration_ms: float = 120_000.0,
        line: LineModel | None = None,
    ) -> SimulatedCall:
        """Start a call in the background (needs a running event loop); await its methods to follow it."""
        call = SimulatedCall(
            self,
            script or CallScript(),
            from_number=from_number,
            to_number=to_number,
            call_sid=call_sid or _new_sid("CA"),
            direction=direction,
            faults=faults or Faults(),
            max_duration_ms=max_duration_ms,
            line=line,
        )
        call.begin()
        return call

    async def call(
        self, script: CallScript | None = None, *, timeout_s: float = 300.0, **kw: Any
    ) -> CallResult:
        """Place a call and wait for it to end; returns its :class:`CallResult`."""
        return await self.start_call(script, **kw).wait_done(timeout_s)

    def connect_url(self, stream_url: str) -> str:
        """Where to dial a TwiML stream URL: the public base is swapped for the local ``base_url``."""
        public_ws = _ws_form(self.public_base_url)
        if stream_url.startswith(public_ws + "/"):
            return _ws_form(self.base_url) + stream_url[len(public_ws) :]
        return stream_url


def _ws_form(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}"


class SimulatedCall:
    """One call in progress. Await the ``wait_*`` methods to synchronise a test with it."""

    def __init__(
        self,
        twilio: SimulatedTwilio,
        script: CallScript,
        *,
        from_number: str,
        to_number: str,
        call_sid: str,
        direction: str,
        faults: Faults,
        max_duration_ms: float,
        line: LineModel | None = None,
    ) -> None:
        self.twilio = twilio
        self.script = script
        self.faults = faults
        self.direction = direction
        self.max_duration_ms = max_duration_ms
        #: the phone line (rtvoice.sim.line): echo of what the caller heard, noise, lost/late frames
        self.line = line
        self.speed = twilio.speed
        self.result = CallResult(call_sid, twilio.account_sid, from_number, to_number)
        self.playout = PlayoutEmulator()
        # live views: the result's timeline and segments are the playout's own objects
        self.result.heard = self.playout.heard
        self.result.bot_segments = self.playout.segments
        self._mic = bytearray()
        self._mic_queue: deque[tuple[int, bytes]] = deque()  # (utterance index, audio) waiting to be spoken
        self._seq = 0
        self._t0: float | None = None
        #: due time of the next frame to send; the stream clock never runs past it (see now_ms)
        self._next_due_ms = 0.0
        self._ws: Any = None
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._hangup_requested = False
        self._stopping = False
        self._marks_by_name: dict[str, deque[MarkEvent]] = {}
        self._task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._said_open: list[tuple[int, float]] = []

    # --- public API for tests
    # -------------------------------------------------------------------------------------

    @property
    def now_ms(self) -> float:
        """Current stream time (0 before ``start`` was sent)."""
        if self._t0 is None:
            return 0.0
        wall = (time.monotonic() - self._t0) * 1000.0 * self.speed
        # The stream clock is the wall clock, held back to the frame stream: when this process is starved of
        # CPU and frames go out late, simulated time waits for them, so the caller's audio, script triggers,
        # playout and marks stay on the same clock as the media timestamps rtvoice sees.
        return min(wall, self._next_due_ms)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Wait (wall ``timeout_s``) until ``predicate()`` holds; re-checked on every frame and message."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                if self._done.is_set():
                    if predicate():
                        return
                    raise RuntimeError(f"call ended ({self.result.outcome}) before the condition held")
                event = self._changed
                await event.wait()

    async def wait_first_bot_audio(self, timeout_s: float = 30.0) -> float:
        """Stream time at which the caller started hearing the bot."""
        await self.wait_for(lambda: self.playout.first_audio_ms is not None, timeout_s)
        assert self.playout.first_audio_ms is not None
        return self.playout.first_audio_ms

    async def wait_clear(self, count: int = 1, timeout_s: float = 30.0) -> ClearEvent:
        """The ``count``-th ``clear`` rtvoice sent."""
        await self.wait_for(lambda: len(self.result.clears) >= count, timeout_s)
        return self.result.clears[count - 1]

    async def wait_bot_silent(self, silent_ms: float, timeout_s: float = 30.0) -> float:
        """Wait until the bot has spoken and then been silent for ``silent_ms``; returns when it went
        silent."""

        def cond() -> bool:
            idle = self.playout.idle_since_ms
            return idle is not None and self.now_ms - idle >= silent_ms

        await self.wait_for(cond, timeout_s)
        idle = self.playout.idle_since_ms
        assert idle is not None
        return idle

    async def wait_stream_time(self, t_ms: float, timeout_s: float = 30.0) -> None:
        await self.wait_for(lambda: self.now_ms >= t_ms, timeout_s)

    async def wait_mark(self, name: str, timeout_s: float = 30.0) -> MarkEvent:
        """The first echo of mark ``name``."""

        def find() -> MarkEvent | None:
            return next((m for m in self.result.marks if m.name == name and m.echoed_ms is not None), None)

        await self.wait_for(lambda: find() is not None, timeout_s)
        mark = find()
        assert mark is not None
        return mark

    async def wait_done(self, timeout_s: float = 300.0) -> CallResult:
        """Wait for the call to end; returns the result."""
        await asyncio.wait_for(self._done.wait(), timeout_s)
        return self.result

    def say(self, audio: AudioInput, rate: int = 8000) -> None:
        """Speak ``audio`` now (outside the script)."""
        self._speak(caller_audio(audio, rate))

    async def send_dtmf(self, digit: str) -> None:
        await self._send_dtmf(digit)

    def hangup(self) -> None:
        """Hang up at the next frame."""
        self._hangup_requested = True

    async def aclose(self) -> CallResult:
        """Hang up and wait for the end."""
        self.hangup()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), 10)
        return self.result

    # --- internals
    # --------------------------------------------------------------------------------------------

    def begin(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"sim-call-{self.result.call_sid}")

    def _notify(self) -> None:
        self.result.first_bot_audio_ms = self.playout.first_audio_ms
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _speak(self, audio: bytes) -> int:
        index = len(self.result.said)
        start = max(self.now_ms, self.result.frames_sent * FRAME_MS)
        self.result.said.append((start, start + len(audio) / BYTES_PER_MS))
        self._mic_queue.append((index, audio))
        return index

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def _send(self, message: str | bytes) -> None:
        async with self._send_lock:
            await self._ws.send(message)

    def _signature(self, mode: str, url: str, params: dict[str, str]) -> str | None:
        if mode == "absent":
            return None
        key = self.twilio.auth_token if mode == "valid" else "forged-" + self.twilio.auth_token
        return signature.compute(key, url, params)

    async def _run(self) -> None:
        r = self.result
        wall0 = time.monotonic()
        try:
            twiml = await self._webhook()
            if twiml is not None:
                await self._stream(twiml)
        except Exception as exc:  # a simulator fault must end up in the result, not in a lost task
            if r.outcome == "pending":
                r.outcome = f"error: {type(exc).__name__}: {exc}"
        finally:
            if r.outcome == "pending":
                r.outcome = "completed"
            if self._t0 is not None:
                self.playout.advance(self.now_ms)
            r.duration_ms = self.now_ms if self._t0 is not None else (time.monotonic() - wall0) * 1000
            r.first_bot_audio_ms = self.playout.first_audio_ms
            self._done.set()
            self._notify()

    async def _webhook(self) -> StreamTwiml | None:
        r = self.result
        form = {
            "AccountSid": r.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": r.call_sid,
            "CallStatus": "ringing",
            "Called": r.to_number,
            "Caller": r.from_number,
            "Direction": self.direction,
            "From": r.from_number,
            "FromCountry": "US",
            "To": r.to_number,
            "ToCountry": "US",
        }
        signed_url = self.twilio.public_base_url + self.twilio.webhook_path
        headers: list[tuple[str, str]] = [("I-Twilio-Idempotency-Token", secrets.token_hex(16))]
        sig = self._signature(self.faults.webhook_signature, signed_url, form)
        if sig is not None:
            headers.append(("X-Twilio-Signature", sig))
        status, body = await _Http.post_form(
            self.twilio.base_url + self.twilio.webhook_path, form, headers, self.twilio.timeout_s
        )
        r.webhook_status = status
        if status != 200:
            r.outcome = f"webhook_refused_{status}"
            return None
        try:
            verb, attrs = first_verb(body)
        except TwimlError as exc:
            r.outcome = f"bad_twiml: {exc}"
            return None
        if verb == "Reject":
            # Twilio does not answer: a busy tone (status busy) or not-in-service (status no-answer)
            r.outcome = "busy" if attrs.get("reason") == "busy" else "no-answer"
            return None
        if verb == "Hangup":
            r.outcome = "hung_up_by_twiml"
            return None
        try:
            r.twiml = parse_stream_twiml(body)
        except TwimlError as exc:
            r.outcome = f"bad_twiml: {exc}"
            return None
        return r.twiml

    async def _stream(self, twiml: StreamTwiml) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        r = self.result
        headers: list[tuple[str, str]] = [("Accept-Encoding", "gzip")]
        sig = self._signature(self.faults.ws_signature, twiml.stream_url, {})
        if sig is not None:
            headers.append(("X-Twilio-Signature", sig))
        try:
            ws = await connect(
                self.twilio.connect_url(twiml.stream_url),
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                compression=None,
                subprotocols=None,
                origin=None,
                proxy=None,
                open_timeout=self.twilio.timeout_s,
                ping_interval=None,
                max_size=2**22,
                close_timeout=5,
            )
        except InvalidStatus as exc:
            r.ws_status = exc.response.status_code
            r.outcome = f"ws_refused_{r.ws_status}"
            return
        r.ws_status = 101
        self._ws = ws
        r.stream_sid = _new_sid("MZ")
        receiver = asyncio.create_task(self._receive())
        script = asyncio.create_task(self._run_script())
        try:
            await self._send_stream(twiml)
        except ConnectionClosed:
            pass
        finally:
            script.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await script
            if not self._stopping:
                # the server closed the socket (or dropped it); let the receiver record how
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(receiver), 5)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
            await ws.close()
            if r.close_code is None:
                r.close_code = ws.close_code
                r.close_reason = ws.close_reason or ""

    async def _send_stream(self, twiml: StreamTwiml) -> None:
        r = self.result
        f = self.faults
        params = {k: v for k, v in twiml.parameters.items() if k not in f.drop_parameters}
        params.update(f.parameters)
        if f.media_before_start:
            await self._send(self._media_json(b"\xff" * FRAME_BYTES, 0, 0))
        if not f.skip_connected:
            await self._send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self._t0 = time.monotonic()
        if not f.skip_start:
            start = {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": r.account_sid,
                    "streamSid": r.stream_sid,
                    "callSid": r.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": params,
                },
                "streamSid": r.stream_sid,
            }
            await self._send(json.dumps(start, separators=(",", ":")))
        injections = sorted(f.inject, key=lambda item: item[0])
        frame = 0
        while True:
            if self._hangup_requested or (self._ws.close_code is not None and not self._stopping):
                break
            due_ms = frame * FRAME_MS
            if due_ms >= self.max_duration_ms:
                r.outcome = "max_duration"
                break
            # sleep until the next frame, or until the next mark falls due (marks echo on time, not per frame)
            while True:
                now = self.now_ms
                if now >= due_ms:
                    break
                wake_ms: float = due_ms
                mark_due = self.playout.next_mark_due_ms()
                if mark_due is not None and now < mark_due < wake_ms:
                    wake_ms = mark_due
                await asyncio.sleep((wake_ms - now) / 1000.0 / self.speed)
                await self._play(self.now_ms)
            while injections and injections[0][0] <= due_ms:
                await self._send(injections.pop(0)[1])
            # let script steps due by now run first, so that audio scheduled at T starts in the frame at T
            self._notify()
            await asyncio.sleep(0)
            if self._hangup_requested:
                break
            payload = self._next_frame(due_ms)
            if self.line is None:
                await self._send(self._media_json(payload, frame + 1, due_ms))
            else:
                payload = self.line.mic_frame(payload, self.playout.heard, due_ms)
                for chunk, data in self.line.deliver(frame + 1, payload):
                    await self._send(self._media_json(data, chunk, (chunk - 1) * FRAME_MS))
            r.sent += payload
            r.frames_sent += 1
            self._next_due_ms = due_ms + FRAME_MS
            frame += 1
            await self._play(self.now_ms)
            self._notify()
        if self._hangup_requested or r.outcome == "max_duration":
            await self._hang_up()

    def _next_frame(self, due_ms: float) -> bytes:
        mic = self._mic
        while len(mic) < FRAME_BYTES and self._mic_queue:
            index, audio = self._mic_queue.popleft()
            # the utterance starts once what is already in the microphone has been sent
            start = due_ms + len(mic) / BYTES_PER_MS
            self.result.said[index] = (start, start + len(audio) / BYTES_PER_MS)
            mic += audio
        if len(mic) >= FRAME_BYTES:
            payload = bytes(mic[:FRAME_BYTES])
            del mic[:FRAME_BYTES]
            return payload
        payload = bytes(mic) + bytes((SILENCE,)) * (FRAME_BYTES - len(mic))
        mic.clear()
        return payload

    def _media_json(self, payload: bytes, chunk: int, timestamp: float) -> str:
        b64 = binascii.b2a_base64(payload, newline=False).decode("ascii")
        return (
            f'{{"event":"media","sequenceNumber":"{self._next_seq()}","streamSid":"{self.result.stream_sid}",'
            f'"media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{int(timestamp)}","payload":"{b64}"}}}}'
        )

    async def _hang_up(self) -> None:
        r = self.result
        self._stopping = True
        if r.closed_by is None:
            r.closed_by = "caller"
        if r.outcome == "pending":
            r.outcome = "completed"
        with contextlib.suppress(Exception):
            await self._send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": self._next_seq(),
                        "streamSid": r.stream_sid,
                        "stop": {"accountSid": r.account_sid, "callSid": r.call_sid},
                    },
                    separators=(",", ":"),
                )
            )
        with contextlib.suppress(Exception):
            await self._ws.close(1000)

    async def _send_dtmf(self, digit: str) -> None:
        r = self.result
        r.dtmf_sent.append((self.now_ms, digit))
        await self._send(
            f'{{"event":"dtmf","streamSid":"{r.stream_sid}","sequenceNumber":"{self._next_seq()}",'
            f'"dtmf":{{"track":"inbound_track","digit":"{digit}"}}}}'
        )

    async def _echo_marks(self, names: list[str], played: bool, at_ms: float) -> None:
        r = self.result
        for name in names:
            queue = self._marks_by_name.get(name)
            if queue:
                event = queue.popleft()
                event.echoed_ms = at_ms
                event.played = played
            await self._send(
                f'{{"event":"mark","sequenceNumber":"{self._next_seq()}","streamSid":"{r.stream_sid}",'
                f'"mark":{{"name":{json.dumps(name)}}}}}'
            )

    async def _play(self, now_ms: float) -> None:
        due = self.playout.advance(now_ms)
        if due:
            await self._echo_marks(due, True, now_ms)

    # --- receiving what rtvoice sends
    # ---------------------------------------------------------------------------

    def _violation(self, text: str) -> None:
        self.result.violations.append(f"{self.now_ms:.0f} ms: {text}")

    async def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        r = self.result
        ws = self._ws
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self._violation("binary frame (Twilio warning 31950 Malformed Message)")
                    continue
                await self._on_text(message)
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            if not self._stopping and r.closed_by is None:
                r.closed_by = "server"
                if r.outcome == "pending":
                    r.outcome = "closed_by_server"
                r.close_code = ws.close_code
                r.close_reason = ws.close_reason or ""
            self._notify()

    async def _on_text(self, text: str) -> None:
        r = self.result
        now = self.now_ms
        try:
            msg = json.loads(text)
        except ValueError:
            self._violation(f"invalid JSON (31951): {text[:80]!r}")
            return
        if not isinstance(msg, dict):
            self._violation(f"not a JSON object (31951): {text[:80]!r}")
            return
        event = msg.get("event")
        if self._t0 is None or self.faults.skip_start:
            self._violation(f"{event!r} sent before start")
            return
        if msg.get("streamSid") != r.stream_sid:
            self._violation(f"wrong or missing streamSid on {event!r} (31951)")
            return
        if event == "media":
            media = msg.get("media")
            if set(msg) != {"event", "streamSid", "media"} or not isinstance(media, dict) or set(media) != {
                "payload"
            }:
                self._violation(f"media with unexpected keys (31951): {text[:120]!r}")
                return
            try:
                payload = binascii.a2b_base64(media["payload"], strict_mode=True)
            except (binascii.Error, ValueError, TypeError):
                self._violation("media payload is not valid base64 (31951)")
                return
            if r.first_bot_media_received_ms is None:
                r.first_bot_media_received_ms = now
            r.bot_media_messages += 1
            r.bot_audio_bytes += len(payload)
            due = self.playout.enqueue(now, payload)
            if due:
                await self._echo_marks(due, True, now)
        elif event == "mark":
            mark = msg.get("mark")
            if (
                set(msg) != {"event", "streamSid", "mark"}
                or not isinstance(mark, dict)
                or set(mark) != {"name"}
                or not isinstance(mark["name"], str)
            ):
                self._violation(f"mark with unexpected shape (31951): {text[:120]!r}")
                return
            name = mark["name"]
            record = MarkEvent(name, now)
            r.marks.append(record)
            self._marks_by_name.setdefault(name, deque()).append(record)
            due = self.playout.mark(now, name)
            if due:
                await self._echo_marks(due, True, now)
        elif event == "clear":
            if set(msg) != {"event", "streamSid"}:
                self._violation(f"clear with unexpected keys (31951): {text[:120]!r}")
                return
            due, returned, dropped = self.playout.clear(now)
            if due:
                await self._echo_marks(due, True, now)
            r.clears.append(ClearEvent(now, dropped / BYTES_PER_MS, returned))
            await self._echo_marks(returned, False, now)
        else:
            self._violation(f"unknown event {event!r} (31951)")

    # --- the script
    # -------------------------------------------------------------------------------------------

    async def _run_script(self) -> None:
        anchor = 0.0
        for step in self.script.steps:
            await self._wait_trigger(step, anchor)
            if step.kind == "say":
                index = self._speak(step.audio)
                await self.wait_for(lambda i=index: self._spoken(i), timeout_s=1e9)  # type: ignore[misc]
            elif step.kind == "dtmf":
                for i, digit in enumerate(step.digits):
                    if i:
                        await self.wait_stream_time(self.now_ms + step.gap_ms, timeout_s=1e9)
                    await self._send_dtmf(digit)
            else:
                self.hangup()
                return
            anchor = self.now_ms

    def _spoken(self, index: int) -> bool:
        """Utterance ``index`` has been sent completely."""
        r = self.result
        return not self._mic and not self._mic_queue and r.frames_sent * FRAME_MS >= r.said[index][1]

    async def _wait_trigger(self, step: Step, anchor: float) -> None:
        forever = 1e9
        if step.at_ms is not None:
            await self.wait_stream_time(step.at_ms, forever)
        elif step.after_ms is not None:
            await self.wait_stream_time(anchor + step.after_ms, forever)
        elif step.after_bot_audio_ms is not None:
            started = await self._wait_bot_audio_after(anchor)
            await self.wait_stream_time(started + step.after_bot_audio_ms, forever)
        elif step.after_bot_silence_ms is not None:
            await self._wait_bot_audio_after(anchor)
            wait_ms = step.after_bot_silence_ms

            def cond() -> bool:
                idle = self.playout.idle_since_ms
                return idle is not None and idle > anchor and self.now_ms - idle >= wait_ms

            await self.wait_for(cond, forever)

    async def _wait_bot_audio_after(self, anchor: float) -> float:
        """When bot audio was first heard at or after ``anchor`` (including audio already playing then)."""

        def started() -> float | None:
            for start, end in self.playout.segments:
                if end > anchor:
                    return max(start, anchor)
            return None

        await self.wait_for(lambda: started() is not None, 1e9)
        value = started()
        assert value is not None
        return value
