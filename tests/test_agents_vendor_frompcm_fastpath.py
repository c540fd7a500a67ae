"""FromPcm8k (caller audio 8 kHz -> the vendor's rate) without the per-frame cast and view: for any sequence of
frames (mostly 20 ms, some other even lengths; int16 views as the call hands them over, or bytes), the same
samples as the previous implementation (``outbound_reference.ReferenceFromPcm8k``), frame for frame."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from outbound_reference import ReferenceFromPcm8k
from rtvoice.agents.vendor_common import FromPcm8k

_frame = st.one_of(
    st.binary(min_size=320, max_size=320),
    st.binary(min_size=320, max_size=320),
    st.integers(0, 320).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n)),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([8000, 16000, 24000]), st.lists(st.tuples(_frame, st.booleans()), max_size=30))
def test_same_samples_as_reference(rate: int, frames: list[tuple[bytes, bool]]) -> None:
    fast, ref = FromPcm8k(rate), ReferenceFromPcm8k(rate)
    for data, as_view in frames:
        pcm: memoryview | bytes = memoryview(bytearray(data)).cast("h") if as_view else data
        got = fast.convert(pcm)
        want = ref.convert(pcm)
        assert got.format == want.format == "B"
        assert bytes(got) == bytes(want)
        assert len(got) == len(data) * rate // 8000
