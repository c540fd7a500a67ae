"""Reference (slow-path) copies of the outbound path as it was before the fast paths (commit 42a8639), for the
property tests that compare the fast paths against them: same messages, same ledger, same return values.
Not imported by ``src``."""

from __future__ import annotations

import binascii
import json
from collections import deque
from collections.abc import Callable

from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.call.ledger import PlaybackLedger
from rtvoice.config import Settings
from rtvoice.twilio.media import MessageWriter
from rtvoice.vad import FRAME_MS, SpeechEnd, SpeechStart, VoiceActivity

LEAD_FRAMES = 3

CHUNK_MS = 40
BYTES_PER_MS = 8


class _Item:
    __slots__ = ("buffered", "done", "item_id", "offset", "parts")

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        self.parts: deque[memoryview] = deque()
        self.buffered = 0  # bytes received and not yet sent
        self.offset = 0  # bytes of this item sent so far
        self.done = False

    def take(self, n: int) -> memoryview | bytes:
        """Remove and return the next ``n`` buffered bytes (a zero-copy view when they sit in one part)."""
        head = self.parts[0]
        if len(head) >= n:
            out = head[:n]
            if len(head) == n:
                self.parts.popleft()
            else:
                self.parts[0] = head[n:]
            self.buffered -= n
            return out
        pieces = []
        need = n
        while need:
            head = self.parts[0]
            if len(head) <= need:
                pieces.append(head)
                self.parts.popleft()
                need -= len(head)
            else:
                pieces.append(head[:need])
                self.parts[0] = head[need:]
                need = 0
        self.buffered -= n
        return b"".join(pieces)


class ReferencePacer:
    """The bot-audio queue of one call and the rule that feeds Twilio from it."""

    def __init__(
        self,
        ledger: PlaybackLedger,
        writer: MessageWriter | None = None,
        max_queued_ms: int = 200,
        chunk_ms: int = CHUNK_MS,
    ) -> None:
        if max_queued_ms < chunk_ms:
            raise ValueError(f"max_queued_ms ({max_queued_ms}) must be at least one chunk ({chunk_ms} ms)")
        self.ledger = ledger
        self.writer = writer
        self.max_queued = max_queued_ms * BYTES_PER_MS
        self.chunk = chunk_ms * BYTES_PER_MS
        self._items: deque[_Item] = deque()
        self._by_id: dict[str, _Item] = {}
        #: Called with (item_id, now) when an item's first byte is sent (turn latency stamps).
        self.on_first_send: Callable[[str, int], None] | None = None
        #: Called with each audio payload as it is sent (the echo canceller's reference tap).
        self.on_audio: Callable[[memoryview | bytes], None] | None = None
        #: Bytes sent in media messages and number of media messages, for metrics.
        self.bytes_sent = 0
        self.messages_sent = 0

    @property
    def buffered_bytes(self) -> int:
        """Bot audio received and not yet sent to Twilio."""
        return sum(it.buffered for it in self._items)

    @property
    def has_audio(self) -> bool:
        """True while any item is buffered or still expecting audio."""
        return bool(self._items)

    def push(self, item_id: str, ulaw: bytes) -> None:
        """Queue bot audio of ``item_id``. Items play in the order they started."""
        item = self._by_id.get(item_id)
        if item is None or item.done:
            item = _Item(item_id)
            self._items.append(item)
            self._by_id[item_id] = item
        if ulaw:
            item.parts.append(memoryview(ulaw))
            item.buffered += len(ulaw)

    def done(self, item_id: str) -> None:
        """No more audio will arrive for ``item_id``."""
        item = self._by_id.get(item_id)
        if item is not None:
            item.done = True

    def clear(self) -> int:
        """Drop everything not yet sent (barge-in); return the number of bytes dropped."""
        dropped = self.buffered_bytes
        self._items.clear()
        self._by_id.clear()
        return dropped

    def pump(self, now: int, emit: Callable[[str], None]) -> int:
        """Send what the rules allow at stream time ``now``: media/mark message texts go to ``emit``.

        Returns the number of audio bytes sent.
        """
        items = self._items
        if not items or self.writer is None:
            return 0
        ledger = self.ledger
        writer = self.writer
        queued = ledger.sent_pos - ledger.played_pos(now)
        sent_total = 0
        while items:
            item = items[0]
            if item.buffered == 0:
                if item.done:
                    items.popleft()
                    if self._by_id.get(item.item_id) is item:
                        del self._by_id[item.item_id]
                    if ledger.mark_due(item_done=True):
                        emit(writer.mark(ledger.mark(now)))
                    continue
                break  # the head item is still streaming: later items wait their turn
            n = item.buffered if item.buffered < self.chunk else self.chunk
            if n < self.chunk and not (item.offset == 0 or item.done or queued < self.chunk):
                break  # wait for a full chunk; Twilio still has audio to play meanwhile
            if queued > 0 and queued + n > self.max_queued:
                break
            if item.offset == 0 and self.on_first_send is not None:
                self.on_first_send(item.item_id, now)
            payload = item.take(n)
            emit(writer.media(payload))
            if self.on_audio is not None:
                self.on_audio(payload)
            ledger.sent(item.item_id, item.offset, n, now)
            item.offset += n
            queued += n
            sent_total += n
            self.messages_sent += 1
            last = item.done and item.buffered == 0
            if ledger.mark_due(item_done=last):
                emit(writer.mark(ledger.mark(now)))
            if last:
                items.popleft()
                if self._by_id.get(item.item_id) is item:
                    del self._by_id[item.item_id]
        self.bytes_sent += sent_total
        return sent_total


