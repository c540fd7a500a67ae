"""Type stub of the compiled audio core ``rtvoice._dsp`` (documented in :mod:`rtvoice.audio`)."""

from typing import Any, TypeAlias, TypeVar, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

from rtvoice.call.ledger import PlaybackLedger

# numpy's stubs declare ``__buffer__`` only for Python >= 3.12, so arrays are listed explicitly
BufferLike: TypeAlias = Buffer | np.ndarray[Any, Any]
_B = TypeVar("_B", bound=BufferLike)

CORE_VERSION: int

@overload
def ulaw_decode(src: BufferLike, out: None = None) -> npt.NDArray[np.int16]: ...
@overload
def ulaw_decode(src: BufferLike, out: _B) -> _B: ...
@overload
def alaw_decode(src: BufferLike, out: None = None) -> npt.NDArray[np.int16]: ...
@overload
def alaw_decode(src: BufferLike, out: _B) -> _B: ...
@overload
def ulaw_encode(samples: BufferLike, out: None = None) -> bytearray: ...
@overload
def ulaw_encode(samples: BufferLike, out: _B) -> _B: ...
@overload
def alaw_encode(samples: BufferLike, out: None = None) -> bytearray: ...
@overload
def alaw_encode(samples: BufferLike, out: _B) -> _B: ...

SIMD_KERNELS: int
SUPPORTED_PAIRS: frozenset[tuple[int, int]]

def design_filter(
    in_rate: int, out_rate: int
) -> tuple[int, int, int, npt.NDArray[np.float32], float]: ...

class Resampler:
    in_rate: int
    out_rate: int
    delay_ms: float
    def __init__(self, in_rate: int, out_rate: int) -> None: ...
    def reset(self) -> None: ...
    @property
    def ratio(self) -> tuple[int, int]: ...
    @property
    def taps(self) -> int: ...
    def output_size(self, n_samples: int) -> int: ...
    @overload
    def process(self, samples: BufferLike, out: None = None) -> npt.NDArray[np.int16]: ...
    @overload
    def process(self, samples: BufferLike, out: _B) -> _B: ...
    @overload
    def process_ulaw(self, codes: BufferLike, out: None = None) -> npt.NDArray[np.int16]: ...
    @overload
    def process_ulaw(self, codes: BufferLike, out: _B) -> _B: ...
    @overload
    def process_to_ulaw(self, samples: BufferLike, out: None = None) -> bytearray: ...
    @overload
    def process_to_ulaw(self, samples: BufferLike, out: _B) -> _B: ...

class PlayoutBuffer:
    frame_size: int
    capacity: int
    overflow: str
    total_written: int
    total_read: int
    total_cleared: int
    total_dropped: int
    underruns: int
    def __init__(
        self, frame_size: int = 160, capacity: int = 480000, overflow: str = "raise", silence: int = 0xFF
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def available(self) -> int: ...
    @property
    def free(self) -> int: ...
    def push(self, data: BufferLike) -> int: ...
    def pop_into(self, out: BufferLike, pad: bool = False) -> int: ...
    def pop(self, pad: bool = False) -> bytearray | None: ...
    def read(self, n: int = -1) -> bytes: ...
    def clear(self) -> int: ...

class InboundJitter:
    window: int
    frame_size: int
    max_fill: int
    frames_in: int
    frames_out: int
    gaps: int
    filled: int
    late: int
    duplicates: int
    resyncs: int
    def __init__(
        self, frame_size: int = 160, window: int = 3, max_fill: int = 250, silence: int = 0xFF
    ) -> None: ...
    @property
    def expected(self) -> int | None: ...
    @property
    def pending(self) -> int: ...
    def push(self, seq: int, payload: bytes) -> list[tuple[int, bytes, bool]]: ...
    def flush(self) -> list[tuple[int, bytes, bool]]: ...

# --- echo cancellation (rtvoice.echo) ---------------------------------------------------------------

EC_NEAR_END: int
EC_REF_ACTIVE: int
EC_LOCKED: int
EC_ABOVE_BG: int
EC_MAX_TAPS: int
EG_UNPRIMED: int
EG_MAX_SKIP: int

class EchoCancellerCore:
    taps: int
    max_delay: int
    nlag: int
    delay: int
    locked: int
    conf: float
    g_max: float
    g_al: float
    noise: float
    frames: int
    ref_frames: int
    dt_frames: int
    since_dt: int
    last_flags: int
    last_ed: float
    last_ee: float
    last_ey: float
    last_ex: float
    bg: float
    ncc_ratio: float
    rise: float
    bg_ratio: float
    bg_cap_ratio: float
    rise_cap: float
    pass_hang: int
    pass_ratio: float
    veto_ratio: float
    ub_ratio: float
    ub_fall: float
    ub_rise: float
    ub_spread: int
    last_pub: float
    #: issue 7 fast paths (whole-frame kernels, exact skips); False runs the per-sample reference code
    fast: bool
    #: adapt the NLMS on digitally silent (all-zero) mic frames too (the behaviour before issue 7)
    adapt_on_silence: int
    def __init__(
        self, taps: int = 48, max_delay_ms: int = 350, mu: float = 0.4, dt_threshold_db: float = 6.0
    ) -> None: ...
    def bounds_copy(self) -> list[float]: ...
    def reset(self) -> None: ...
    @property
    def delay_ms(self) -> float: ...
    @property
    def erle_db(self) -> float: ...
    def taps_copy(self) -> list[float]: ...
    def history_copy(self) -> list[float]: ...
    def skip(self, ref: BufferLike) -> None: ...
    def process(self, mic: BufferLike, ref: BufferLike, out: BufferLike) -> int: ...

class ReferenceRing:
    written: int
    cursor: int
    epoch: int
    def __init__(self) -> None: ...
    def sent(self, payload: BufferLike) -> None: ...
    def played(self, pos: int, epoch: int, out: BufferLike) -> None: ...

class EchoGateCore:
    ring: ReferenceRing
    ec: EchoCancellerCore
    out: bytearray
    recent: int
    echo_only: int
    primed: int
    learn_unprimed: int
    frames: int
    double_talk_frames: int
    last_now: int
    def __init__(self, ring: ReferenceRing, ec: EchoCancellerCore) -> None: ...
    def skip(self, pos: int, epoch: int) -> None: ...
    def frame(self, mic: BufferLike, pos: int, epoch: int, now: int) -> int: ...
    def frame_at(self, mic: BufferLike, ledger: PlaybackLedger, now: int) -> int: ...

# per-frame level for the VAD's level gate (rtvoice.vad)
def frame_abs_sum(pcm: BufferLike, n_samples: int) -> int: ...
