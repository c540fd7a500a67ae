"""PlayoutBuffer and InboundJitter: unit tests and hypothesis models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtvoice.audio import InboundJitter, PlayoutBuffer

# ---- PlayoutBuffer ----------------------------------------------------------------------------------------


def test_bursts_in_fixed_frames_out() -> None:
    p = PlayoutBuffer(frame_size=160)
    data = bytes(range(256)) * 2  # 512 bytes
    p.push(data[:100])
    assert p.pop() is None  # not a full frame yet, nothing consumed
    p.push(data[100:])
    assert p.pop() == data[:160]
    assert p.pop() == data[160:320]
    assert p.pop() == data[320:480]
    assert p.pop() is None
    assert p.available == 32
    assert (p.total_written, p.total_read) == (512, 480)


def test_pad_with_ulaw_silence_on_underrun() -> None:
    p = PlayoutBuffer(frame_size=160)
    p.push(b"\x01" * 50)
    out = bytearray(160)
    assert p.pop_into(out, pad=True) == 50
    assert out == b"\x01" * 50 + b"\xff" * 110
    assert p.underruns == 1
    assert p.pop_into(out) == 0
    assert p.pop(pad=True) == b"\xff" * 160
    assert p.total_read == 50  # padding is not audio


def test_clear_returns_discarded_bytes_and_positions_stay_consistent() -> None:
    p = PlayoutBuffer(frame_size=160)
    p.push(bytes(1000))
    p.pop()
    assert p.clear() == 840
    assert p.clear() == 0
    assert p.available == 0
    assert p.total_written == p.total_read + p.total_cleared == 1000


def test_overflow_raise_writes_nothing() -> None:
    p = PlayoutBuffer(frame_size=4, capacity=10)
    p.push(b"abcdefgh")
    with pytest.raises(OverflowError, match="playout buffer full"):
        p.push(b"xyz")
    assert p.read() == b"abcdefgh"


def test_overflow_drop_oldest() -> None:
    p = PlayoutBuffer(frame_size=4, capacity=10, overflow="drop_oldest")
    p.push(b"abcdefgh")
    assert p.push(b"xyz") == 1
    assert p.read() == b"bcdefghxyz"
    assert p.push(b"0123456789ABCDEF") == 6  # longer than the ring: only the newest 10 bytes survive
    assert p.read() == b"6789ABCDEF"
    assert p.total_written == p.total_read + p.total_dropped + p.available


def test_pop_into_any_writable_buffer_and_errors() -> None:
    p = PlayoutBuffer(frame_size=8)
    p.push(b"12345678")
    arr = np.zeros(8, np.uint8)
    assert p.pop_into(arr) == 8
    assert arr.tobytes() == b"12345678"
    with pytest.raises(ValueError, match="exactly 8 bytes"):
        p.pop_into(bytearray(7))
    with pytest.raises(ValueError, match="writable"):
        p.pop_into(bytes(8))
    with pytest.raises(ValueError):
        PlayoutBuffer(overflow="block")
    with pytest.raises(ValueError):
        PlayoutBuffer(frame_size=160, capacity=100)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.binary(max_size=700)),
            st.tuples(st.just("pop"), st.booleans()),
            st.tuples(st.just("clear"), st.none()),
        ),
        max_size=60,
    ),
    st.sampled_from(["raise", "drop_oldest"]),
)
def test_playout_matches_a_bytes_model(ops, overflow) -> None:
    cap, frame = 1000, 160
    p = PlayoutBuffer(frame_size=frame, capacity=cap, overflow=overflow)
    model = bytearray()
    for op, arg in ops:
        if op == "push":
            if len(model) + len(arg) > cap and overflow == "raise":
                with pytest.raises(OverflowError):
                    p.push(arg)
                continue
            p.push(arg)
            model += arg
            del model[: max(0, len(model) - cap)]
        elif op == "pop":
            got = p.pop(pad=arg)
            if len(model) >= frame:
                assert got == model[:frame]
                del model[:frame]
            elif arg:
                assert got == model + b"\xff" * (frame - len(model))
                model.clear()
            else:
                assert got is None
        else:
            assert p.clear() == len(model)
            model.clear()
        assert p.available == len(model)
        assert p.total_written == p.total_read + p.available + p.total_cleared + p.total_dropped
    assert p.read() == bytes(model)


# ---- InboundJitter ----------------------------------------------------------------------------------------


def frames(n: int) -> dict[int, bytes]:
    return {i: bytes([i % 255]) * 160 for i in range(1, n + 1)}


def test_in_order_frames_pass_straight_through() -> None:
    j = InboundJitter()
    for seq, payload in frames(50).items():
        assert j.push(seq, payload) == [(seq, payload, False)]
    assert (j.gaps, j.late, j.duplicates, j.pending) == (0, 0, 0, 0)


def test_reordered_frame_within_window_is_put_back_in_place() -> None:
    j, f = InboundJitter(window=3), frames(6)
    assert j.push(1, f[1]) == [(1, f[1], False)]
    assert j.push(3, f[3]) == []
    assert j.push(2, f[2]) == [(2, f[2], False), (3, f[3], False)]
    assert j.gaps == 0


def test_lost_frame_is_filled_with_silence_after_the_window() -> None:
    j, f = InboundJitter(window=3), frames(6)
    j.push(1, f[1])
    assert j.push(3, f[3]) == []
    assert j.push(4, f[4]) == []
    out = j.push(5, f[5])  # 5 - 2 >= window: frame 2 is lost
    assert [(s, filled) for s, _, filled in out] == [(2, True), (3, False), (4, False), (5, False)]
    assert out[0][1] == b"\xff" * 160
    assert (j.gaps, j.filled) == (1, 1)
    assert j.push(2, f[2]) == []  # arrives too late
    assert j.late == 1


def test_duplicates_and_flush() -> None:
    j, f = InboundJitter(window=5), frames(6)
    j.push(1, f[1])
    j.push(1, f[1])
    assert j.late == 1  # a duplicate of a released frame is late
    j.push(4, f[4])
    j.push(4, f[4])
    assert j.duplicates == 1
    out = j.flush()
    assert [(s, filled) for s, _, filled in out] == [(2, True), (3, True), (4, False)]


def test_huge_jump_resyncs_without_filling() -> None:
    j = InboundJitter(window=0, max_fill=10)
    j.push(1, b"a")
    out = j.push(1000, b"b")
    assert out == [(1000, b"b", False)]
    assert j.resyncs == 1


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 80),
    st.data(),
    st.integers(0, 4),
)
def test_jitter_output_is_a_gapless_ordered_timeline(n: int, data, window: int) -> None:
    order = list(range(1, n + 1))
    # local reordering (swap neighbours) plus random loss and duplicates
    for i in range(n - 1):
        if data.draw(st.booleans()):
            order[i], order[i + 1] = order[i + 1], order[i]
    keep = [s for s in order if data.draw(st.integers(0, 9)) > 0]
    if keep and data.draw(st.booleans()):
        keep.insert(data.draw(st.integers(0, len(keep))), keep[0])
    j = InboundJitter(window=window)
    released = []
    for s in keep:
        released += j.push(s, bytes([s % 256]) * 160)
    released += j.flush()
    seqs = [s for s, _, _ in released]
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # ordered, no holes, no repeats
    for s, payload, filled in released:
        assert payload == (b"\xff" * 160 if filled else bytes([s % 256]) * 160)
    assert j.frames_out == len(released)
    # the gap counters (push and flush share one gap-fill helper): every counted hole released >= 1 silence
    assert j.filled == sum(1 for _, _, filled in released if filled)
    assert j.gaps <= j.filled and (j.gaps == 0) == (j.filled == 0)
    assert j.resyncs == 0
