"""Pieces shared by the vendor agents (OpenAI Realtime, ElevenLabs): all sans-I/O, all tested without sockets.

* :func:`ws_base_url`: ``http``->``ws``, ``https``->``wss`` for a configured REST base URL.
* :class:`ToUlaw8k` / :class:`FromPcm8k`: streaming format adapters between the agent boundary (μ-law 8 kHz) and
  a vendor's audio format, through :mod:`rtvoice.audio` (imported lazily: the μ-law pass-through paths need
  none).
* :class:`Alignment`: ElevenLabs character timings for one context, so that the text the caller heard can be
cut.
* :func:`clamp_audio_end_ms`: what a truncate may ask for (never more than the item produced).
* :class:`WordChunker`: streams LLM text deltas to a TTS engine on word boundaries.
* :class:`Usage`: vendor usage totals for one call (read by the call records).
* :func:`cancel_all`: an agent's ``close()`` step that cancels its background tasks and waits for them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

#: ElevenLabs / internal format names -> sample rate (int16 little-endian mono PCM unless ``ulaw``).
PCM_RATES: Mapping[str, int] = {
    "pcm_8000": 8000,
    "pcm_16000": 16000,
    "pcm_22050": 22050,
    "pcm_24000": 24000,
}


def ws_base_url(base_url: str) -> str:
    """Turn a REST base URL into its WebSocket twin: ``http``->``ws``, ``https``->``wss`` (others
    unchanged).
    """
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


class _Resampler(Protocol):
    def process(self, samples: Any, out: Any = None) -> Any: ...


def _resampler(in_rate: int, out_rate: int) -> _Resampler:
    from rtvoice import audio

    r: _Resampler = audio.Resampler(in_rate, out_rate)
    return r


def _ratio_denominator(in_rate: int, out_rate: int) -> int:
    """Input samples per whole block of the rate ratio (the resampler wants chunks that are multiples of
    it).
    """
    from math import gcd

    if in_rate == 22050:
        return 1  # the audio core keeps the running total exact for 22050 Hz in any chunking
    return in_rate // gcd(in_rate, out_rate)


class ToUlaw8k:
    """Vendor audio (``ulaw_8000`` or ``pcm_<rate>``) -> μ-law 8 kHz, streaming.

    μ-law passes through untouched. PCM is resampled to 8 kHz and encoded; a chunk may end mid-sample or
    mid-block (base64 chunks are cut anywhere), so the remainder is carried to the next chunk.
    """

    __slots__ = ("_block", "_carry", "_encode", "_rs", "fmt", "rate")

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        if fmt == "ulaw_8000":
            self.rate = 8000
            self._block = 1
            self._rs: _Resampler | None = None
        elif fmt in PCM_RATES:
            from rtvoice.audio import ulaw_encode

            self.rate = PCM_RATES[fmt]
            self._encode = ulaw_encode
            self._rs = None if self.rate == 8000 else _resampler(self.rate, 8000)
            self._block = 2 * _ratio_denominator(self.rate, 8000)
        else:
            raise ValueError(f"unsupported vendor audio format {fmt!r}")
        self._carry = b""

    @property
    def passthrough(self) -> bool:
        return self.fmt == "ulaw_8000"

    def source_ms(self, nbytes: int) -> float:
        """Duration of ``nbytes`` of vendor audio, in ms."""
        bytes_per_ms = 8 if self.fmt == "ulaw_8000" else self.rate * 2 / 1000
        return nbytes / bytes_per_ms

    def convert(self, data: bytes) -> bytes:
        """Convert one vendor chunk; may return ``b""`` when the chunk is shorter than one block."""
        if self._rs is None and self.fmt == "ulaw_8000":
            return data
        if self._carry:
            data = self._carry + data
        usable = len(data) - len(data) % self._block
        self._carry = data[usable:]
        if not usable:
            return b""
        chunk = memoryview(data)[:usable]
        pcm8 = chunk if self._rs is None else self._rs.process(chunk)
        return bytes(self._encode(pcm8))

    def reset(self) -> None:
        """Forget carried bytes (a new item starts, or playback was flushed)."""
        self._carry = b""


class FromPcm8k:
    """Caller audio (int16 PCM at 8 kHz, as the call hands it over) -> int16 PCM at ``rate``, streaming."""

    __slots__ = ("_out", "_rs", "_view", "rate")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._rs = None if rate == 8000 else _resampler(8000, rate)
        self._out = bytearray()
        self._view = memoryview(self._out)

    def convert(self, pcm: memoryview | bytes) -> memoryview:
        """One frame in; its int16 samples at ``rate`` out, as a byte view.

        The view is of a buffer reused on the next call (no allocation per frame): copy it before then.
        """
        rs = self._rs
        if rs is None:
            return memoryview(pcm).cast("B")
        # the resampler takes any buffer (the call's int16 view as is); one output buffer and one view of it
        # are kept for the frame size in use, so a 20 ms frame costs no allocation here
        need = (pcm.nbytes if type(pcm) is memoryview else len(pcm)) * self.rate // 8000
        if len(self._out) != need:
            self._out = bytearray(need)
            self._view = memoryview(self._out)
        rs.process(pcm, self._out)
        return self._view


def clamp_audio_end_ms(heard_ms: int, produced_ms: float) -> int:
    """``audio_end_ms`` for a truncate: never negative, never beyond what the vendor produced for the item.

    OpenAI rejects an ``audio_end_ms`` larger than the item's audio, and a caller cannot have heard audio that
    was never produced (the ledger may round up to a whole mark interval).
    """
    return max(0, min(int(heard_ms), int(produced_ms)))


@dataclass(slots=True)
class Alignment:
    """Character start times of one ElevenLabs context, on the context's own audio timeline.

    ElevenLabs gives each audio chunk an alignment whose times are relative to that chunk, so each chunk's times
    are shifted by the duration of the audio produced before it.
    """

    chars: list[str] = field(default_factory=list)
    starts_ms: list[float] = field(default_factory=list)
    audio_ms: float = 0.0

    def add_chunk(self, alignment: Mapping[str, Any] | None, chunk_ms: float) -> None:
        """Record one audio chunk of ``chunk_ms`` and its (chunk-relative) alignment, if any."""
        if alignment:
            chars = alignment.get("chars") or []
            starts = alignment.get("charStartTimesMs") or alignment.get("char_start_times_ms") or []
            base = self.audio_ms
            for ch, st in zip(chars, starts, strict=False):
                self.chars.append(str(ch))
                self.starts_ms.append(base + float(st))
        self.audio_ms += chunk_ms

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def heard_text(self, heard_ms: float) -> str:
        """The text whose characters had started playing by ``heard_ms``, cut back to a whole word.

        A word the caller heard only the start of is dropped: the bot's memory should hold what was said, and a
        half word ("appoint") would confuse the model more than its absence.
        """
        n = 0
        for st in self.starts_ms:
            if st >= heard_ms:
                break
            n += 1
        if n >= len(self.chars):
            return self.text.strip()
        text = "".join(self.chars[:n])
        if n and not self.chars[n].isspace() and not text[-1:].isspace():
            cut = max(text.rfind(" "), text.rfind("\n"))
            text = text[: cut + 1] if cut >= 0 else ""
        return text.strip()


class WordChunker:
    """Feed LLM text deltas; get back text to send to a TTS engine, cut after whitespace.

    ElevenLabs wants each text message to end with a space and treats the boundary as a word break, so a token
    split mid-word ("Hel" + "lo") must not be sent as two words. :meth:`finish` returns whatever is left.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, delta: str) -> str:
        text = self._pending + delta
        cut = max(text.rfind(" "), text.rfind("\n"))
        if cut < 0:
            self._pending = text
            return ""
        self._pending = text[cut + 1 :]
        return text[: cut + 1]

    def finish(self) -> str:
        text, self._pending = self._pending, ""
        return text + " " if text else ""


