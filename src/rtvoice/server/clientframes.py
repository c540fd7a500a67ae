"""Fast path for the frames rtvoice sends *as a WebSocket client* (the vendor links): one masked text frame.

The websockets library serialises every client frame through :class:`~websockets.frames.Frame` and draws each
frame's 4-byte masking key with ``secrets.token_bytes(4)``: one ``getrandom`` syscall per frame. Under load
(an ``input_audio_buffer.append`` every 40 ms per call) that syscall alone was ~7 % of the event loop.

:func:`text_frame` builds the same bytes (FIN, opcode text, no RSV bits, MASK bit, 7/16/64-bit length, key,
payload masked by websockets' C ``apply_mask``) with the key taken from a :class:`MaskPool`: ``os.urandom`` in
4 KiB blocks (1,024 keys per syscall). RFC 6455 section 5.3 asks for keys the server cannot predict, "derived
from a strong source of entropy"; every key is still fresh kernel randomness, used once, only drawn ahead.

Only for connections without extensions (the vendor links negotiate none: ``compression=None``); the caller
checks that (see ``rtvoice.agents.openai_realtime.RealtimeLink._send_now``). Property-tested against
``Frame.serialize`` in ``tests/test_fastpath_clientframes.py`` (same bytes under the same key, parsed back by
the library).
"""

from __future__ import annotations

import os
import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C speedups ship with the wheels
    from websockets.utils import apply_mask

__all__ = ["MASKS", "MaskPool", "server_text_frame", "text_frame", "text_head"]

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
#: FIN + text opcode and the 7-bit length byte for payloads under 126 bytes, unmasked (server) and masked (client)
_HEAD7 = tuple(bytes((0x81, n)) for n in range(126))
_HEAD7_MASKED = tuple(bytes((0x81, 0x80 | n)) for n in range(126))


def text_head(n: int, masked: bool) -> bytes:
    """The header of an unfragmented text frame with an ``n``-byte payload (RFC 6455 section 5.2), without the
    masking key."""
    if n < 126:
        return _HEAD7_MASKED[n] if masked else _HEAD7[n]
    bit = 0x80 if masked else 0
    if n < 65536:
        return _H16.pack(0x81, bit | 126, n)
    return _H64.pack(0x81, bit | 127, n)


def server_text_frame(data: bytes) -> bytes:
    """One unfragmented, unmasked text frame carrying ``data`` (UTF-8): the bytes of websockets'
    ``Frame(OP_TEXT, data).serialize(mask=False)`` without extensions (server frames are never masked)."""
    return text_head(len(data), False) + data


class MaskPool:
    """Masking keys drawn from ``os.urandom`` in blocks of ``block`` bytes; each key is used once."""

    __slots__ = ("_block", "_buf", "_pos")

    def __init__(self, block: int = 4096) -> None:
        if block < 4 or block % 4:
            raise ValueError("block must be a positive multiple of 4")
        self._block = block
        self._buf = b""
        self._pos = block  # empty: the first take() draws

    def take(self) -> bytes:
        """The next unused 4-byte key."""
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = os.urandom(self._block)
            pos = 0
        self._pos = pos + 4
        return self._buf[pos : pos + 4]


#: The process-wide pool (one event loop thread uses it; ``take`` is not shared across threads in rtvoice).
MASKS = MaskPool()


def text_frame(payload: bytes, mask: bytes | None = None) -> bytes:
    """One unfragmented, masked text frame carrying ``payload`` (UTF-8 already), keyed from :data:`MASKS`."""
    if mask is None:
        mask = MASKS.take()
    return b"".join((text_head(len(payload), True), mask, apply_mask(payload, mask)))
