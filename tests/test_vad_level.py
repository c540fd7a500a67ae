"""The VAD's level gate: ``_dsp.frame_abs_sum`` against numpy (the previous implementation) on any samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtvoice._dsp import frame_abs_sum


@given(st.lists(st.integers(-32768, 32767), min_size=0, max_size=400), st.data())
def test_frame_abs_sum_matches_numpy(samples: list[int], data: st.DataObject) -> None:
    arr = np.array(samples, dtype=np.int16)
    n = data.draw(st.integers(0, len(samples)))
    want = int(np.abs(arr[:n].astype(np.int64)).sum())
    for buf in (arr.tobytes(), bytearray(arr.tobytes()), memoryview(bytearray(arr.tobytes())).cast("h"), arr):
        assert frame_abs_sum(buf, n) == want


def test_frame_abs_sum_rejects_short_buffers_and_non_buffers() -> None:
    with pytest.raises(ValueError):
        frame_abs_sum(b"\x00" * 319, 160)
    with pytest.raises(ValueError):
        frame_abs_sum(b"", -1)
    with pytest.raises(ValueError):
        frame_abs_sum("not a buffer", 1)  # type: ignore[arg-type]