@dataclass(slots=True)
class Usage:
    """Vendor usage for one call: OpenAI ``response.done`` token counts and ElevenLabs characters."""

    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    tts_characters: int = 0

    def add_openai(self, usage: Mapping[str, Any] | None) -> None:
        """Add one ``response.done`` ``usage`` object (missing fields count as 0)."""
        self.responses += 1
        if not usage:
            return
        self.input_tokens += int(usage.get("input_tokens") or 0)
        self.output_tokens += int(usage.get("output_tokens") or 0)
        ind = usage.get("input_token_details") or {}
        outd = usage.get("output_token_details") or {}
        self.input_text_tokens += int(ind.get("text_tokens") or 0)
        self.input_audio_tokens += int(ind.get("audio_tokens") or 0)
        self.cached_tokens += int(ind.get("cached_tokens") or 0)
        self.output_text_tokens += int(outd.get("text_tokens") or 0)
        self.output_audio_tokens += int(outd.get("audio_tokens") or 0)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def b64decode(data: str) -> bytes:
    """Base64 from a vendor (standard alphabet); a malformed string raises ``binascii.Error`` (a
    ValueError).
    """
    return base64.b64decode(data, validate=False)


async def close_quietly(conn: Any, timeout_s: float = 2.0) -> None:
    """Close a vendor connection (anything with an async ``close()``; None: nothing to do), waiting at most
    ``timeout_s``; any error is swallowed: the agent is closing, or never got to use it."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), timeout_s)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished (its cancellation or error is swallowed: the agent is
    closing)."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
