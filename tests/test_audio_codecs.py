"""G.711 codecs: bit-exact with audioop (the reference, tests only), buffer handling, errors."""

from __future__ import annotations

import array
import audioop

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtvoice.audio import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)

CODECS = [
    pytest.param(ulaw_decode, ulaw_encode, audioop.ulaw2lin, audioop.lin2ulaw, id="ulaw"),
    pytest.param(alaw_decode, alaw_encode, audioop.alaw2lin, audioop.lin2alaw, id="alaw"),
]


@pytest.mark.parametrize(("decode", "encode", "ref_decode", "ref_encode"), CODECS)
def test_decode_all_256_codes_bit_exact(decode, encode, ref_decode, ref_encode) -> None:
    got = decode(ALL_CODES)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.int16
    assert got.tobytes() == ref_decode(ALL_CODES, 2)


@pytest.mark.parametrize(("decode", "encode", "ref_decode", "ref_encode"), CODECS)
def test_encode_all_65536_samples_bit_exact(decode, encode, ref_decode, ref_encode) -> None:
    got = encode(ALL_SAMPLES)
    assert isinstance(got, bytearray)
    assert bytes(got) == ref_encode(ALL_SAMPLES.tobytes(), 2)


@pytest.mark.parametrize(("decode", "encode", "ref_decode", "ref_encode"), CODECS)
def test_code_round_trip_is_identity_where_g711_says_so(decode, encode, ref_decode, ref_encode) -> None:
    # decode(encode(decode(c))) == decode(c) for every code (μ-law has two zeros: 0x7F and 0xFF)
    once = decode(ALL_CODES)
    assert np.array_equal(decode(encode(once)), once)


@pytest.mark.parametrize(
    "make",
    [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8), lambda b: memoryview(b"xx" + b)[2:]],
    ids=["bytes", "bytearray", "memoryview", "numpy", "unaligned-slice"],
)
def test_any_buffer_in(make) -> None:
    codes = bytes(range(0, 256, 3))
    ref = audioop.ulaw2lin(codes, 2)
    assert ulaw_decode(make(codes)).tobytes() == ref
    assert bytes(ulaw_encode(make(ref))) == audioop.lin2ulaw(ref, 2)
    assert bytes(alaw_encode(make(ref))) == audioop.lin2alaw(ref, 2)


def test_int16_inputs_of_other_kinds() -> None:
    samples = array.array("h", [0, 1, -1, 32767, -32768, 1000])
    assert bytes(ulaw_encode(samples)) == audioop.lin2ulaw(samples.tobytes(), 2)
    assert bytes(ulaw_encode(np.array(samples, dtype=np.int16))) == audioop.lin2ulaw(samples.tobytes(), 2)


def test_out_buffers_are_written_and_returned() -> None:
    codes = bytes(range(160))
    out16 = np.zeros(160, np.int16)
    assert ulaw_decode(codes, out16) is out16
    assert out16.tobytes() == audioop.ulaw2lin(codes, 2)
    ba = bytearray(320)
    view = memoryview(ba).cast("h")
    assert ulaw_decode(codes, view) is view
    assert bytes(ba) == audioop.ulaw2lin(codes, 2)
    enc = bytearray(160)
    assert ulaw_encode(out16, enc) is enc
    assert bytes(enc) == audioop.lin2ulaw(out16.tobytes(), 2)
    enc_np = np.zeros(160, np.uint8)
    assert alaw_encode(out16, enc_np) is enc_np


def test_empty() -> None:
    assert len(ulaw_decode(b"")) == 0
    assert ulaw_encode(b"") == bytearray()


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_odd_byte_length_is_a_value_error(encode) -> None:
    with pytest.raises(ValueError, match="odd byte length"):
        encode(b"\x00\x01\x02")


def test_wrong_out_size_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="exactly 320 bytes"):
        ulaw_decode(bytes(160), np.zeros(159, np.int16))
    with pytest.raises(ValueError, match="exactly 160 bytes"):
        ulaw_encode(bytes(320), bytearray(161))


def test_read_only_out_and_non_buffers_are_value_errors() -> None:
    with pytest.raises(ValueError, match="writable"):
        ulaw_decode(bytes(2), bytes(4))
    with pytest.raises(ValueError, match="buffer"):
        ulaw_decode("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer"):
        ulaw_encode(np.zeros((4, 4), np.int16)[:, 1])  # not contiguous


@given(st.binary(max_size=2000))
def test_hypothesis_ulaw_matches_audioop(data: bytes) -> None:
    assert ulaw_decode(data).tobytes() == audioop.ulaw2lin(data, 2)
    assert alaw_decode(data).tobytes() == audioop.alaw2lin(data, 2)
    even = data[: len(data) & ~1]
    assert bytes(ulaw_encode(even)) == audioop.lin2ulaw(even, 2)
    assert bytes(alaw_encode(even)) == audioop.lin2alaw(even, 2)
