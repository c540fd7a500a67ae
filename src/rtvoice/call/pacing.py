"""Pacing bot audio into Twilio: keep at most ``max_queued_ms`` queued at Twilio, send the rest later.

Twilio buffers whatever it is sent and plays it in order, so an unpaced bridge pushes a whole answer into Twilio
at once; a barge-in then has seconds of audio to ``clear`` and the ledger can only guess where playback was.
Holding the audio here instead keeps Twilio's queue shallow: what ``clear`` discards is small, and the not-yet-sent
rest is dropped locally, exactly.

Rules (every call to :meth:`Pacer.pump` applies them):

* Queued at Twilio = sent - played, from the :class:`PlaybackLedger` (echoed marks plus real-time
interpolation).
* Audio goes out as soon as it arrives: the first chunk of an item is sent at once, whatever its size, so pacing
  adds no latency to the first bot word. :meth:`Pacer.pump` is called on every ``bot_audio`` and on every inbound
  frame (the call's 20 ms tick), which is when the queue has drained by 20 ms.
* Chunks are 40 ms (320 bytes) when enough audio is buffered. Why 40 ms: it halves the message count (JSON + base64
  + WebSocket framing per message) compared with 20 ms while staying well inside a 200 ms queue; chunks of a few ms
  cause audible jitter at word starts (openai-agents-python#1906), and chunks of 100 ms+ make the queue oscillate
  coarsely. The heard position's precision does not depend on chunk size (marks + interpolation do that).
  A shorter chunk goes out only for the first audio of an item, an item's tail, or when Twilio's queue is about
  to run dry (less than one chunk queued), never to fill a sliver of budget.
* A mark follows the first chunk of each item, then every ``mark_interval_ms`` of audio, and the item's last
chunk.

Items are kept as a queue of the agent's own ``bytes`` objects sliced by memoryview: the μ-law pass-through path
(OpenAI ``audio/pcmu``, ElevenLabs ``ulaw_8000``) is then copied once, by base64, on its way out. Item boundaries
stay exact, which the ledger needs to map a play position back to (item, offset). (The audio core's
:class:`rtvoice.audio.PlayoutBuffer` ring would add a copy in and a copy out and still need this item
bookkeeping next to it, so it is not used here.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from rtvoice.call.ledger import BYTES_PER_MS, PlaybackLedger
from rtvoice.twilio.media import MessageWriter

CHUNK_MS = 40
CHUNK_BYTES = CHUNK_MS * BYTES_PER_MS


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


class Pacer:
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
        self._max_queued = max_queued_ms * BYTES_PER_MS
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
        # Idle memo: a pump that sent nothing and found nothing to retire leaves the state it saw here; a pump
        # at the same stream time with the same queue (``_version``: push, done, clear, a new limit) and the
        # same ledger (what was sent, echoed marks, clears: all that ``played_pos`` and the mark rule depend
        # on) would decide the same again, so it returns at once. The call pumps twice per tick while the bot
        # talks (after the agent's audio, then for the inbound frame itself): the second is that case.
        self._version = 0
        self._idle: tuple[int, int, int, int, int] | None = None

    @property
    def max_queued(self) -> int:
        """Most audio (bytes) kept queued at Twilio."""
        return self._max_queued

    @max_queued.setter
    def max_queued(self, value: int) -> None:
        self._max_queued = value
        self._version += 1

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
        self._version += 1

    def done(self, item_id: str) -> None:
        """No more audio will arrive for ``item_id``."""
        item = self._by_id.get(item_id)
        if item is not None:
            item.done = True
            self._version += 1

    def clear(self) -> int:
        """Drop everything not yet sent (barge-in); return the number of bytes dropped."""
        dropped = self.buffered_bytes
        self._items.clear()
        self._by_id.clear()
        self._version += 1
        return dropped

    def pump(self, now: int, emit: Callable[[str], None]) -> int:
        """Send what the rules allow at stream time ``now``: media/mark message texts go to ``emit``.

        Returns the number of audio bytes sent.
        """
        items = self._items
        writer = self.writer
        if not items or writer is None:
            return 0
        ledger = self.ledger
        idle = self._idle
        if (
            idle is not None and idle[0] == now and idle[1] == self._version and idle[2] == ledger.sent_pos
            and idle[3] == ledger.marks_played and idle[4] == ledger.epoch
        ):
            return 0
        queued = ledger.sent_pos - ledger.played_pos(now)
        chunk = self.chunk
        max_queued = self._max_queued
        on_audio = self.on_audio
        sent_total = 0
        changed = False
        while items:
            item = items[0]
            buffered = item.buffered
            if buffered == 0:
                if item.done:
                    changed = True
                    items.popleft()
                    if self._by_id.get(item.item_id) is item:
                        del self._by_id[item.item_id]
                    if ledger.mark_due(item_done=True):
                        emit(writer.mark(ledger.mark(now)))
                    continue
                break  # the head item is still streaming: later items wait their turn
            n = buffered if buffered < chunk else chunk
            offset = item.offset
            if n < chunk and not (offset == 0 or item.done or queued < chunk):
                break  # wait for a full chunk; Twilio still has audio to play meanwhile
            if queued > 0 and queued + n > max_queued:
                break
            if offset == 0 and self.on_first_send is not None:
                self.on_first_send(item.item_id, now)
            # the next n bytes: a zero-copy view when they sit in the head part (always, for agents that hand
            # over whole chunks or single frames of a chunk's multiple)
            payload = item.take(n)
            emit(writer.media(payload))
            if on_audio is not None:
                on_audio(payload)
            ledger.sent(item.item_id, offset, n, now)
            item.offset = offset + n
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
        if sent_total:
            self.bytes_sent += sent_total
        elif not changed:
            self._idle = (now, self._version, ledger.sent_pos, ledger.marks_played, ledger.epoch)
        return sent_total
