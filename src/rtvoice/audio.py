"""rtvoice's audio core: the typed, documented façade over the compiled :mod:`rtvoice._dsp`.

Codecs (G.711, bit-exact with ITU-T G.711 as CPython's ``audioop`` implements it):

* ``ulaw_decode(src, out=None)`` / ``alaw_decode(src, out=None)``: codes (1 byte each) -> int16 samples.
  Without ``out`` a new ``numpy.ndarray`` of dtype int16 is returned; with ``out`` (any writable
  C-contiguous buffer of exactly ``2 * len(src)`` bytes: a numpy int16 array, a bytearray, a
  ``memoryview``) the samples are written into it and ``out`` itself is returned.
* ``ulaw_encode(samples, out=None)`` / ``alaw_encode(samples, out=None)``: int16 samples (native byte
  order; any buffer: bytes, bytearray, memoryview, numpy int16 array) -> codes. Without ``out`` a new
  ``bytearray`` is returned; with ``out`` (writable, exactly ``len(samples_bytes) // 2`` bytes) the codes
  are written into it and ``out`` is returned.

Every function accepts any C-contiguous buffer-protocol object and raises ``ValueError`` for an odd byte
length of int16 input, a wrong ``out`` size, a read-only ``out`` or a non-contiguous buffer. The inner
loops are C table lookups that run without the GIL.

Resampling: :class:`Resampler` ``(in_rate, out_rate)`` is a stateful streaming polyphase FIR (Kaiser-windowed
sinc, designed with numpy at construction and cached per rate pair; float32 AVX2/FMA or SSE2 kernels chosen
at import). Any pair of 8000/16000/24000 Hz, and 11025/22050/32000/44100/48000 -> 8000/16000
(``SUPPORTED_PAIRS``).

* ``process(samples, out=None)``: int16 in (any buffer), int16 out (a new numpy array, or written into
  ``out`` which must hold exactly ``output_size(len(samples))`` samples; ``out`` is returned). Output sample
  n depends only on inputs up to floor(n * in_rate / out_rate) (the filter is causal), so after T input
  samples exactly ceil(T * out_rate / in_rate) samples have come out: every chunk whose length is a multiple
  of the ratio's denominator gives exactly ``len * out_rate / in_rate`` samples (160 -> 480 for 8k -> 24k),
  and 22050 Hz streams stay within one sample of the exact running total, one output chunk per input chunk.
  Any chunking gives output identical, sample for sample, to one-shot processing.
* ``process_ulaw(codes, out=None)``: μ-law in, int16 out, decoded and resampled in one pass (Twilio ->
  16/24 kHz vendors); ``process_to_ulaw(samples, out=None)``: int16 in, μ-law out (a bytearray or ``out``),
  resampled and encoded in one pass (vendor -> Twilio). Identical results to the two-step chains, one call
  fewer.
* One instance is one stream and is not thread-safe; chunks of 2048+ samples run without the GIL.
* ``reset()`` forgets the history; ``delay_ms`` is the group delay (1.67 ms for 8k <-> 24k);
  ``output_size(n)``; ``ratio`` (L, M); ``taps`` per output.

Kernels: float32 multiply-add loops over raw buffers, outputs in vector lanes; AVX2+FMA on CPUs that have it
(chosen at import, ``rtvoice._dsp.SIMD_KERNELS``), else 4-lane SSE2/NEON. ``python -m rtvoice bench`` measures
them; the issue's per-frame ratio budgets hold with the AVX2 kernels (the 4-lane build reaches about 3x
audioop on the decode+upsample chain, not 4x).

Quality (tests/test_audio_resampler.py measures it): passband within 0.001 dB up to 0.425 * the lower rate
(3.4 kHz at 8 kHz), stopband <= -81 dB from 0.625 * the lower rate (5 kHz) and <= -94 dB from 7/4 of it.

Outbound playout: :class:`PlayoutBuffer` ``(frame_size=160, capacity=480000, overflow="raise", silence=0xFF)``
is a byte ring for μ-law: ``push(data)`` takes bursts of any size, ``pop(pad=False)`` / ``pop_into(out,
pad=False)`` hand out fixed frames. Positions: ``total_written`` (bytes ever pushed) and ``total_read`` (audio
bytes ever handed out, padding excluded) are running byte counts, so "position P" maps to a chunk of a
response by recording ``total_written`` before each push; always ``total_written == total_read + available +
total_cleared + total_dropped``. ``clear()`` discards everything buffered and returns how many bytes that was.
Overflow policy (capacity default 60 s of 8 kHz μ-law): ``"raise"`` (default) raises ``OverflowError`` and
writes nothing, so the buffer stays consistent and the caller decides; ``"drop_oldest"`` discards the oldest
unplayed bytes (counted in ``total_dropped``; ``push`` returns how many). With ``pad=True`` an underrun still
yields a full frame, completed with μ-law silence (0xFF) and counted in ``underruns``.

Inbound ordering: :class:`InboundJitter` ``(frame_size=160, window=3, max_fill=250)``: ``push(seq, payload)``
with Twilio's ``media.chunk`` number (or ``timestamp // 20``) returns the frames released, in order, as
``(seq, payload, filled)``; a hole is filled with one frame of μ-law silence per missing number
(``filled=True``) so VAD and vendors stay time-aligned. Latency: in-order frames pass straight through (0 ms
added); only frames after a hole wait, until a frame ``window`` numbers past the hole arrives (at most
``window`` * 20 ms = 60 ms), then the hole is declared lost. Late (already passed) frames and duplicates are
dropped and counted (``late``, ``duplicates``); ``gaps`` counts holes, ``filled`` the silence frames inserted;
a jump of more than ``max_fill`` frames is skipped without filling (``resyncs``). ``flush()`` releases
everything held at the end of a stream.

WAV helpers (stdlib :mod:`wave` plus a small RIFF reader for G.711 WAVs, which ``wave`` rejects):
:func:`read_wav`, :func:`write_wav`, and :func:`to_ulaw_8k` for turning any supported rate into the
8 kHz μ-law that Twilio carries.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from rtvoice._dsp import SUPPORTED_PAIRS as SUPPORTED_PAIRS
from rtvoice._dsp import InboundJitter as InboundJitter
from rtvoice._dsp import PlayoutBuffer as PlayoutBuffer
from rtvoice._dsp import Resampler as Resampler
from rtvoice._dsp import alaw_decode as alaw_decode
from rtvoice._dsp import alaw_encode as alaw_encode
from rtvoice._dsp import ulaw_decode as ulaw_decode
from rtvoice._dsp import ulaw_encode as ulaw_encode

if TYPE_CHECKING:
    from rtvoice._dsp import BufferLike as Buffer

__all__ = [
    "SUPPORTED_PAIRS",
    "ULAW_SILENCE",
    "InboundJitter",
    "PlayoutBuffer",
    "Resampler",
    "alaw_decode",
    "alaw_encode",
    "read_wav",
    "to_ulaw_8k",
    "ulaw_decode",
    "ulaw_encode",
    "write_ulaw_wav",
    "write_wav",
]

#: The μ-law code for digital silence (decodes to 0).
ULAW_SILENCE = 0xFF

# WAVE format tags (RIFF fmt chunk)
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_ALAW = 0x0006
_WAVE_FORMAT_MULAW = 0x0007
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class WavError(ValueError):
    """A WAV file rtvoice cannot read (not RIFF/WAVE, unsupported encoding or sample width)."""


def _pcm_to_int16(frames: bytes, width: int) -> npt.NDArray[np.int16]:
    """Interleaved little-endian PCM of ``width`` bytes per sample -> int16 (keeps the 16 high bits)."""
    if width == 1:  # 8-bit WAV is unsigned
        return ((np.frombuffer(frames, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(frames, "<i2").astype(np.int16)
    if width == 3:
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
        high: npt.NDArray[np.int16] = (raw[:, 1].astype(np.uint16) | (raw[:, 2].astype(np.uint16) << 8)).view(
            np.int16
        )
        return high
    if width == 4:
        wide: npt.NDArray[np.int32] = np.frombuffer(frames, "<i4") >> 16
        return wide.astype(np.int16)
    raise WavError(f"unsupported PCM sample width: {width} bytes")


def _mix_to_mono(samples: npt.NDArray[np.int16], channels: int) -> npt.NDArray[np.int16]:
    if channels == 1:
        return samples
    usable = len(samples) - len(samples) % channels
    mixed: npt.NDArray[np.int32] = samples[:usable].reshape(-1, channels).astype(np.int32).sum(axis=1)
    return (mixed // channels).astype(np.int16)


def _read_riff(data: bytes) -> tuple[int, int, int, int, bytes]:
    """(format tag, channels, rate, bits per sample, data bytes) from a RIFF/WAVE file image."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise WavError("truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # first 2 bytes of the SubFormat GUID
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            payload = body
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None or payload is None:
        raise WavError("missing fmt or data chunk")
    return (*fmt, payload)


