"""Fast path for Twilio's per-frame ``media`` message; :func:`rtvoice.twilio.media.parse` is the fallback.

Fifty times a second per call Twilio sends the same shape of message; only the counters, the stream SID and
the payload change. :func:`parse_media_fast` recognises exactly that shape with one C-level
``str.split('"')`` and one list comparison against the layout's fixed tokens, and decodes the base64 with
``binascii`` in strict mode, skipping ``json.loads`` and the dict walk. It accepts the two key orders seen
on the wire (Twilio's: ``event, sequenceNumber, media, streamSid``; and ``event, sequenceNumber, streamSid,
media`` as the simulated Twilio and several client libraries write it) and only plain values: SIDs and
tracks of ASCII letters and digits; counters of 1-18 ASCII digits; standard base64. Anything else
(whitespace, escapes, extra or missing keys, another order, bad padding, another event) returns None, and
:func:`parse` hands the text to the strict full parser, which either accepts it or says what is wrong. So
the fast path can only ever return what the full parser returns for the same text (property-tested in
``tests/test_fastpath_media.py``).

On the server the step before that is compiled: :func:`media_kernel` gives a call its
:class:`~rtvoice.twilio._fastmedia.MediaKernel`, which takes the message's raw UTF-8 bytes and, in one C call
with no per-frame allocation, recognises the same layouts with the same value rules, base64-decodes the
payload into its own buffer and μ-law-decodes a 20 ms frame into the call's PCM buffer (no str, no
:class:`Media`); whatever it does not take comes here as text (property-tested against
:func:`parse_media_fast` in ``tests/test_fastpath_media_kernel.py``).
"""

from __future__ import annotations

import binascii

from rtvoice.server.fastframes import ENABLED
from rtvoice.twilio._fastmedia import MediaKernel
from rtvoice.twilio.media import Event, Media
from rtvoice.twilio.media import parse as parse_full

__all__ = ["MediaKernel", "media_kernel", "parse", "parse_media_fast"]

#: ``text.split('"')`` of each accepted layout: the fixed tokens, with None where a value goes. Twilio's
#: order (values: seq 7, track 13, chunk 17, timestamp 21, payload 25, sid 29), then the simulator's (seq 7,
#: sid 11, track 17, chunk 21, timestamp 25, payload 29).
_TWILIO = [
    "{", "event", ":", "media", ",", "sequenceNumber", ":", None, ",", "media", ":{", "track", ":", None, ",",
    "chunk", ":", None, ",", "timestamp", ":", None, ",", "payload", ":", None, "},", "streamSid", ":", None,
    "}",
]
_SIM = [
    "{", "event", ":", "media", ",", "sequenceNumber", ":", None, ",", "streamSid", ":", None, ",", "media",
    ":{", "track", ":", None, ",", "chunk", ":", None, ",", "timestamp", ":", None, ",", "payload", ":", None,
    "}}",
]
_N_TOKENS = 31
_MAX_DIGITS = 18


def parse_media_fast(text: str) -> Media | None:
    """The :class:`Media` event of a well-formed, plainly written ``media`` message, else None (use the full
    parser). Never raises."""
    # One C-level split on '"' gives the layout's tokens; the values are lifted out and the rest must equal
    # the layout exactly. Any escape (\" inside a value) or whitespace changes the tokens and falls back.
    parts = text.split('"')
    if len(parts) != _N_TOKENS:
        return None
    if parts[9] == "media":
        seq, track, chunk, ts, payload, sid = parts[7], parts[13], parts[17], parts[21], parts[25], parts[29]
        parts[13] = None  # type: ignore[call-overload]
        layout = _TWILIO
    else:
        seq, sid, track, chunk, ts, payload = parts[7], parts[11], parts[17], parts[21], parts[25], parts[29]
        parts[11] = None  # type: ignore[call-overload]
        layout = _SIM
    parts[7] = parts[17] = parts[21] = parts[25] = parts[29] = None  # type: ignore[call-overload]
    if parts != layout:
        return None
    # counters: 1-18 ASCII digits (isdigit alone accepts '²'); SID and track: non-empty, ASCII letters and
    # digits only. Concatenations let one C call check all of them.
    digits = seq + chunk + ts
    if not (
        0 < len(seq) <= _MAX_DIGITS
        and 0 < len(chunk) <= _MAX_DIGITS
        and 0 < len(ts) <= _MAX_DIGITS
        and digits.isascii()
        and digits.isdigit()
        and sid
        and track
    ):
        return None
    names = sid + track
    if not (names.isascii() and names.isalnum()):
        return None
    try:
        # strict mode refuses anything outside the alphabet (a backslash included) and bad padding
        audio = binascii.a2b_base64(payload, strict_mode=True) if payload else b""
    except (binascii.Error, ValueError):
        return None  # the full parser reports it as bad_base64
    return Media(sid, int(seq), track, int(chunk), int(ts), audio)


def parse(text: str | bytes) -> Event:
    """Drop-in for :func:`rtvoice.twilio.media.parse`: the fast path for plain ``media`` messages, the full
    strict parser for everything else (same results, same :class:`ProtocolViolation` s)."""
    if ENABLED and type(text) is str and text.startswith('{"event":"media"'):
        event = parse_media_fast(text)
        if event is not None:
            return event
    return parse_full(text)


def media_kernel(pcm: bytearray) -> MediaKernel | None:
    """A compiled media kernel decoding 20 ms frames into ``pcm`` (the call's 320-byte frame buffer), or None
    when the fast paths are off (``RTVOICE_FASTPATH=0``: every message then takes the text path)."""
    return MediaKernel(pcm) if ENABLED else None