def _json_string_body(value: str) -> str:
    if value.isascii() and value.isalnum():
        return value
    return json.dumps(value)[1:-1]


def _b64(payload: bytes | bytearray | memoryview) -> str:
    return binascii.b2a_base64(payload, newline=False).decode("ascii")


class ReferenceWriter:
    """The template serializer as it was."""

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        sid = _json_string_body(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":"' + sid + '","media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":"' + sid + '","mark":{"name":"'
        self._clear = '{"event":"clear","streamSid":"' + sid + '"}'

    def media(self, payload: bytes | bytearray | memoryview) -> str:
        return self._media_prefix + _b64(payload) + '"}}'

    def mark(self, name: str) -> str:
        if not isinstance(name, str):
            raise ValueError("mark name must be a string")
        return self._mark_prefix + _json_string_body(name) + '"}}'

    def clear(self) -> str:
        return self._clear


class ReferenceEchoAgent(Agent):
    """Echoes caller utterances back as items after a fixed delay."""

    name = "echo"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.delay_frames = max(0, settings.echo_delay_ms // FRAME_MS)
        #: Own VAD, made only when the sink has none to share (see the module docstring).
        self.vad: VoiceActivity | None = None
        self._call_vad: VoiceActivity | None = None
        self._speaking = False  # the call VAD's state at the previous frame
        self.sink: AgentSink | None = None
        self.info: CallInfo | None = None
        self._tick = 0
        # The last few frames, so an utterance's echo starts at its first speech frame, not at the frame that
        # confirmed the onset.
        self._preroll: deque[bytes] = deque(maxlen=settings.vad_onset_frames + 1)
        self._item: str | None = None  # the utterance being captured
        self._count = 0
        # Frames waiting for their time: (due tick, item id, μ-law) and (due tick, item id, None) = item done.
        self._pending: deque[tuple[int, str, bytes | None]] = deque()
        self._cut: set[str] = set()
        self._started: str | None = None  # the echo whose first frame has been released
        #: What the caller heard of each interrupted echo (for tests and the line-test report).
        self.barge_ins: list[Heard | None] = []
        self.played: dict[str, int] = {}
        self.digits: list[str] = []
        self.closed = False

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        self.info = call
        self.sink = sink
        if not isinstance(getattr(sink, "vad", None), VoiceActivity):
            self.vad = VoiceActivity.from_settings(self.settings)

    def _call_vad_event(self, vad: VoiceActivity) -> SpeechStart | SpeechEnd | None:
        """The call VAD's transition at this frame, as the event its ``process`` returned."""
        speaking = vad.speaking
        if speaking == self._speaking:
            return None
        self._speaking = speaking
        if speaking:
            return SpeechStart(vad.onset_ms)
        return SpeechEnd(vad.onset_ms, vad.last_ms + FRAME_MS)

    def send_audio(self, ulaw: bytes | memoryview, pcm: memoryview) -> None:
        tick = self._tick
        self._tick = tick + 1
        if self.closed:
            return
        event: SpeechStart | SpeechEnd | None
        back = 0
        own = self.vad
        if own is None and self.sink is not None:
            # the call's VAD (the sink's attribute: a profile may have replaced it since start)
            vad: VoiceActivity = self.sink.vad  # type: ignore[attr-defined]
            event = self._call_vad_event(vad)
            if type(event) is SpeechStart:
                # frames since the onset frame, in the call's stream time (this frame is the latest one seen)
                back = max(0, (vad.last_ms - event.onset_ms) // FRAME_MS)
        else:
            if own is None:
                own = self.vad = VoiceActivity.from_settings(self.settings)
            event = own.process(pcm, tick * FRAME_MS) if len(ulaw) == 160 else None
            if type(event) is SpeechStart:
                # Frames from the onset on: the onset frame is (tick - onset run length + 1) ... tick.
                back = tick - event.onset_ms // FRAME_MS
        due = tick + self.delay_frames
        if type(event) is SpeechStart:
            self._count += 1
            self._item = f"echo-{self._count}"
            preroll = list(self._preroll)[-back:] if back else []
            for i, frame in enumerate(preroll):
                self._pending.append((due - len(preroll) + i, self._item, frame))
        if self._item is not None:
            self._pending.append((due, self._item, bytes(ulaw)))
            if type(event) is SpeechEnd:
                self._pending.append((due, self._item, None))
                self._item = None
        self._preroll.append(bytes(ulaw))
        self._release(tick)

    def _release(self, tick: int) -> None:
        sink = self.sink
        pending = self._pending
        while pending:
            due, item_id, _ = pending[0]
            if due > (tick + LEAD_FRAMES if item_id == self._started else tick):
                break
            _, item_id, frame = pending.popleft()
            self._started = item_id
            if sink is None or item_id in self._cut:
                continue
            if frame is None:
                sink.bot_audio_done(item_id)
            else:
                sink.bot_audio(item_id, frame)

    def send_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def barge_in(self, heard: Heard | None) -> None:
        self.barge_ins.append(heard)
        # Drop what is left of every echo already queued (the interrupted one and any after it); the utterance
        # being captured now is the caller's new turn and will be echoed.
        for _, item_id, _ in self._pending:
            if item_id != self._item:
                self._cut.add(item_id)
        if heard is not None:
            self._cut.add(heard.item_id)

    def playback(self, item_id: str, played_ms: int) -> None:
        self.played[item_id] = played_ms

    async def close(self) -> None:
        self.closed = True
        self._pending.clear()


class ReferenceFromPcm8k:
    """``rtvoice.agents.vendor_common.FromPcm8k`` as it was (a cast and a fresh view per frame)."""

    def __init__(self, rate: int) -> None:
        from rtvoice.agents.vendor_common import _resampler

        self.rate = rate
        self._rs = None if rate == 8000 else _resampler(8000, rate)
        self._out = bytearray()

    def convert(self, pcm: memoryview | bytes) -> memoryview:
        view = memoryview(pcm).cast("B")
        if self._rs is None:
            return view
        need = view.nbytes * self.rate // 8000
        if len(self._out) != need:
            self._out = bytearray(need)
        self._rs.process(view, self._out)
        return memoryview(self._out)