def read_wav(path: str | Path) -> tuple[npt.NDArray[np.int16], int]:
    """Read a WAV file as mono int16 samples: ``(samples, sample_rate)``.

    Accepts 8-, 16-, 24- and 32-bit integer PCM (multi-channel is averaged to mono; 24/32-bit keep their 16
    high bits) and G.711 μ-law/A-law WAVs (as Twilio recordings and telephony tools write them). Raises
    :class:`WavError` (a ``ValueError``) for anything else.
    """
    data = Path(path).read_bytes()
    tag, channels, rate, bits, payload = _read_riff(data)
    if channels < 1 or rate < 1:
        raise WavError(f"invalid WAV header: {channels} channels at {rate} Hz")
    if tag == _WAVE_FORMAT_PCM:
        try:
            with wave.open(str(path), "rb") as w:  # stdlib parser for plain PCM
                frames = w.readframes(w.getnframes())
                width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        except wave.Error:  # WAVE_FORMAT_EXTENSIBLE PCM (Python < 3.12's wave rejects it): use the chunk
            frames, width = payload, (bits + 7) // 8
        usable = len(frames) - len(frames) % (width * channels)
        return _mix_to_mono(_pcm_to_int16(frames[:usable], width), channels), rate
    if tag in (_WAVE_FORMAT_MULAW, _WAVE_FORMAT_ALAW):
        if bits != 8:
            raise WavError(f"G.711 WAV with {bits} bits per sample")
        decode = ulaw_decode if tag == _WAVE_FORMAT_MULAW else alaw_decode
        return _mix_to_mono(decode(payload), channels), rate
    raise WavError(f"unsupported WAV encoding (format tag 0x{tag:04x}); use integer PCM or G.711")


