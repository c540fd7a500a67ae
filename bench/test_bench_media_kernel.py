"""Micro-benchmark: the compiled media kernel against the Python fast path and ``json.loads`` + base64, per
inbound frame, measured interleaved in the same run (min over rounds), so the ratios hold on a busy machine.

What each case does with one WebSocket text payload (bytes), i.e. what the server did per frame before and
after the kernel:

- ``kernel``: ``MediaKernel.feed`` (parse, strict base64, μ-law decode into the call's PCM buffer) and the
  reads ``MediaStreamHandler.on_text_bytes`` makes (chunk, timestamp, payload view);
- ``python``: ``bytes.decode`` (the WebSocket layer), ``fastmedia.parse`` (split, checks, ``a2b_base64``,
  the ``Media`` event) and ``ulaw_decode`` into the same buffer (the call), i.e. the path before the kernel;
- ``json+b64``: ``json.loads`` + ``a2b_base64`` of the payload only (no checks, no event, no μ-law decode).

Budgets (generous): the kernel costs at most 0.5x the Python path and at most 0.5x ``json.loads`` + base64.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable

from interleaved import best_per_item, media_messages
from rtvoice.audio import ulaw_decode
from rtvoice.twilio import fastmedia
from rtvoice.twilio._fastmedia import MediaKernel

N = 2000
ROUNDS = 25
#: A shared CI machine can be busy for a whole measurement: re-measure (a fresh set of rounds) before failing.
ATTEMPTS = 3


def test_media_kernel_vs_python_fast_path_and_json() -> None:
    msgs = [m.encode() for m in media_messages(N)]
    pcm = bytearray(320)
    kernel = MediaKernel(pcm)
    parse = fastmedia.parse
    loads = json.loads
    a2b = binascii.a2b_base64

    def kernel_case(data: bytes) -> object:
        if kernel.feed(data) < 0:
            raise AssertionError("fell back")
        return (kernel.chunk, kernel.timestamp, kernel.payload)

    def python_case(data: bytes) -> object:
        event = parse(data.decode())
        ulaw_decode(event.payload, pcm)  # type: ignore[union-attr]
        return event

    def json_case(data: bytes) -> object:
        return a2b(loads(data)["media"]["payload"])

    # same results first: the kernel does what the Python path does
    for m in msgs[:50]:
        kernel_case(m)
        got_pcm = bytes(pcm)
        event = python_case(m)
        assert (kernel.chunk, kernel.timestamp, bytes(kernel.payload)) == (
            event.chunk, event.timestamp, event.payload  # type: ignore[attr-defined]
        )
        assert got_pcm == bytes(pcm)

    cases: dict[str, Callable[[bytes], object]] = {
        "kernel": kernel_case,
        "python": python_case,
        "json+b64": json_case,
    }
    best = best_per_item(
        cases,
        msgs,
        rounds=ROUNDS,
        attempts=ATTEMPTS,
        good=lambda b: b["kernel"] <= 0.5 * b["python"] and b["kernel"] <= 0.5 * b["json+b64"],
    )
    us = {k: v * 1e6 for k, v in best.items()}
    print(
        f"\nper media frame: kernel {us['kernel']:.3f} us, python fast path {us['python']:.3f} us, "
        f"json.loads+b64 {us['json+b64']:.3f} us; python/kernel = {best['python'] / best['kernel']:.1f}x, "
        f"json+b64/kernel = {best['json+b64'] / best['kernel']:.1f}x"
    )
    assert best["kernel"] <= 0.5 * best["python"], us
    assert best["kernel"] <= 0.5 * best["json+b64"], us
