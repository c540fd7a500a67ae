"""The compiled media kernel (rtvoice.twilio._fastmedia.MediaKernel) against the Python fast path and the full
parser.

The contract, for any bytes: the kernel either falls back (-1) or returns exactly the event
``fastmedia.parse_media_fast`` gives for the same bytes decoded as UTF-8 (which the full parser also gives),
with the payload in its buffer and, for a 160-byte payload, the PCM buffer holding ``rtvoice.audio``'s μ-law
decode of it. It falls back only where the Python fast path does, or over one of its documented limits
(payload capacity, SID > 64, track > 32, '=' after a whole base64 quad: CPython 3.11's strict mode ignores it,
3.13's refuses it, so the kernel leaves it to the Python path). It never raises, whatever the input, and one
kernel reused across messages gives each message's own result.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtvoice.audio import ulaw_decode
from rtvoice.twilio import fastmedia, media
from rtvoice.twilio._fastmedia import MediaKernel
from rtvoice.twilio.media import Media
from test_fastpath_media import sim_order, twilio_order  # the two key orders, written as on the wire

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAP = 400
SENTINEL = b"\xa5" * 320


def over_limit(event: Media, text: str) -> bool:
    """The kernel's documented extra fallbacks: capacity, SID/track length, padding after a whole quad."""
    parts = text.split('"')
    b64 = parts[25] if parts[9] == "media" else parts[29]
    whole_quad_padded = b64.endswith("=") and len(b64.rstrip("=")) % 4 == 0
    return len(event.payload) > CAP or len(event.stream_sid) > 64 or len(event.track) > 32 or whole_quad_padded


def check(data: bytes, kernel: MediaKernel | None = None, pcm: bytearray | None = None) -> int:
    """Feed ``data`` to a kernel and compare with the Python paths; returns the kernel's result."""
    if kernel is None or pcm is None:
        pcm = bytearray(SENTINEL)
        kernel = MediaKernel(pcm, CAP)
    pcm[:] = SENTINEL
    n = kernel.feed(data)
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    fast = fastmedia.parse_media_fast(text) if text is not None else None
    if n < 0:
        assert n == -1
        # fall back only where the Python fast path does, or over a documented limit
        assert fast is None or (text is not None and over_limit(fast, text)), (data, fast)
        assert bytes(pcm) == SENTINEL  # a fallback leaves the call's PCM alone
        return n
    assert text is not None and fast is not None, data
    got = Media(kernel.stream_sid, kernel.seq, kernel.track, kernel.chunk, kernel.timestamp, bytes(kernel.payload))
    assert got == fast
    assert media.parse(text) == fast
    assert n == kernel.length == len(fast.payload)
    if n == 160:
        assert bytes(pcm) == bytes(ulaw_decode(fast.payload, bytearray(320)))
    else:
        assert bytes(pcm) == SENTINEL  # only a 20 ms frame is decoded to PCM
    return n


