"""The playback ledger: which bot audio the caller has actually heard, from Twilio's ``mark`` echoes.

Bot audio leaves in ``media`` messages; after some of them a ``mark`` follows. Twilio echoes a mark when the
audio before it has played, so an echoed mark is a fact: "the caller heard everything up to here, by now".
Between marks the ledger interpolates at real-time rate, never past what was actually sent and never through a
gap in which nothing was queued (Twilio cannot play audio it has not received yet). Counting bytes *sent*
instead overstates what was heard by everything still in Twilio's buffer (twilio-agent-connect-python#118).

A ``clear`` makes Twilio drop its buffer and echo every pending mark at once: those echoes mean "discarded",
not "played" (the Bolna PR#842 class of bug), so :meth:`PlaybackLedger.clear` retires the pending marks first
and their late echoes are ignored.

Positions are kept in μ-law bytes (8 per ms at 8 kHz) on one running axis for the whole call ("stream
position"); each sent chunk maps a range of that axis to (item id, offset within the item). Times are the
call's stream time in ms (Twilio's inbound media timestamps). Sans-I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rtvoice.agents.base import Heard

BYTES_PER_MS = 8
#: How many retired (cleared) mark names are remembered so their echoes can be told apart from unknown names.
#: Twilio echoes them right after the clear, so a few dozen would do; 256 short strings is a few KiB.
MAX_RETIRED_MARKS = 256
#: How far (ms) an echo's time stamp may precede the earliest moment its audio can have finished playing before
#: the ledger treats the stamp as stale. The call stamps an echo with its inbound-frame clock, which is off by
#: up to half a frame (10 ms) when frames arrive on time, but lags by whole frames when inbound frames were
#: lost: the clock only advances when a frame arrives.
MARK_TIME_SLACK_MS = 10


@dataclass(slots=True)
class _Chunk:
    start: int  # stream position (bytes) of the chunk's first byte
    end: int
    item_id: str
    item_offset: int  # offset (bytes) of ``start`` within its item
    sent_at: int  # stream time (ms) it was sent


@dataclass(frozen=True, slots=True)
class MarkInfo:
    """What one mark stands for."""

    name: str
    #: Stream position (bytes) of the audio end the mark follows.
    position: int
    item_id: str
    #: Audio of ``item_id`` (ms from its start) that has played when this mark is echoed.
    item_end_ms: int
    sent_at: int
    #: The first mark of its item: its echo is the moment the caller first heard the item.
    first_of_item: bool


@dataclass(frozen=True, slots=True)
class MarkAck:
    """A mark echoed as played."""

    mark: MarkInfo
    acked_at: int


class PlaybackLedger:
    """Marks -> acknowledged play position per item; interpolated "heard" position at any stream time."""

    def __init__(self, mark_interval_ms: int = 60) -> None:
        if not 20 <= mark_interval_ms <= 1000:
            raise ValueError(f"mark_interval_ms must be 20..1000, got {mark_interval_ms}")
        self.mark_interval = mark_interval_ms * BYTES_PER_MS
        #: Bytes sent on the stream position axis so far.
        self.sent_pos = 0
        #: Stream time of the last send.
        self.last_send_t = 0
        # The anchor: audio up to ``_anchor_pos`` had played by ``_anchor_t`` (last echoed mark, or a clear).
        self._anchor_pos = 0
        self._anchor_t = 0
        # The latest time the audio up to _anchor_pos can have finished playing by the unaltered echo stamps:
        # a lower bound chain that only moves up (a re-stamped or early stamp never lowers it), used to tell a
        # stale stamp from an on-time one (see acked()).
        self._lb_t = 0
        self._chunks: deque[_Chunk] = deque()
        self._pending: dict[str, MarkInfo] = {}
        self._retired: dict[str, None] = {}  # insertion-ordered set
        self._seq = 0
        # Resumable state of the played_pos() walk: (chunk index, position, clock) after the last chunk known
        # to be fully played at time _walk_now; _walk_now = -1 means "start from the anchor".
        self._walk_i = 0
        self._walk_pos = 0
        self._walk_clock = 0
        self._walk_now = -1
        # played_pos() memo: the result at stream time _pp_now (-1: none). Per inbound frame the call, its
        # barge-in gate and the pacer all ask for the same ``now``; anything that moves the estimate (a send,
        # an echoed mark, a clear) forgets it.
        self._pp_now = -1
        self._pp_pos = 0
        self._last_mark_pos = 0
        self._last_item: str | None = None
        self._item_marked: str | None = None  # the item whose first mark has been placed
        #: Counters: marks sent, echoed as played, echoed after a clear (discarded), unknown names.
        self.marks_sent = 0
        self.marks_played = 0
        self.marks_discarded = 0
        self.marks_unknown = 0
        #: Echoes whose time stamp was earlier than their audio could have played (a stale clock), re-stamped.
        self.marks_restamped = 0
        #: Number of clears so far (the "epoch").
        self.epoch = 0

    # --- sending
    # ----------------------------------------------------------------------------------------------
    def sent(self, item_id: str, item_offset: int, nbytes: int, now: int) -> None:
        """Record ``nbytes`` of ``item_id`` (starting at byte ``item_offset`` of the item) sent at ``now``."""
        if nbytes <= 0:
            return
        start = self.sent_pos
        self.sent_pos = start + nbytes
        self._pp_now = -1
        self.last_send_t = now
        last = self._chunks[-1] if self._chunks else None
        # Coalesce with the previous chunk when contiguous and sent before the previous one can have finished
        # playing: the walk in played_pos() then cannot find a gap between them, so merging loses nothing, and
        # a paced item stays one entry however long it is (the walk is O(items), not O(chunks)).
        if (
            last is not None
            and last.item_id == item_id
            and last.end == start
            and now * BYTES_PER_MS < last.sent_at * BYTES_PER_MS + (last.end - last.start)
            and last.item_offset + (last.end - last.start) == item_offset
        ):
            last.end = self.sent_pos
            if self._walk_i == len(self._chunks):
                # The resumable walk had consumed this chunk to its old end; it must walk on into the bytes
                # just appended (from the same position and clock, so the result equals a walk from the anchor).
                self._walk_i -= 1
        else:
            self._chunks.append(_Chunk(start, self.sent_pos, item_id, item_offset, now))
        self._last_item = item_id

    def mark_due(self, item_done: bool = False) -> bool:
        """Whether a mark should follow the audio sent so far.

        One after the first chunk of an item (its echo stamps "first heard"), then every
        ``mark_interval_ms`` of audio, and at the end of an item.
        """
        if self.sent_pos == self._last_mark_pos or self._last_item is None:
            return False
        if self._item_marked != self._last_item or item_done:
            return True
        return self.sent_pos - self._last_mark_pos >= self.mark_interval

    def mark(self, now: int) -> str:
        """Place a mark after the audio sent so far and return its (unique, short) name."""
        chunk = self._chunks[-1] if self._chunks else None
        if chunk is None or self._last_item is None:
            raise RuntimeError("mark() before any audio was sent")
        self._seq += 1
        name = f"m{self._seq}"
        item_end = chunk.item_offset + (chunk.end - chunk.start)
        first = self._item_marked != chunk.item_id
        self._item_marked = chunk.item_id
        self._pending[name] = MarkInfo(
            name, self.sent_pos, chunk.item_id, item_end // BYTES_PER_MS, now, first
        )
        self._last_mark_pos = self.sent_pos
        self.marks_sent += 1
        return name

    # --- Twilio's echoes
    # ----------------------------------------------------------------------------------------
    def acked(self, name: str, now: int) -> MarkAck | None:
        """Twilio echoed mark ``name`` at ``now``. Returns the ack if it means "played"; None if it was
        discarded
        by a clear or is unknown (late duplicates, another process's names): those never move the play
        position.
        """
        info = self._pending.get(name)
        if info is None:
            if name in self._retired:
                del self._retired[name]
                self.marks_discarded += 1
            else:
                self.marks_unknown += 1
            return None
        # Twilio plays in order: every mark placed before this one has played too.
        for key in list(self._pending):
            del self._pending[key]
            if key == name:
                break
        self.marks_played += 1
        # Audio plays no faster than real time: the mark's audio cannot have finished before the earliest time
        # the walk from the current anchor allows. A stamp well before that comes from a stale clock (the
        # call's clock stands still while inbound frames are lost, and anchoring there would overstate what
        # was heard by 20 ms per lost frame until the next echo); the earliest feasible time is then the best
        # estimate. Stamps within the slack are kept as they are: clamping every one would ratchet the anchor
        # towards the latest end of the stamps' +-10 ms uncertainty.
        # (The bound is walked from the lower-bound chain, not from the anchor itself: from the anchor, a run
        # of stale stamps each within the slack of the previous one would walk the anchor down by 10 ms per
        # echo.)
        earliest = self._earliest_end(info.position)
        if now < earliest - MARK_TIME_SLACK_MS:
            now = earliest
            self.marks_restamped += 1
        self._walk_now = -1
        self._pp_now = -1
        if info.position > self._anchor_pos:
            self._anchor_pos = info.position
            self._anchor_t = now
            self._lb_t = max(now, earliest)
        elif info.position == self._anchor_pos:
            self._anchor_t = max(self._anchor_t, now)
            self._lb_t = max(self._lb_t, now)
        self._prune()
        return MarkAck(info, now)

    def clear(self, now: int) -> Heard | None:
        """A ``clear`` is being sent at ``now``: return what was cut off (see :meth:`heard`), retire pending
        marks,
        and forget the queued audio."""
        heard = self.heard(now)
        for key in self._pending:
            self._retired[key] = None
        self._pending.clear()
        while len(self._retired) > MAX_RETIRED_MARKS:
            del self._retired[next(iter(self._retired))]
        # Twilio's buffer is empty now: the next audio starts playing when it arrives.
        self._anchor_pos = self.sent_pos
        self._anchor_t = now
        self._lb_t = now
        self._last_mark_pos = self.sent_pos
        self._chunks.clear()
        self._walk_now = -1
        self._pp_now = -1
        self._item_marked = None
        self._last_item = None
        self.epoch += 1
        return heard

    # --- estimates
    # ----------------------------------------------------------------------------------------------
    def played_pos(self, now: int) -> int:
        """Estimated stream position (bytes) the caller has heard up to at ``now``.

        From the last echoed mark, audio plays at real-time rate, starting each chunk no earlier than it was
        sent. The walk resumes from where the previous call left it (chunks already fully played stay so while
        time moves forward), so a call whose marks stopped coming back does not pay for its whole history on
        every frame.
        """
        if now == self._pp_now:
            return self._pp_pos
        chunks = self._chunks
        if self._walk_now >= 0 and now >= self._walk_now:
            i, pos, clock = self._walk_i, self._walk_pos, self._walk_clock
        else:
            i, pos, clock = 0, self._anchor_pos, self._anchor_t
        n = len(chunks)
        result = -1
        while i < n:
            c = chunks[i]
            if c.end <= pos:
                i += 1
                continue
            start_pos = c.start if c.start > pos else pos
            start_t = c.sent_at if c.sent_at > clock else clock
            if now <= start_t:
                result = start_pos
                break
            dur = c.end - start_pos
            played = (now - start_t) * BYTES_PER_MS
            if played < dur:
                result = start_pos + played
                break
            clock = start_t + dur // BYTES_PER_MS
            pos = c.end
            i += 1
        self._walk_i, self._walk_pos, self._walk_clock, self._walk_now = i, pos, clock, now
        result = pos if result < 0 else result
        self._pp_now = now
        self._pp_pos = result
        return result

    def _earliest_end(self, position: int) -> int:
        """Earliest stream time (ms) at which audio up to ``position`` can have finished playing: from the
        anchor's position at its lower-bound time, at real-time rate, each chunk starting no earlier than it
        was sent (the inverse of :meth:`played_pos`)."""
        pos, clock = self._anchor_pos, self._lb_t
        if position <= pos:
            return clock
        for c in self._chunks:
            if c.end <= pos:
                continue
            start_pos = c.start if c.start > pos else pos
            start_t = c.sent_at if c.sent_at > clock else clock
            if position <= c.end:
                return start_t + (position - start_pos) // BYTES_PER_MS
            clock = start_t + (c.end - start_pos) // BYTES_PER_MS
            pos = c.end
        return clock

    def queued_ms(self, now: int) -> int:
        """Audio sent but (by the estimate) not yet played at ``now``, in ms."""
        return (self.sent_pos - self.played_pos(now)) // BYTES_PER_MS

    def heard(self, now: int) -> Heard | None:
        """What the caller heard of the item being played at ``now``.

        ``Heard(item_id, ms from the item's start)`` for the item holding the first unplayed byte, or None
        when everything sent has played (nothing to cut off).
        """
        pos = self.played_pos(now)
        if pos >= self.sent_pos:
            return None
        for c in self._chunks:
            if c.start <= pos < c.end:
                return Heard(c.item_id, (c.item_offset + pos - c.start) // BYTES_PER_MS)
        return None  # pragma: no cover - chunks always cover [anchor, sent_pos)

    @property
    def pending_marks(self) -> int:
        """Marks sent and not yet echoed."""
        return len(self._pending)

    def _prune(self) -> None:
        chunks = self._chunks
        while chunks and chunks[0].end <= self._anchor_pos:
            chunks.popleft()
