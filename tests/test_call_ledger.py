"""PlaybackLedger: marks -> acknowledged position, interpolation bounded by what was sent, clear epochs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtvoice.agents.base import Heard
from rtvoice.call.ledger import PlaybackLedger


def send(ledger: PlaybackLedger, item: str, offset_ms: int, ms: int, now: int) -> None:
    ledger.sent(item, offset_ms * 8, ms * 8, now)


def test_mark_names_are_short_and_unique() -> None:
    ledger = PlaybackLedger(60)
    names = []
    for i in range(50):
        send(ledger, "a", i * 20, 20, i * 20)
        names.append(ledger.mark(i * 20))
    assert len(set(names)) == 50
    assert all(len(n) <= 4 for n in names)


def test_mark_policy_first_chunk_interval_and_item_end() -> None:
    ledger = PlaybackLedger(60)
    assert not ledger.mark_due()
    send(ledger, "a", 0, 20, 0)
    assert ledger.mark_due()  # first audio of an item
    ledger.mark(0)
    send(ledger, "a", 20, 40, 0)
    assert not ledger.mark_due()
    send(ledger, "a", 60, 20, 0)
    assert ledger.mark_due()  # 60 ms since the last mark
    ledger.mark(0)
    send(ledger, "a", 80, 10, 0)
    assert ledger.mark_due(item_done=True)


def test_interpolation_from_acked_marks_is_bounded_by_what_was_sent() -> None:
    ledger = PlaybackLedger(60)
    send(ledger, "a", 0, 200, 1000)
    name = ledger.mark(1000)
    assert ledger.played_pos(1000) == 0
    assert ledger.played_pos(1100) == 100 * 8  # real time from the send
    assert ledger.played_pos(5000) == 200 * 8  # never past what was sent
    assert ledger.heard(1100) == Heard("a", 100)
    assert ledger.queued_ms(1150) == 50
    # Twilio says the 200 ms finished only at 1230 (network/buffering): the anchor moves.
    ack = ledger.acked(name, 1230)
    assert ack is not None and ack.mark.item_end_ms == 200
    assert ledger.heard(1230) is None  # all played: nothing to cut


def test_no_interpolation_through_a_gap_in_which_nothing_was_queued() -> None:
    ledger = PlaybackLedger(60)
    send(ledger, "a", 0, 100, 0)
    ledger.acked(ledger.mark(0), 100)
    send(ledger, "b", 0, 100, 3000)  # the next item starts 2.9 s later
    assert ledger.played_pos(3000) == 100 * 8  # not 100 ms + 2.9 s
    assert ledger.heard(3040) == Heard("b", 40)


def test_item_boundaries_map_to_item_offsets() -> None:
    ledger = PlaybackLedger(60)
    send(ledger, "a", 0, 60, 0)
    send(ledger, "b", 0, 100, 0)
    assert ledger.heard(30) == Heard("a", 30)
    assert ledger.heard(60) == Heard("b", 0)  # "a" fully played: "b" is the one being cut
    assert ledger.heard(130) == Heard("b", 70)


def test_marks_returned_by_a_clear_are_discarded_not_played() -> None:
    ledger = PlaybackLedger(60)
    send(ledger, "a", 0, 100, 0)
    m1 = ledger.mark(0)
    send(ledger, "a", 100, 100, 0)
    m2 = ledger.mark(0)
    assert ledger.acked(m1, 100) is not None
    heard = ledger.clear(150)
    assert heard == Heard("a", 150)
    assert ledger.acked(m2, 151) is None  # came back because of the clear
    assert ledger.marks_discarded == 1
    assert ledger.played_pos(500) == ledger.sent_pos  # nothing counted as still queued
    assert ledger.acked("m999", 600) is None and ledger.marks_unknown == 1
    # A later item starts fresh after the clear.
    send(ledger, "b", 0, 40, 700)
    assert ledger.heard(720) == Heard("b", 20)


def test_acking_a_later_mark_implies_the_earlier_ones() -> None:
    ledger = PlaybackLedger(60)
    send(ledger, "a", 0, 60, 0)
    ledger.mark(0)
    send(ledger, "a", 60, 60, 0)
    m2 = ledger.mark(0)
    ledger.acked(m2, 120)
    assert ledger.pending_marks == 0


def test_mark_interval_bounds() -> None:
    with pytest.raises(ValueError):
        PlaybackLedger(10)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 80), st.integers(0, 60)), max_size=60))
def test_resumed_walk_equals_a_walk_from_the_anchor(ops: list[tuple[int, int, int]]) -> None:
    ledger = PlaybackLedger(60)
    now = 0
    offset = 0
    names: list[str] = []
    for kind, size, dt in ops:
        now += dt
        if kind == 0:
            ledger.sent("x", offset, size * 8, now)
            offset += size * 8
        elif kind == 1 and ledger.mark_due():
            names.append(ledger.mark(now))
        elif kind == 2 and names:
            ledger.acked(names.pop(0), now)
        elif kind == 3 and dt % 7 == 0:
            ledger.clear(now)
        got = ledger.played_pos(now)  # the memo when nothing changed since the last call at this ``now``
        ledger._walk_now = -1  # forget the resumable state: walk from the anchor
        ledger._pp_now = -1  # and the memo
        assert got == ledger.played_pos(now)
        assert 0 <= got <= ledger.sent_pos


def _steady_item(ledger: PlaybackLedger, seconds: int = 3) -> list[tuple[str, int]]:
    """One long item sent in 20 ms chunks 200 ms ahead of playback (which starts at 0), a mark every 60 ms;
    returns (mark name, stream time its audio finishes playing)."""
    marks = []
    for i in range(seconds * 50):
        send(ledger, "a", i * 20, 20, max(i * 20 - 200, 0))
        if ledger.mark_due():
            marks.append((ledger.mark(max(i * 20 - 200, 0)), (i + 1) * 20))
    return marks


def test_an_echo_stamped_by_a_stale_clock_does_not_overstate_what_was_heard() -> None:
    # The call stamps an echo with its inbound-frame clock; when inbound frames were lost, that clock lags
    # by 20 ms per lost frame. Anchoring there would overstate what was heard until the next echo (the
    # truncation error the quality benchmark saw under frame loss): the ledger knows the audio cannot have
    # finished playing before the walk from the previous echo allows, and re-stamps it.
    ledger = PlaybackLedger(60)
    marks = _steady_item(ledger)
    for name, played_at in marks[:10]:
        assert ledger.acked(name, played_at - 10) is not None  # on time, within the +-10 ms stamp error
    name, played_at = marks[10]
    ack = ledger.acked(name, played_at - 10 - 40)  # two inbound frames lost: the clock lags by 40 ms
    # re-stamped at the earliest time the audio can have played: the on-time stamps were 10 ms early, but
    # the first audio cannot have played before it was sent, and the lower bound carries that forward
    assert ack is not None and ack.acked_at == played_at
    assert ledger.marks_restamped == 1
    heard = ledger.heard(played_at + 30)
    assert heard is not None and heard.audio_end_ms == played_at + 30


def test_on_time_stamps_are_kept_as_they_are() -> None:
    # stamps jittering within the slack are not nudged: clamping each to the earliest feasible time would
    # ratchet the anchor towards the late end of the stamps' error
    ledger = PlaybackLedger(60)
    marks = _steady_item(ledger)
    for k, (name, played_at) in enumerate(marks[:20]):
        stamp = played_at + (5 if k % 2 else -5)
        ack = ledger.acked(name, stamp)
        assert ack is not None and ack.acked_at == stamp
    assert ledger.marks_restamped == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-10, 10), st.integers(0, 3)), min_size=5, max_size=40))
def test_heard_error_stays_within_a_frame_whatever_frames_were_lost(
    stamps: list[tuple[int, int]],
) -> None:
    # honest stamp error e in [-10, 10] ms, plus a lag of 20 ms per lost inbound frame (up to 3 in a row):
    # after any echo the heard estimate is off by at most 20 ms, the truncation target (anchoring on
    # the stale stamps, it would be off by up to 70 ms)
    ledger = PlaybackLedger(60)
    marks = _steady_item(ledger)
    for (name, played_at), (err, lost) in zip(marks, stamps, strict=False):
        ledger.acked(name, played_at + err - 20 * lost)
        heard = ledger.heard(played_at + 5)
        assert heard is not None and abs(heard.audio_end_ms - (played_at + 5)) <= 20
