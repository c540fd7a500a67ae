"""Fast path for the common inbound WebSocket frame: a whole, unfragmented, masked text or binary frame.

A Twilio media stream is one small masked text frame every 20 ms per call. The websockets library's sans-I/O
parser handles every case with generator-based coroutines and a :class:`~websockets.frames.Frame` per
message, which costs several microseconds per frame in Python. :func:`next_data_frame` reads the plain
case straight from the bytes the socket delivered (header, 4-byte mask, payload unmasked by websockets' own C
``apply_mask``) and leaves everything else to the library: control frames (ping, pong, close), fragments,
reserved bits, unmasked client frames, 64-bit lengths, anything over the size limit, a frame not yet
complete. The caller feeds the bytes from the first frame not taken to ``ServerProtocol.receive_data`` as
before, so the library sees an intact frame stream from a frame boundary on.

:func:`fast_ready` says when bypassing the library is safe: the connection is OPEN, its parser sits at a
frame boundary with nothing buffered (its generator is parked at the loop head, checked through the
standard ``gi_yieldfrom`` chain), no fragmented message is in progress and it has not failed. Both are
property-tested against the library alone in ``tests/test_fastpath_frames.py`` (same messages, same close).
"""

from __future__ import annotations

import os
from typing import Any

from websockets.frames import Opcode
from websockets.protocol import Protocol, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C speedups ship with the wheels
    from websockets.utils import apply_mask

__all__ = ["ENABLED", "fast_ready", "next_data_frame"]

#: ``RTVOICE_FASTPATH=0`` turns the fast paths off (A/B runs of ``python -m rtvoice bench load``).
ENABLED = os.environ.get("RTVOICE_FASTPATH", "1") != "0"

_OPEN = State.OPEN
#: FIN set, RSV bits clear, opcode text (0x1) or binary (0x2).
_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
TEXT = Opcode.TEXT
BINARY = Opcode.BINARY


def _at_frame_boundary(proto: Protocol) -> bool:
    """The library's parser is waiting for the first byte of a frame: its generator chain ends in the
    reader's ``at_eof`` (the loop head), not in ``read_exact`` (mid-frame, even with an empty buffer: the
    header may have been read and the payload not yet)."""
    gen: Any = proto.parser
    while True:
        inner = gen.gi_yieldfrom
        if inner is None:
            return False
        if getattr(inner, "__name__", "") == "at_eof":
            return inner.gi_yieldfrom is None
        gen = inner


def fast_ready(proto: Protocol) -> bool:
    """True when the next bytes may be unframed here instead of by ``proto`` (see the module docstring)."""
    return (
        ENABLED
        and proto.state is _OPEN
        and proto.current_size is None
        and not proto.reader.buffer
        and proto.parser_exc is None
        and _at_frame_boundary(proto)
    )


def next_data_frame(data: bytes, pos: int, max_size: int | None) -> tuple[Opcode, bytes, int] | None:
    """The whole data frame starting at ``data[pos]`` as ``(opcode, unmasked payload, end offset)``, or None
    when that frame is not the plain case (leave it, and everything after it, to the library)."""
    n = len(data)
    if n - pos < 6:
        return None
    head1 = data[pos]
    if head1 != _FIN_TEXT and head1 != _FIN_BINARY:
        return None
    head2 = data[pos + 1]
    if not head2 & 0x80:  # a client frame must be masked: the library fails the connection
        return None
    length = head2 & 0x7F
    start = pos + 2
    if length == 126:
        if n - pos < 8:
            return None
        length = (data[start] << 8) | data[start + 1]
        start += 2
    elif length == 127:
        return None
    if max_size is not None and length > max_size:
        return None
    end = start + 4 + length
    if end > n:
        return None
    payload = apply_mask(data[start + 4 : end], data[start : start + 4])
    return (TEXT if head1 == _FIN_TEXT else BINARY), payload, end
