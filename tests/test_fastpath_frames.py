"""The inbound WebSocket fast path (rtvoice.server.fastframes) against the websockets sans-I/O parser alone.

Any client byte stream, cut into any chunks, must give the same data frames in the same order, the same bytes
to send back (pongs, close frames) and the same failure (close code, exception type) whether the plain frames
are unframed by the fast path (the way ``WebSocketConnection.data_received`` uses it) or by the library.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from rtvoice.server.fastframes import apply_mask, fast_ready, next_data_frame

MAX = 1024
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _proto() -> ServerProtocol:
    return ServerProtocol(state=State.OPEN, max_size=MAX)


def _events(proto: ServerProtocol) -> list[tuple[int, bool, bytes]]:
    return [(int(f.opcode), f.fin, bytes(f.data)) for f in proto.events_received()]  # type: ignore[union-attr]


def _outcome(proto: ServerProtocol, out: list[tuple[int, bool, bytes]]) -> tuple[object, ...]:
    sent = b"".join(proto.data_to_send())
    close = proto.close_sent.code if proto.close_sent is not None else None
    return (out, sent, close, type(proto.parser_exc).__name__, proto.state)


def reference(chunks: list[bytes]) -> tuple[object, ...]:
    proto = _proto()
    out: list[tuple[int, bool, bytes]] = []
    for chunk in chunks:
        proto.receive_data(chunk)
        out += _events(proto)
    return _outcome(proto, out)


def fast(chunks: list[bytes]) -> tuple[object, ...]:
    """The data_received hook: fast frames first, the rest of the chunk to the library."""
    proto = _proto()
    out: list[tuple[int, bool, bytes]] = []
    for chunk in chunks:
        pos = 0
        while fast_ready(proto):
            frame = next_data_frame(chunk, pos, proto.max_message_size)
            if frame is None:
                break
            opcode, payload, pos = frame
            out.append((int(opcode), True, payload))
        if pos == len(chunk) and pos:
            continue
        proto.receive_data(chunk[pos:])
        out += _events(proto)
    return _outcome(proto, out)


def _frame(opcode: int, payload: bytes, key: bytes = b"\0\0\0\0", *, fin: bool = True, masked: bool = True,
           rsv: int = 0) -> bytes:
    """A client frame, byte by byte (deterministic mask ``key``; all-zero shows the payload as it is)."""
    n = len(payload)
    head1 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((head1, mask_bit | n))
    elif n < 65536:
        head = bytes((head1, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((head1, mask_bit | 127)) + n.to_bytes(8, "big")
    return head + (key + apply_mask(payload, key) if masked else payload)


keys = st.one_of(st.just(b"\0\0\0\0"), st.binary(min_size=4, max_size=4))
data = st.binary(max_size=300)
plain = st.builds(lambda d, k: _frame(0x1, d, k), data, keys)
frame_bytes = st.one_of(
    # the plain case, most of the time
    plain,
    st.builds(lambda d, k: _frame(0x2, d, k), data, keys),
    st.builds(lambda n, k: _frame(0x1, b"a" * n, k), st.integers(MAX - 2, MAX + 2), keys),
    # frames whose payload is itself a frame: a parser that starts reading mid-frame would find it
    st.builds(lambda inner: _frame(0x2, inner), plain),
    # fragments, control frames, unmasked, reserved bits, a huge length, garbage
    st.builds(lambda d, k: _frame(0x1, d, k, fin=False), st.binary(max_size=50), keys),
    st.builds(lambda d, k, fin: _frame(0x0, d, k, fin=fin), st.binary(max_size=50), keys, st.booleans()),
    st.builds(lambda d, k: _frame(0x9, d, k), st.binary(max_size=20), keys),
    st.builds(lambda d, k: _frame(0xA, d, k), st.binary(max_size=20), keys),
    st.builds(lambda k: _frame(0x8, Close(1000, "bye").serialize(), k), keys),
    st.builds(lambda d: _frame(0x1, d, masked=False), st.binary(max_size=40)),
    st.builds(lambda d, r: _frame(0x1, d, rsv=r), st.binary(max_size=40), st.sampled_from([0x40, 0x20])),
    st.builds(lambda o: _frame(o, b"x"), st.sampled_from([0x3, 0x7, 0xB, 0xF])),
    st.just(b"\x81\xff" + (70000).to_bytes(8, "big") + b"\0\0\0\0"),
    st.binary(min_size=1, max_size=12),
)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    frames = draw(st.lists(frame_bytes, max_size=12))
    data = b"".join(frames)
    # cut anywhere, and often at a frame boundary or just past a header (where a nested frame starts)
    starts = [sum(len(f) for f in frames[:i]) for i in range(len(frames))]
    offsets = st.sampled_from([0, 6])
    near = st.builds(lambda s, d: min(len(data), s + d), st.sampled_from(starts or [0]), offsets)
    cuts = sorted(draw(st.lists(st.one_of(st.integers(0, len(data)), near), max_size=6)))
    chunks, last = [], 0
    for c in [*cuts, len(data)]:
        chunks.append(data[last:c])
        last = c
    return [c for c in chunks if c] or [b""]


@SETTINGS
@given(streams())
# the header of a frame read, its payload not yet (the library's buffer is empty, but it is mid-frame)
@example([b"\x00\x81\x00\x00\x00\x00", b"\x81\x80\x00\x00\x00\x00"])
# half a header buffered
@example([b"\x81", b"\x81\x00\x00\x00\x00a"])
# a fragmented message in progress, then a whole text frame in the next chunk: a protocol error
@example([_frame(0x1, b"ab", fin=False), _frame(0x1, b"cd")])
# a close received, then a text frame
@example([_frame(0x8, Close(1000, "").serialize()), _frame(0x1, b"late")])
def test_fast_path_matches_the_library(chunks: list[bytes]) -> None:
    assert fast(chunks) == reference(chunks)


@SETTINGS
@given(st.lists(st.binary(max_size=400), min_size=1, max_size=20))
def test_plain_frames_all_take_the_fast_path(payloads: list[bytes]) -> None:
    frames = [
        _frame(0x1 if i % 2 else 0x2, p, os.urandom(4)) for i, p in enumerate(payloads)
    ]
    stream = b"".join(frames)
    proto = _proto()
    pos, got = 0, []
    while (frame := next_data_frame(stream, pos, MAX)) is not None:
        assert fast_ready(proto)
        _, payload, pos = frame
        got.append(payload)
    assert got == [p for p in payloads if len(p) <= MAX][: len(got)]
    assert pos == len(stream) or len(payloads[len(got)]) > MAX


def test_twilio_sized_frame_with_random_mask() -> None:
    body = b'{"event":"media","sequenceNumber":"2"}' + os.urandom(200)
    raw = _frame(0x1, body, os.urandom(4))
    assert next_data_frame(raw, 0, MAX) == (Opcode.TEXT, body, len(raw))
    assert next_data_frame(raw[:-1], 0, MAX) is None  # incomplete: left to the library
