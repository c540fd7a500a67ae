"""Reference (slow-path) copies of the outbound path as it was before the fast paths (commit 42a8639), for the
property tests that compare the fast paths against them: same messages, same ledger, same return values.
Not imported by ``src``."""

from __future__ import annotations

import binascii
import json
from collections import deque
from collections.abc import Callable

from rtvoice.call.ledger import PlaybackLedger
from rtvoice.twilio.media import MessageWriter

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
