"""rtvoice.server.clientframes: the client text frame equals websockets' Frame.serialize under the same key."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from rtvoice.server import clientframes
from rtvoice.server.clientframes import MaskPool, text_frame

_sizes = st.one_of(
    st.integers(0, 300), st.sampled_from([124, 125, 126, 127, 65534, 65535, 65536, 65537, 70000])
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_same_bytes_as_library(data: st.DataObject) -> None:
    n = data.draw(_sizes)
    if n <= 300:
        payload = data.draw(st.binary(min_size=n, max_size=n))
    else:
        payload = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    key = data.draw(st.binary(min_size=4, max_size=4))
    with mock.patch("secrets.token_bytes", return_value=key):
        ref = Frame(Opcode.TEXT, payload).serialize(mask=True)
    assert text_frame(payload, key) == ref


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=20))
def test_server_parses_pooled_frames(texts: list[str]) -> None:
    """Frames keyed from the pool, concatenated, are read back by the library as the same messages."""
    proto = ServerProtocol(state=State.OPEN)  # skip the handshake: frames only
    stream = b"".join(text_frame(t.encode()) for t in texts)
    proto.receive_data(stream)
    got = [f.data.decode() for f in proto.events_received()]
    assert got == texts


def test_pool_keys_fresh_and_refilled() -> None:
    pool = MaskPool(block=16)
    draws = [b"A" * 16, b"B" * 16]
    with mock.patch.object(clientframes.os, "urandom", side_effect=draws) as ur:
        keys = [pool.take() for _ in range(8)]
    assert keys == [b"AAAA"] * 4 + [b"BBBB"] * 4
    assert ur.call_count == 2  # one draw per 4 keys, never reused
    with pytest.raises(ValueError):
        MaskPool(block=6)


def test_default_pool_keys_differ() -> None:
    keys = {clientframes.MASKS.take() for _ in range(2000)}
    assert len(keys) > 1990  # 32-bit random keys: collisions are rare, none would be drawn twice by design
