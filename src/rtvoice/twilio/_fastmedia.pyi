"""Type stub of the compiled media kernel ``rtvoice.twilio._fastmedia`` (see its module docstring)."""

from typing_extensions import Buffer

FRAME_BYTES: int
DEFAULT_CAPACITY: int

class MediaKernel:
    """Per-call parser/decoder of plain Twilio ``media`` messages: one C call per frame, no allocation."""

    seq: int
    chunk: int
    timestamp: int
    length: int
    def __init__(self, pcm: Buffer, capacity: int = ...) -> None: ...
    def feed(self, data: Buffer) -> int:
        """Decoded payload length (>= 0) of a plain media message, else -1 (fall back)."""
    @property
    def payload(self) -> memoryview: ...
    @property
    def stream_sid(self) -> str: ...
    @property
    def track(self) -> str: ...