def _bytes_view(obj: Buffer) -> memoryview:
    if isinstance(obj, np.ndarray):
        return memoryview(np.ascontiguousarray(obj).reshape(-1).view(np.uint8).tobytes())
    return memoryview(obj).cast("B")


def write_wav(path: str | Path, samples: Buffer, rate: int) -> None:
    """Write mono int16 ``samples`` (any buffer of native int16) as a 16-bit PCM WAV at ``rate`` Hz."""
    pcm = np.frombuffer(_bytes_view(samples), dtype=np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def write_ulaw_wav(path: str | Path, codes: Buffer, rate: int = 8000) -> None:
    """Write μ-law ``codes`` as a mono G.711 μ-law WAV (format tag 7), e.g. what a caller heard."""
    payload = bytes(_bytes_view(codes))
    fmt = struct.pack("<HHIIHHH", _WAVE_FORMAT_MULAW, 1, rate, rate, 1, 8, 0)
    fact = struct.pack("<I", len(payload))
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", 4)
        + fact
        + b"data"
        + struct.pack("<I", len(payload))
        + payload
        + (b"\0" if len(payload) & 1 else b"")
    )
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def to_ulaw_8k(samples: Buffer, rate: int) -> bytes:
    """Convert mono int16 ``samples`` at ``rate`` Hz to 8 kHz μ-law bytes (what Twilio carries).

    Goes through :class:`Resampler` (one shot; the result is delayed by its ``delay_ms``, about 1.5 ms, and
    the same length as ``len(samples) * 8000 / rate`` rounded up). Raises ``ValueError`` for a rate the
    resampler does not support.
    """
    if rate == 8000:
        return bytes(ulaw_encode(samples))
    return bytes(ulaw_encode(Resampler(rate, 8000).process(samples)))
