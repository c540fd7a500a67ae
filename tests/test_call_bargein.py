"""BargeInController: only while the bot is audible, once per utterance, the echo gate seam."""

from __future__ import annotations

from rtvoice.call.bargein import BargeInController, Source


def test_fires_only_while_bot_audio_is_active() -> None:
    c = BargeInController()
    assert c.speech_start(1000, 1060, bot_active=False) is None
    d = c.speech_start(2000, 2060, bot_active=True)
    assert d is not None and d.source == "vad" and d.reaction_ms == 60


def test_once_per_utterance() -> None:
    c = BargeInController()
    assert c.speech_start(0, 60, True) is not None
    assert c.speech_start(100, 160, True) is None  # same utterance (no end yet)
    c.speech_end()
    assert c.speech_start(900, 960, True) is not None
    assert len(c.history) == 2


def test_vendor_hints() -> None:
    c = BargeInController()
    assert c.vendor_speech_started(500, bot_active=False) is None
    d = c.vendor_speech_started(500, bot_active=True, onset_ms=420)
    assert d is not None and d.source == "vendor_speech" and d.reaction_ms == 80
    assert c.vendor_interrupt(700, bot_active=False) is None
    i = c.vendor_interrupt(700, bot_active=True)
    assert i is not None and i.source == "vendor_interrupt"


def test_gate_can_refuse_an_onset_as_echo() -> None:
    class EchoGate:
        def __init__(self) -> None:
            self.asked: list[tuple[Source, int, int]] = []

        def allow(self, source: Source, onset_ms: int, now: int) -> bool:
            self.asked.append((source, onset_ms, now))
            return onset_ms > 1000  # pretend everything before 1 s was the bot's own echo

    gate = EchoGate()
    c = BargeInController(gate)
    assert c.speech_start(500, 560, True) is None
    assert c.gated == 1
    c.speech_end()
    assert c.speech_start(1500, 1560, True) is not None
    assert gate.asked == [("vad", 500, 560), ("vad", 1500, 1560)]
    # The vendor's own interruption is not gated: the vendor already stopped the bot.
    assert c.vendor_interrupt(1600, True) is not None
