"""The pacer's fast paths (idle memo, inlined zero-copy take, template writer) against the reference pacer and
writer as they were (``outbound_reference``): for any sequence of pushes, item ends, pumps (often twice at the
same stream time), mark echoes (played, unknown, after clears), clears and limit changes, both emit the same
messages, send the same audio to the taps, return the same counts and leave the same ledger."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from outbound_reference import ReferencePacer, ReferenceWriter
from rtvoice.call.ledger import PlaybackLedger
from rtvoice.call.pacing import Pacer
from rtvoice.twilio.media import MessageWriter

_ITEMS = ["a", "b", "c"]

_op = st.one_of(
    st.tuples(st.just("push"), st.sampled_from(_ITEMS), st.integers(0, 900)),
    st.tuples(st.just("push160"), st.sampled_from(_ITEMS), st.integers(1, 4)),
    st.tuples(st.just("done"), st.sampled_from(_ITEMS), st.just(0)),
    st.tuples(st.just("pump"), st.just(""), st.integers(0, 45)),
    st.tuples(st.just("pump2"), st.just(""), st.integers(0, 45)),
    st.tuples(st.just("ack"), st.just(""), st.integers(0, 40)),
    st.tuples(st.just("ack_unknown"), st.just(""), st.just(0)),
    st.tuples(st.just("clear"), st.just(""), st.just(0)),
    st.tuples(st.just("ledger_clear"), st.just(""), st.just(0)),
    st.tuples(st.just("limit"), st.just(""), st.sampled_from([40, 60, 200, 400])),
)


class World:
    def __init__(self, fast: bool, max_ms: int, mark_ms: int) -> None:
        self.ledger = PlaybackLedger(mark_ms)
        sid = "MZ0123456789abcdef"
        self.pacer: Pacer | ReferencePacer
        if fast:
            self.pacer = Pacer(self.ledger, MessageWriter(sid), max_ms)
        else:
            self.pacer = ReferencePacer(self.ledger, ReferenceWriter(sid), max_ms)  # type: ignore[arg-type]
        self.out: list[str] = []
        self.audio: list[bytes] = []
        self.first: list[tuple[str, int]] = []
        self.pacer.on_audio = lambda p: self.audio.append(bytes(p))
        self.pacer.on_first_send = lambda i, t: self.first.append((i, t))
        self.marks: list[str] = []
        self.results: list[object] = []

    def pump(self, now: int) -> None:
        before = len(self.out)
        self.results.append(self.pacer.pump(now, self.out.append))
        for m in self.out[before:]:
            msg = json.loads(m)
            if msg["event"] == "mark":
                self.marks.append(msg["mark"]["name"])


def _snapshot(w: World, now: int) -> tuple[object, ...]:
    led = w.ledger
    return (
        w.out, w.audio, w.first, w.results, w.pacer.has_audio, w.pacer.buffered_bytes, w.pacer.bytes_sent,
        w.pacer.messages_sent, led.sent_pos, led.played_pos(now), led.heard(now), led.pending_marks,
        led.marks_played, led.marks_discarded, led.marks_unknown,
    )


@settings(max_examples=400, deadline=None)
@given(
    ops=st.lists(_op, max_size=80),
    max_ms=st.sampled_from([40, 80, 200]),
    mark_ms=st.sampled_from([20, 60, 100]),
)
def test_fast_pacer_equals_reference(ops: list[tuple[str, str, int]], max_ms: int, mark_ms: int) -> None:
    fast, ref = World(True, max_ms, mark_ms), World(False, max_ms, mark_ms)
    now = 0
    for counter, (kind, item, arg) in enumerate(ops):
        for w in (fast, ref):
            if kind == "push":
                w.pacer.push(item, bytes((counter + i) % 256 for i in range(arg)))
            elif kind == "push160":
                for k in range(arg):
                    w.pacer.push(item, bytes([(counter + k) % 256]) * 160)
            elif kind == "done":
                w.pacer.done(item)
            elif kind == "pump":
                w.pump(now + arg)
            elif kind == "pump2":  # the call's two pumps in one tick: after the agent's audio, then the frame
                w.pump(now + arg)
                w.pump(now + arg)
            elif kind == "ack":
                if w.marks:
                    w.ledger.acked(w.marks[arg % len(w.marks)], now)
            elif kind == "ack_unknown":
                w.ledger.acked("nope", now)
            elif kind == "clear":
                w.ledger.clear(now)
                w.pacer.clear()
            elif kind == "ledger_clear":  # the ledger alone (no pacer.clear): only its epoch tells
                w.ledger.clear(now)
            elif kind == "limit":
                w.pacer.max_queued = arg * 8
        if kind in ("pump", "pump2"):
            now += arg
        assert _snapshot(fast, now) == _snapshot(ref, now), (kind, item, arg)
    # drain: everything left goes out the same way
    for _ in range(400):
        now += 20
        fast.pump(now)
        ref.pump(now)
    assert _snapshot(fast, now) == _snapshot(ref, now)


def test_the_second_pump_of_a_tick_is_skipped_and_an_echo_wakes_it() -> None:
    ledger = PlaybackLedger(60)
    pacer = Pacer(ledger, MessageWriter("MZ1"), 200)
    out: list[str] = []
    pacer.push("a", b"\x01" * 8000)
    assert pacer.pump(0, out.append) == 1600
    calls = []
    real = ledger.played_pos

    def counted(now: int) -> int:
        calls.append(now)
        return real(now)

    ledger.played_pos = counted  # type: ignore[method-assign]
    assert pacer.pump(20, out.append) == 0  # 20 ms of room: waits for a whole chunk
    assert pacer.pump(20, out.append) == 0
    assert calls == [20]  # the repeat at the same time and state did not walk the ledger again
    marks = [json.loads(m)["mark"]["name"] for m in out if '"mark"' in m]
    ledger.acked(marks[0], 20)  # an echo changes what has played: the next pump decides afresh
    pacer.pump(20, out.append)
    assert calls == [20, 20]


def test_a_ledger_clear_alone_wakes_an_idle_pump() -> None:
    for pacer_cls, writer_cls in ((Pacer, MessageWriter), (ReferencePacer, ReferenceWriter)):
        ledger = PlaybackLedger(60)
        pacer = pacer_cls(ledger, writer_cls("MZ1"), 200)  # type: ignore[arg-type]
        out: list[str] = []
        pacer.push("a", b"\x01" * 8000)
        assert pacer.pump(0, out.append) == 1600
        assert pacer.pump(20, out.append) == 0
        ledger.clear(20)  # Twilio's queue is empty now (same queue here, same time)
        assert pacer.pump(20, out.append) == 1600, pacer_cls
