"""Pacer: first chunk at once, 40 ms chunks, at most max_queued_ms at Twilio, exact item boundaries."""

from __future__ import annotations

import base64
import json

from rtvoice.call.ledger import PlaybackLedger
from rtvoice.call.pacing import CHUNK_BYTES, Pacer
from rtvoice.twilio.media import MessageWriter


def make(max_ms: int = 200) -> tuple[Pacer, PlaybackLedger, list[str]]:
    ledger = PlaybackLedger(60)
    return Pacer(ledger, MessageWriter("MZ1"), max_ms), ledger, []


def media(out: list[str]) -> list[bytes]:
    msgs = [json.loads(m) for m in out]
    return [base64.b64decode(m["media"]["payload"]) for m in msgs if m["event"] == "media"]


def test_sends_up_to_the_limit_at_once_then_one_chunk_per_40_ms() -> None:
    pacer, ledger, out = make(200)
    pacer.push("a", bytes(range(256)) * 20)  # 640 ms
    pacer.done("a")
    pacer.pump(0, out.append)
    assert sum(map(len, media(out))) == 200 * 8
    assert all(len(p) == CHUNK_BYTES for p in media(out))
    out.clear()
    pacer.pump(20, out.append)
    assert media(out) == []  # only 20 ms of room: wait for a whole chunk
    pacer.pump(40, out.append)
    assert [len(p) for p in media(out)] == [CHUNK_BYTES]
    assert ledger.queued_ms(40) == 200


def test_audio_goes_out_unchanged_and_in_item_order() -> None:
    pacer, _ledger, out = make(10_000)
    a, b = bytes([1]) * 500, bytes([2]) * 300
    pacer.push("a", a[:123])
    pacer.push("b", b)  # b starts after a, even though a is still streaming
    pacer.pump(0, out.append)
    pacer.push("a", a[123:])
    pacer.done("a")
    pacer.done("b")
    pacer.pump(0, out.append)
    assert b"".join(media(out)) == a + b
    marks = [json.loads(m)["mark"]["name"] for m in out if json.loads(m)["event"] == "mark"]
    assert len(marks) == len(set(marks)) >= 2
    assert not pacer.has_audio


def test_clear_drops_unsent_audio() -> None:
    pacer, _, out = make(200)
    pacer.push("a", b"\x01" * 8000)
    pacer.pump(0, out.append)
    assert pacer.clear() == 8000 - 1600
    assert not pacer.has_audio
