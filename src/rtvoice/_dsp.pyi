"""Type stub of the compiled audio core ``rtvoice._dsp`` (documented in :mod:`rtvoice.audio`)."""

from typing import TypeVar, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

_B = TypeVar("_B", bound=Buffer)

CORE_VERSION: int

@overload
def ulaw_decode(src: Buffer, out: None = None) -> npt.NDArray[np.int16]: ...
@overload
def ulaw_decode(src: Buffer, out: _B) -> _B: ...
@overload
def alaw_decode(src: Buffer, out: None = None) -> npt.NDArray[np.int16]: ...
@overload
def alaw_decode(src: Buffer, out: _B) -> _B: ...
@overload
def ulaw_encode(samples: Buffer, out: None = None) -> bytearray: ...
@overload
def ulaw_encode(samples: Buffer, out: _B) -> _B: ...
@overload
def alaw_encode(samples: Buffer, out: None = None) -> bytearray: ...
@overload
def alaw_encode(samples: Buffer, out: _B) -> _B: ...
