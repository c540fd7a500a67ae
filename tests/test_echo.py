"""Echo canceller (compiled core + façade), reference tap, barge-in gates and the policy setting."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

import numpy as np
import pytest

from rtvoice.audio import ulaw_decode
from rtvoice.bench.quality import Scenario, run_scenario
from rtvoice.call.ledger import PlaybackLedger
from rtvoice.config import ConfigError, Settings
from rtvoice.echo import (
    ABOVE_BG,
    LOCKED,
    NEAR_END,
    REF_ACTIVE,
    EchoAwareGate,
    EchoCanceller,
    EchoTuning,
    IgnoreFirstGate,
    ReferenceTap,
    VadGate,
    make_gate,
)
from rtvoice.sim.line import LineConfig, LineModel

FIX = resources.files("rtvoice") / "fixtures"
BOT = b"".join((FIX / f"{n}.ulaw").read_bytes() for n in ("hours", "manager", "close", "book"))
CALLER = (FIX / "yes.ulaw").read_bytes()
SILENT = b"\xff" * 160


def run_line(
    cfg: LineConfig, caller_at: int | None = None, frames: int = 400
) -> tuple[EchoCanceller, list[int], list[tuple[float, float]]]:
    """Bot speech from t=0 (the reference is perfectly aligned with playback); the caller says "yes please"
    from frame ``caller_at``. Returns the canceller, flags per frame and (mic, residual) energies."""
    line = LineModel(cfg)
    ec = EchoCanceller()
    out = np.zeros(160, dtype=np.int16)
    flags: list[int] = []
    energies: list[tuple[float, float]] = []
    n_caller = len(CALLER) // 160
    for k in range(frames):
        if caller_at is not None and caller_at <= k < caller_at + n_caller:
            speech = CALLER[(k - caller_at) * 160 : (k - caller_at + 1) * 160]
        else:
            speech = SILENT
        mic = np.asarray(ulaw_decode(line.mic_frame(speech, BOT, k * 20)), dtype=np.int16)
        ref = np.asarray(ulaw_decode(BOT[k * 160 : (k + 1) * 160]), dtype=np.int16)
        flags.append(ec.process(mic, ref, out))
        energies.append(ec.last_energies)
    return ec, flags, energies


@pytest.mark.parametrize("delay_ms", [20, 120, 300])
def test_finds_the_echo_delay_and_converges_within_a_second(delay_ms: int) -> None:
    ec, flags, energies = run_line(LineConfig(echo_delay_ms=delay_ms, erl_db=6.0, path_variation=0.2, seed=1))
    assert ec.locked and flags[-1] & LOCKED
    assert abs(ec.delay_ms - delay_ms) <= 3.0  # the bulk delay lands just before the direct path
    # ERLE over the second second of bot speech (1-2 s after the echo starts)
    start = (delay_ms + 1000) // 20
    ed = sum(e[0] for e in energies[start : start + 50])
    ee = sum(e[1] for e in energies[start : start + 50])
    assert 10 * np.log10(ed / ee) > 15.0
    # echo-only frames are never taken for the caller
    assert not any(f & NEAR_END and f & REF_ACTIVE for f in flags[5:])


def test_detects_the_caller_over_the_echo() -> None:
    _, flags, _ = run_line(LineConfig(echo_delay_ms=200, erl_db=6.0, seed=2), caller_at=150, frames=220)
    caller = flags[150 : 150 + len(CALLER) // 160]
    assert sum(1 for f in caller if f & NEAR_END) >= len(caller) // 3
    assert not any(f & NEAR_END for f in flags[10:150])


def test_caller_over_the_start_of_a_bot_turn_on_a_line_without_echo_is_heard_at_once() -> None:
    # The caller talks 400 ms into the bot's answer on a line with no echo at all (a handset): nothing has
    # converged, and the detector must not take the caller for echo. The microphone stayed quiet while the
    # bot played, which refutes every echo delay (lag) already covered by loud bot audio. (Before the per-lag
    # bound it assumed 0 dB echo return loss, learned its gain from the caller's own voice and, in
    # tests/test_call_call.py, muted a caller as loud as the bot until the bot stopped.)
    _, flags, _ = run_line(LineConfig(seed=3), caller_at=20, frames=20 + len(CALLER) // 160)
    assert not any(f & NEAR_END for f in flags[3:20])  # bot audio alone: nothing to hear
    assert flags[20] & NEAR_END  # the caller's first (soft) frame
    assert flags[26] & NEAR_END and flags[27] & NEAR_END  # and the loud part of "yes"


def test_per_lag_bounds_keep_the_echo_path_and_refute_the_others() -> None:
    ec, _, _ = run_line(LineConfig(echo_delay_ms=120, erl_db=6.0, seed=5), frames=150)
    bounds = ec._core.bounds_copy()  # 2 ms lag steps
    near = max(bounds[120 // 2 - 2 : 120 // 2 + 3])
    assert near >= 10 ** (-6.0 / 10) * 0.5  # the echo path's own lag keeps about its gain
    assert max(bounds[: 120 // 2 - 10]) < near / 10  # shorter delays: the quiet microphone refuted them


def test_output_is_echo_reduced_and_silent_frames_pass() -> None:
    ec = EchoCanceller()
    out = bytearray(320)
    # nothing played: no echo possible, everything passes as the caller, unchanged
    mic = (np.arange(160, dtype=np.int16) * 50) - 4000
    flags = ec.process(mic, np.zeros(160, dtype=np.int16), out)
    assert flags & NEAR_END and not flags & REF_ACTIVE
    assert bytes(out) == mic.tobytes()


def test_lost_frames_keep_the_reference_aligned() -> None:
    ec = EchoCanceller()
    out = np.zeros(160, dtype=np.int16)
    line = LineModel(LineConfig(echo_delay_ms=100, erl_db=6.0, seed=4))
    for k in range(250):
        mic = np.asarray(ulaw_decode(line.mic_frame(SILENT, BOT, k * 20)), dtype=np.int16)
        ref = np.asarray(ulaw_decode(BOT[k * 160 : (k + 1) * 160]), dtype=np.int16)
        if k % 37 == 36:
            ec.skip(ref)  # this frame never arrived
            continue
        flags = ec.process(mic, ref, out)
        assert not (k > 10 and flags & NEAR_END and flags & REF_ACTIVE), k
    assert abs(ec.delay_ms - 100) <= 3


def test_bad_buffers_and_parameters_raise_value_error() -> None:
    ec = EchoCanceller()
    ok = bytearray(320)
    with pytest.raises(ValueError):
        ec.process(bytearray(318), ok, bytearray(320))
    with pytest.raises(ValueError):
        ec.process(ok, ok, bytearray(100))
    with pytest.raises(ValueError):
        ec.process(ok, ok, bytes(320))  # read-only out
    with pytest.raises(ValueError):
        ec.skip(bytearray(10))
    with pytest.raises(ValueError):
        EchoCanceller(taps=12)
    with pytest.raises(ValueError):
        EchoCanceller(max_delay_ms=5)
    with pytest.raises(ValueError):
        EchoCanceller(mu=0.0)


def test_reset_forgets_the_echo_path() -> None:
    ec, _, _ = run_line(LineConfig(echo_delay_ms=60, erl_db=0.0), frames=120)
    assert ec.locked and any(abs(t) > 0.01 for t in ec.taps)
    ec.reset()
    assert not ec.locked and all(t == 0.0 for t in ec.taps) and ec.erle_db == 0.0


def test_reference_tap_follows_the_ledger_and_skips_discarded_audio() -> None:
    ledger = PlaybackLedger(60)
    tap = ReferenceTap()
    audio = bytes(range(0, 256)) * 10  # 2560 bytes = 320 ms, distinct codes
    tap.sent(audio[:1600])  # 200 ms sent at t=0
    ledger.sent("a", 0, 1600, 0)
    frame = np.asarray(tap.played_frame(ledger, 20), dtype=np.int16)
    assert frame.tobytes() == np.asarray(ulaw_decode(audio[:160]), dtype=np.int16).tobytes()
    frame = np.asarray(tap.played_frame(ledger, 40), dtype=np.int16)
    assert frame.tobytes() == np.asarray(ulaw_decode(audio[160:320]), dtype=np.int16).tobytes()
    # a clear at 60 ms: the rest of the 200 ms was discarded; silence follows
    ledger.clear(60)
    tap.played_frame(ledger, 60)
    frame = np.asarray(tap.played_frame(ledger, 80), dtype=np.int16)
    assert not frame.any() or np.abs(frame).max() <= 8  # μ-law 0xFF decodes to 0


def test_ignore_first_gate_refuses_the_first_three_seconds_of_each_turn() -> None:
    gate = IgnoreFirstGate(3000)
    pcm = memoryview(bytearray(320)).cast("h")
    gate.frame(pcm, 1000, True)
    assert not gate.allow("vad", 2900, 3000)
    gate.frame(pcm, 4000, True)
    assert gate.allow("vad", 3900, 4000)
    gate.frame(pcm, 4020, False)  # the turn ended; the next one starts the clock again
    gate.frame(pcm, 5000, True)
    assert not gate.allow("vad", 5500, 5600)


def test_make_gate_and_the_policy_setting() -> None:
    ledger = PlaybackLedger(60)
    assert isinstance(make_gate("echo-aware", ledger), EchoAwareGate)
    assert isinstance(make_gate("vad", ledger), VadGate)
    assert isinstance(make_gate("ignore-first-3s", ledger), IgnoreFirstGate)
    with pytest.raises(ValueError):
        make_gate("psychic", ledger)
    assert Settings.from_env({}, dotenv=None).bargein_policy == "echo-aware"
    env = {"RTVOICE_BARGEIN_POLICY": "VAD"}
    assert Settings.from_env(env, dotenv=None).bargein_policy == "vad"
    with pytest.raises(ConfigError, match="RTVOICE_BARGEIN_POLICY"):
        Settings.from_env({"RTVOICE_BARGEIN_POLICY": "never"}, dotenv=None)


def test_call_with_echo_aware_gate_ignores_its_own_echo_but_hears_the_caller() -> None:
    # the real Call + simulated Twilio playout + line model (one scenario of the quality benchmark)
    quiet = Scenario(delay_ms=250, erl_db=6, noise="none", snr_db=30, barge_ms=None, seed=1, loss_rate=0.0)
    assert run_scenario(quiet, "vad").false_barge_in  # the plain VAD interrupts itself
    echo = run_scenario(quiet, "echo-aware")
    assert not echo.clears
    assert echo.erle_db is not None and echo.erle_db > 15
    barge = Scenario(delay_ms=250, erl_db=6, noise="white", snr_db=20, barge_ms=2000, seed=2, loss_rate=0.0)
    out = run_scenario(barge, "echo-aware")
    assert not out.false_barge_in and not out.missed
    assert out.reaction_ms is not None and out.reaction_ms <= 200
    assert out.truncation_error_ms is not None and out.truncation_error_ms <= 20


def test_callers_own_turn_does_not_deafen_the_detector_for_the_next_bot_turn() -> None:
    # the caller talks first (no bot audio, nothing can echo), then the bot answers, then the caller barges in
    turn = (FIX / "interrupt.ulaw").read_bytes()[: 160 * 100]
    line = LineModel(LineConfig(echo_delay_ms=120, erl_db=6.0, noise="white", snr_db=25.0, seed=6))
    ec = EchoCanceller()
    out = np.zeros(160, dtype=np.int16)
    heard = bytearray(b"\xff" * 160 * 110) + BOT  # the bot starts playing at frame 110
    flags = []
    for k in range(400):
        if k < 100:
            speech = turn[k * 160 : (k + 1) * 160]
        elif 300 <= k < 300 + len(CALLER) // 160:
            speech = CALLER[(k - 300) * 160 : (k - 299) * 160]
        else:
            speech = SILENT
        mic = np.asarray(ulaw_decode(line.mic_frame(speech, heard, k * 20)), dtype=np.int16)
        ref = np.asarray(ulaw_decode(bytes(heard[k * 160 : (k + 1) * 160])), dtype=np.int16)
        flags.append(ec.process(mic, ref, out))
    assert not any(f & NEAR_END and f & REF_ACTIVE for f in flags[115:300])  # the bot's echo alone
    barge = flags[300 : 300 + len(CALLER) // 160]
    assert sum(1 for f in barge if f & NEAR_END) >= len(barge) // 3


def test_compiled_gate_path_equals_the_facade_path_frame_for_frame() -> None:
    # EchoAwareGate.frame runs reference lookup, cancellation and the history bits in one compiled call; it
    # must compute exactly what the separate façade pieces (ReferenceTap + EchoCanceller.process) compute,
    # including across lost frames (the reference still advances) and a clear (the ring resyncs)
    line = LineModel(LineConfig(echo_delay_ms=120, erl_db=6.0, noise="white", snr_db=25.0, seed=3))
    ledger_a, ledger_b = PlaybackLedger(60), PlaybackLedger(60)
    gate = EchoAwareGate(ledger_a)
    tap, ec = ReferenceTap(), EchoCanceller()
    out = np.zeros(160, dtype=np.int16)
    for led, sink in ((ledger_a, gate.tap.sent), (ledger_b, tap.sent)):
        led.sent("a", 0, len(BOT), 0)
        sink(BOT)
    lost = {37, 38, 90}
    last = 0
    for k in range(1, 200):
        now = k * 20
        if k == 150:
            ledger_a.clear(now - 20)
            ledger_b.clear(now - 20)
        mic_ulaw = line.mic_frame(SILENT, BOT, now - 20)
        if k in lost:
            continue
        mic = np.asarray(ulaw_decode(mic_ulaw), dtype=np.int16)
        got = np.asarray(gate.frame(memoryview(mic).cast("B").cast("h"), now, True), dtype=np.int16)
        for i in range((now - last) // 20 - 1, 0, -1):
            ec.skip(tap.played_frame(ledger_b, now - i * 20))
        flags = ec.process(mic, tap.played_frame(ledger_b, now), out)
        last = now
        assert got.tobytes() == out.tobytes(), k
        # the gate's history bit: the caller over the echo, or (no echo possible) above the background
        expect = bool(flags & NEAR_END) and bool(flags & (REF_ACTIVE | ABOVE_BG))
        assert bool(gate._core.recent & 1) == expect, k
    assert gate.frames == 199 - len(lost)


def test_reference_ring_wraps_around() -> None:
    # far more audio than the ring holds, sent in odd-sized pieces: the newest frames read back exactly
    ledger = PlaybackLedger(60)
    tap = ReferenceTap()
    audio = bytes((i * 7) % 256 for i in range(300_000))
    for i in range(0, len(audio), 999):
        tap.sent(audio[i : i + 999])
    ledger.sent("a", 0, len(audio), 0)
    assert tap.written == len(audio)
    end_ms = len(audio) // 8
    frame = np.asarray(tap.played_frame(ledger, end_ms), dtype=np.int16)
    assert frame.tobytes() == np.asarray(ulaw_decode(audio[-160:]), dtype=np.int16).tobytes()


# --- tuning knobs: validated at construction ------------------------------------------------------------------

BAD_CANCELLER_ARGS = [
    ("taps", 0, "8..256"),
    ("taps", 12, "multiple of 8"),
    ("taps", 264, "8..256"),
    ("taps", 48.0, "8..256"),
    ("taps", True, "8..256"),
    ("max_delay_ms", 19, "20..1000"),
    ("max_delay_ms", 1001, "20..1000"),
    ("max_delay_ms", -5, "20..1000"),
    ("mu", 0.0, "(0, 1]"),
    ("mu", 1.5, "(0, 1]"),
    ("mu", float("nan"), "(0, 1]"),
    ("dt_threshold_db", -1.0, "[0, 40]"),
    ("dt_threshold_db", 1e6, "[0, 40]"),  # was accepted: dt_ratio = inf, the detector never fired
    ("dt_threshold_db", float("nan"), "[0, 40]"),  # was accepted: dt_ratio = nan
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_CANCELLER_ARGS)
def test_canceller_refuses_a_bad_knob_naming_it_and_its_range(name: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be .*{re.escape(allowed)}"):
        EchoCanceller(**{name: value})  # type: ignore[arg-type]


BAD_TUNING = [
    ("rise", 0.0, "(0, 1]"),  # the per-frame gain cap divides by it
    ("rise", -0.1, "(0, 1]"),
    ("rise", 1.5, "(0, 1]"),
    ("rise_cap", 0.0, "(0, 10]"),
    ("rise_cap", 0.1, ">= rise"),  # under rise (0.15) the residual-echo gains could never rise
    ("ncc_ratio", 0.9, "[1, 100]"),  # under 1 the bot's own echo would be the caller
    ("ncc_ratio", float("inf"), "[1, 100]"),
    ("bg_ratio", 0.5, "[1, 1000]"),
    ("veto_ratio", -1.0, "[0, 10]"),
    ("bg_cap_ratio", 0.0, "[1, 1000]"),
    ("pass_hang", -1, "0..50"),
    ("pass_hang", 1.0, "0..50"),
    ("pass_ratio", 0.99, "[1, 100]"),
    ("ub_ratio", 0.0, "[1, 100]"),
    ("ub_fall", 0.0, "(0, 1]"),
    ("ub_fall", 1.01, "(0, 1]"),
    ("ub_rise", 0.99, "[1, 2]"),
    ("ub_spread", -1, "0..64"),
    ("ub_spread", float("nan"), "0..64"),
    ("ncc_ratio", "1.6", "[1, 100]"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_TUNING)
def test_tuning_refuses_a_bad_knob_naming_it_and_its_range(name: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be .*{re.escape(allowed)}"):
        EchoTuning(**{name: value})  # type: ignore[arg-type]


def test_tuning_defaults_are_the_compiled_cores_and_a_tuning_reaches_it() -> None:
    core = EchoCanceller()._core
    defaults = EchoTuning()
    for f in dataclasses.fields(EchoTuning):
        assert getattr(core, f.name) == pytest.approx(getattr(defaults, f.name)), f.name
    tuned = EchoTuning(rise=0.2, rise_cap=0.5, pass_hang=2, ub_spread=3, veto_ratio=0.0)
    core = EchoCanceller(tuning=tuned)._core
    assert (core.rise, core.rise_cap, core.pass_hang, core.ub_spread, core.veto_ratio) == (
        pytest.approx(0.2), pytest.approx(0.5), 2, 3, 0.0
    )
    # the edges of every range are accepted
    EchoTuning(rise=1.0, rise_cap=10.0, ncc_ratio=1.0, bg_ratio=1000.0, pass_hang=50, ub_rise=2.0, ub_spread=0)
    EchoCanceller(taps=256, max_delay_ms=20, mu=1.0, dt_threshold_db=0.0)
    with pytest.raises(ValueError, match="tuning must be an EchoTuning"):
        EchoCanceller(tuning={"rise": 0.2})  # type: ignore[arg-type]


def test_ignore_first_gate_refuses_a_bad_grace_period() -> None:
    for bad in (-1, 60_001, 1.5, None):
        with pytest.raises(ValueError, match=r"^ignore_ms must be an integer in 0\.\.60000"):
            IgnoreFirstGate(bad)  # type: ignore[arg-type]
    assert IgnoreFirstGate(0).allow("vad", 0, 0)
