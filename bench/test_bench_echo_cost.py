"""Per-frame cost of the echo-aware barge-in gate (issue 7): the fast paths against the reference code, same run.

The whole gate as the call runs it (:meth:`rtvoice.echo.EchoAwareGate.frame`: ledger position, reference
ring, cancellation, history bits) in the situations a call goes through, as it runs now and as it ran before
issue 7 (``EchoCancellerCore.fast`` off: the per-sample reference loops, bit-identical to the fast paths,
tests/test_echo_fastpath.py; and ``adapt_on_silence`` on: the NLMS also adapted on all-zero mic frames),
interleaved round by round, min over rounds. For scale, the μ-law decode + webrtcvad of the same frame.
Budgets are ratios measured in the same run, generous for a shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
import webrtcvad

from rtvoice import _dsp
from rtvoice.audio import ulaw_decode, ulaw_encode
from rtvoice.bench.quality import _fixture, bot_answer
from rtvoice.call.ledger import PlaybackLedger
from rtvoice.echo import EchoAwareGate

FRAME = 160
N = 300  # frames per timed run
ROUNDS = 7

BOT = bot_answer(8.0) * 2
BOT_PCM = np.asarray(ulaw_decode(BOT), dtype=np.int16)
CALLER = np.asarray(ulaw_decode((_fixture("interrupt") + _fixture("manager")) * 4), dtype=np.int16)


def _frames(pcm: np.ndarray, n: int) -> list[memoryview]:
    pcm = np.resize(pcm, n * FRAME).astype(np.int16)
    return [memoryview(bytearray(pcm[k * FRAME : (k + 1) * FRAME].tobytes())).cast("h") for k in range(n)]


def _situations() -> dict[str, tuple[bool, list[memoryview]]]:
    rng = np.random.default_rng(3)
    echo = (np.roll(BOT_PCM.astype(np.float64), 800) * 0.5 + rng.normal(0, 30, BOT_PCM.size)).clip(-32768, 32767)
    n = 2 * N
    return {
        # bot playing, a real echo (100 ms, ERL 6 dB), caller silent: the canceller adapts on every frame
        "echo, adapting": (True, _frames(echo, n)),
        # bot playing, no echo on the line, caller silent (digital silence: the load benchmark's caller)
        "bot plays, silent mic": (True, _frames(np.zeros(1, np.int16), n)),
        # the load benchmark's steady state: the caller talked over the bot (the taps learned something), then
        # stays digitally silent while the bot plays
        "bot plays, silent after talk": (True, _frames(CALLER, N) + _frames(np.zeros(1, np.int16), N)),
        # bot playing, caller talking over it (double talk: adaptation frozen)
        "bot plays, caller talks": (True, _frames(CALLER, n)),
        # the bot finished its turn a while ago, the caller talks
        "bot silent, caller talks": (False, _frames(CALLER, n)),
    }


def _gate(playing: bool, fast: bool) -> EchoAwareGate:
    ledger = PlaybackLedger(60)
    gate = EchoAwareGate(ledger)
    gate.canceller._core.fast = fast
    gate.canceller._core.adapt_on_silence = 0 if fast else 1  # off: as before issue 7
    audio = BOT if playing else BOT[:1600]
    ledger.sent("bot", 0, len(audio), 0)
    gate.tap.sent(audio)
    return gate


def _timed(gate: EchoAwareGate, frames: list[memoryview], first: int, t0_ms: int) -> float:
    frame = gate.frame
    t0 = time.perf_counter()
    for k in range(first, first + N):
        frame(frames[k], t0_ms + (k + 1) * 20, True)
    return (time.perf_counter() - t0) / N * 1e6


def _gate_us(playing: bool, fast: bool, frames: list[memoryview], t0_ms: int) -> float:
    gate = _gate(playing, fast)
    _timed(gate, frames, 0, t0_ms)  # the first N frames: lock on, learn the line
    return _timed(gate, frames, N, t0_ms)


def _decode_vad_us(frames: list[memoryview]) -> float:
    vad = webrtcvad.Vad(2)
    ulaw = [bytes(ulaw_encode(f)) for f in frames[:N]]
    pcm = bytearray(2 * FRAME)
    t0 = time.perf_counter()
    for u in ulaw:
        ulaw_decode(u, pcm)
        vad.is_speech(pcm, 8000)
    return (time.perf_counter() - t0) / N * 1e6


def _measure() -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, (playing, frames) in _situations().items():
        best = {"fast": float("inf"), "before": float("inf"), "decode+vad": float("inf")}
        t0_ms = 0 if playing else 10_000  # bot silent: its 200 ms played long before
        runs: list[tuple[str, Callable[[], float]]] = [
            ("fast", partial(_gate_us, playing, True, frames, t0_ms)),
            ("before", partial(_gate_us, playing, False, frames, t0_ms)),
            ("decode+vad", partial(_decode_vad_us, frames)),
        ]
        for _ in range(ROUNDS):
            for label, run in runs:
                best[label] = min(best[label], run())
        results[name] = best
    return results


def test_echo_gate_fast_paths_cost_per_frame() -> None:
    assert _dsp.EchoCancellerCore().fast  # the default the server runs
    res = _measure()
    print()
    for name, r in res.items():
        print(
            f"{name:30s} gate now {r['fast']:5.2f} µs, before issue 7 {r['before']:5.2f} µs "
            f"({r['fast'] / r['before']:.2f}x); μ-law decode + webrtcvad {r['decode+vad']:5.2f} µs"
        )
    # silent mic while the bot plays: no echo estimate, no NLMS step (~0.45x)
    assert res["bot plays, silent mic"]["fast"] <= 0.75 * res["bot plays, silent mic"]["before"]
    assert res["bot plays, silent after talk"]["fast"] <= 0.75 * res["bot plays, silent after talk"]["before"]
    # the reference window is all zero: no echo estimate at all (~0.7x)
    assert res["bot silent, caller talks"]["fast"] <= 0.95 * res["bot silent, caller talks"]["before"]
    # adapting on a real echo: same arithmetic, whole-frame kernels (~0.85-0.95x); never slower
    assert res["echo, adapting"]["fast"] <= 1.05 * res["echo, adapting"]["before"]
    assert res["bot plays, caller talks"]["fast"] <= 1.10 * res["bot plays, caller talks"]["before"]
    # scale: the whole gate stays within a few decode+VAD of the same frame
    for r in res.values():
        assert r["fast"] <= 6.0 * r["decode+vad"] + 1.0