# Values: mostly plausible, often hostile (unicode digits, escapes, quotes, backslashes, spaces, long runs).
counter = st.one_of(
    st.integers(0, 10**20).map(str),
    st.sampled_from(
        ["", "0", "007", "²", "١٢", " 4", "+4", "4_0", "-1", "1e3", "1.0", '4\\"', "9" * 18, "9" * 19, "0" * 19]
    ),
    st.text(max_size=6),
)
sid = st.one_of(
    st.just("MZ" + "ab12" * 8),
    st.from_regex(r"[A-Za-z0-9]{1,70}", fullmatch=True),
    st.sampled_from(["", "MZ_1", "MZ 1", "MZ\\u0041", 'MZ\\"x', "MZé", "MZ\\\\", "M" * 64, "M" * 65]),
    st.text(max_size=8),
)
track = st.one_of(
    st.sampled_from(["inbound", "outbound", "", "in bound", "inbound\\n", "ïnbound", "t" * 32, "t" * 33]),
    st.from_regex(r"[A-Za-z0-9]{1,40}", fullmatch=True),
    st.text(max_size=8),
)
good_payload = st.binary(max_size=CAP + 8).map(lambda b: base64.b64encode(b).decode())
frame_payload = st.binary(min_size=160, max_size=160).map(lambda b: base64.b64encode(b).decode())
payload = st.one_of(
    good_payload,
    frame_payload,
    good_payload.map(lambda p: p.rstrip("=")),
    good_payload.map(lambda p: p.replace("/", "\\/")),
    good_payload.map(lambda p: p + "="),
    good_payload.map(lambda p: p + "=="),
    good_payload.map(lambda p: "=" + p),
    good_payload.map(lambda p: p[: len(p) // 2] + "=" + p[len(p) // 2 :]),
    good_payload.map(lambda p: p[:-1]),  # truncated: not a multiple of 4
    good_payload.map(lambda p: p[:-2]),
    good_payload.map(lambda p: " " + p),
    st.sampled_from(["", "=", "==", "A", "AA", "AAA", "AA=", "AA==", "AAA=", "AAA==", "AA===", "AA==AA==",
                     "AAAA====", "A===", "****", "AAAA\\n", "QUJD\\u0044", "AB==", "AAB=", "AP//"]),
    st.text(alphabet="ABCab+/=\\\"0 -_", max_size=12),
)
layout = st.sampled_from([twilio_order, sim_order])


@SETTINGS
@given(layout, counter, sid, track, counter, counter, payload)
def test_generated_messages_agree(make: object, seq: str, s: str, tr: str, ch: str, ts: str, p: str) -> None:
    check(make(seq, s, tr, ch, ts, p).encode())  # type: ignore[operator]


@SETTINGS
@given(layout, st.integers(0, 10**18 - 1), st.integers(0, 10**18 - 1), st.integers(0, 10**18 - 1),
       st.binary(max_size=CAP))
def test_well_formed_messages_are_taken(make: object, seq: int, ch: int, ts: int, audio: bytes) -> None:
    b64 = base64.b64encode(audio).decode()
    text = make(str(seq), "MZ" + "0f" * 16, "inbound", str(ch), str(ts), b64)  # type: ignore[operator]
    assert check(text.encode()) == len(audio)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame, then byte-level damage: inserted/deleted/replaced bytes (any byte: non-ASCII, invalid
    UTF-8, NUL, quotes, backslashes), truncation, trailing junk."""
    make = draw(layout)
    b64 = base64.b64encode(draw(st.binary(min_size=158, max_size=162))).decode()
    data = make("12", "MZ" + "a1" * 16, "inbound", "3", "40", b64).encode()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "append", "utf8"]))
        b = draw(st.one_of(st.sampled_from(list(b'"\\{}[],: \n=+/0aZ\x00\x7f\x80\xc3\xff')), st.integers(0, 255)))
        if op == "insert":
            data = data[:i] + bytes([b]) + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + 1 :]
        elif op == "replace":
            data = data[:i] + bytes([b]) + data[i + 1 :]
        elif op == "truncate":
            data = data[:i]
        elif op == "utf8":
            data = data[:i] + draw(st.characters()).encode("utf-8", "surrogatepass") + data[i:]
        else:
            data += draw(st.sampled_from([b",", b" ", b',"x":1}', b"}", b"\n", b"\x00"]))
    return data


@SETTINGS
@given(mutated())
def test_mutated_messages_agree(data: bytes) -> None:
    check(data)


@SETTINGS
@given(st.lists(st.sampled_from([*'{}"\\:,', "event", "media", "payload", "streamSid", "track", "chunk",
                                 "timestamp", "sequenceNumber", "AAAA", "1", "=", "inbound"]),
               max_size=60).map(lambda parts: "".join(parts).encode()))
def test_structural_noise_agrees(data: bytes) -> None:
    check(data)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_and_agree(data: bytes) -> None:
    check(data)
    check(b'{"event":"media","sequenceNumber":"' + data)


@SETTINGS
@given(st.lists(st.one_of(mutated(), st.tuples(layout, st.binary(max_size=CAP)).map(
    lambda t: t[0]("1", "MZ1", "inbound", "2", "3", base64.b64encode(t[1]).decode()).encode())), max_size=12))
def test_one_kernel_reused_gives_each_message_its_own_result(msgs: list[bytes]) -> None:
    pcm = bytearray(320)
    kernel = MediaKernel(pcm, CAP)
    for data in msgs:
        check(data, kernel, pcm)


@SETTINGS
@given(layout, st.binary(min_size=160, max_size=160))
def test_frame_pcm_is_bit_exact_and_buffer_inputs_work(make: object, audio: bytes) -> None:
    text = make("1", "MZ1", "inbound", "2", "3", base64.b64encode(audio).decode())  # type: ignore[operator]
    pcm = bytearray(320)
    kernel = MediaKernel(pcm)
    for data in (text.encode(), bytearray(text.encode()), memoryview(text.encode())):
        pcm[:] = bytes(320)
        assert kernel.feed(data) == 160
        assert bytes(kernel.payload) == audio
        assert bytes(pcm) == bytes(ulaw_decode(audio, bytearray(320)))


def test_every_ulaw_code_decodes_like_the_audio_core() -> None:
    pcm = bytearray(320)
    kernel = MediaKernel(pcm)
    codes = bytes(range(256))
    for audio in (codes[:160], codes[96:]):
        text = twilio_order("1", "MZ1", "inbound", "2", "3", base64.b64encode(audio).decode())
        assert kernel.feed(text.encode()) == 160
        assert bytes(pcm) == bytes(ulaw_decode(audio, bytearray(320)))


def test_limits_and_counters() -> None:
    pcm = bytearray(320)
    kernel = MediaKernel(pcm, 160)
    p160 = base64.b64encode(bytes(160)).decode()
    p161 = base64.b64encode(bytes(161)).decode()
    assert kernel.feed(twilio_order("9" * 18, "MZ1", "inbound", "9" * 18, "9" * 18, p160).encode()) == 160
    assert kernel.seq == kernel.chunk == kernel.timestamp == 10**18 - 1
    assert kernel.feed(twilio_order("9" * 19, "MZ1", "inbound", "1", "1", p160).encode()) == -1
    assert kernel.feed(twilio_order("1", "MZ1", "inbound", "1", "1", p161).encode()) == -1  # over capacity
    assert kernel.feed(twilio_order("1", "M" * 64, "t" * 32, "1", "1", "").encode()) == 0
    assert kernel.payload.nbytes == 0 and kernel.stream_sid == "M" * 64 and kernel.track == "t" * 32
    assert kernel.feed(twilio_order("1", "M" * 65, "inbound", "1", "1", "").encode()) == -1
    assert kernel.feed(twilio_order("1", "MZ1", "t" * 33, "1", "1", "").encode()) == -1
    assert kernel.feed(twilio_order("1", "MZ1", "inbound", "1", "1", "AAAA=").encode()) == -1
    with pytest.raises(ValueError):
        MediaKernel(bytearray(318))
    with pytest.raises(ValueError):
        MediaKernel(bytearray(320), 100)
    with pytest.raises((TypeError, BufferError)):
        MediaKernel(bytes(320))  # read-only


def test_pcm_buffer_cannot_be_resized_under_the_kernel() -> None:
    pcm = bytearray(320)
    kernel = MediaKernel(pcm)
    with pytest.raises(BufferError):
        pcm.extend(b"x")
    del kernel
    pcm.extend(b"x")  # released with the kernel
