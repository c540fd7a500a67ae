"""The echo canceller's fast paths (issue 7) against its per-sample reference code: bit-identical.

``EchoCancellerCore.fast`` (default on) runs the whole-frame filter/NLMS kernels, the correlation vectorised
over lags and the exact skips (zero taps, an all-zero reference window, a silent mic with zero taps); off, the
per-sample reference loops. Two cores fed the same frames must give the same output samples, flags, taps,
per-lag bounds and detector state, frame after frame, whatever the mix of echo, silence, speech and loss
(``last_ey``, the echo estimate's energy, is a diagnostic no decision reads when the mic is digitally silent;
the fast path does not compute it on such frames). The reference is run with the same ``adapt_on_silence``
setting: that one is a behavioural knob (no adaptation on an all-zero mic frame, default since issue 7),
judged by the quality matrix, not an optimisation.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rtvoice import _dsp
from rtvoice.audio import ulaw_decode
from rtvoice.sim.line import LineConfig, LineModel

FIX = resources.files("rtvoice") / "fixtures"
BOT = np.asarray(
    ulaw_decode(b"".join((FIX / f"{n}.ulaw").read_bytes() for n in ("hours", "manager", "close", "book"))),
    dtype=np.int16,
)
CALLER = np.asarray(ulaw_decode((FIX / "interrupt.ulaw").read_bytes()), dtype=np.int16)
FRAME = 160


def _state(ec: _dsp.EchoCancellerCore) -> tuple[object, ...]:
    return (
        ec.taps_copy(),
        ec.bounds_copy(),
        ec.g_max,
        ec.g_al,
        ec.noise,
        ec.bg,
        ec.delay,
        ec.locked,
        ec.conf,
        ec.n_al,
        ec.dt_frames,
        ec.last_ed,
        ec.last_ee,
        ec.last_ey if ec.last_ed > 0.0 else None,
        ec.last_ex,
        ec.last_pub,
        ec.erle_db,
    )


def _pair(taps: int = 48, adapt_on_silence: int = 0) -> tuple[_dsp.EchoCancellerCore, _dsp.EchoCancellerCore]:
    fast = _dsp.EchoCancellerCore(taps, 350, 0.4, 6.0)
    slow = _dsp.EchoCancellerCore(taps, 350, 0.4, 6.0)
    slow.fast = False
    fast.adapt_on_silence = slow.adapt_on_silence = adapt_on_silence
    assert fast.fast and not slow.fast
    return fast, slow


def _frame(src: np.ndarray, k: int, gain: float = 1.0) -> np.ndarray:
    i = (k * FRAME) % (src.size - FRAME)
    return (src[i : i + FRAME].astype(np.float64) * gain).clip(-32768, 32767).astype(np.int16)


# a frame plan: (reference kind, mic kind, lost) per frame
REF_KINDS = ("bot", "zero", "quiet")
MIC_KINDS = ("echo", "zero", "caller", "noise", "echo+caller")
plans = st.lists(
    st.tuples(
        st.integers(1, 40),  # run length in frames
        st.sampled_from(REF_KINDS),
        st.sampled_from(MIC_KINDS),
        st.booleans(),  # one frame of the run is lost
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None)
@given(
    plan=plans, seed=st.integers(0, 2**16), taps=st.sampled_from([48, 48, 32, 64]), adapt_on_silence=st.booleans()
)
def test_fast_paths_are_bit_identical_to_the_reference_loops(
    plan: list[tuple[int, str, str, bool]], seed: int, taps: int, adapt_on_silence: bool
) -> None:
    rng = np.random.default_rng(seed)
    fast, slow = _pair(taps, int(adapt_on_silence))
    out_f = bytearray(2 * FRAME)
    out_s = bytearray(2 * FRAME)
    delay = int(rng.integers(0, 2400))
    k = 0
    for run, ref_kind, mic_kind, lost in plan:
        for j in range(run):
            k += 1
            if ref_kind == "bot":
                ref = _frame(BOT, k)
            elif ref_kind == "zero":
                ref = np.zeros(FRAME, np.int16)
            else:
                ref = rng.integers(-3, 4, FRAME).astype(np.int16)
            echo = _frame(np.roll(BOT, delay), k, 0.3)
            mic = {
                "echo": echo,
                "zero": np.zeros(FRAME, np.int16),
                "caller": _frame(CALLER, k),
                "noise": rng.normal(0, 30, FRAME).astype(np.int16),
                "echo+caller": (echo.astype(np.int32) + _frame(CALLER, k)).clip(-32768, 32767).astype(np.int16),
            }[mic_kind]
            if lost and j == run // 2:
                fast.skip(ref)
                slow.skip(ref)
                continue
            ff = fast.process(mic, ref, out_f)
            fs = slow.process(mic, ref, out_s)
            assert ff == fs, k
            assert out_f == out_s, k
            assert _state(fast) == _state(slow), k


def test_fast_paths_are_bit_identical_on_a_simulated_line_with_a_barge_in() -> None:
    """The quality benchmark's line model: echo with nonlinearity and a varying path, white noise, the caller
    barging in; long enough for the filter to converge and the delay to lock."""
    line = LineModel(
        LineConfig(echo_delay_ms=120, erl_db=6, nonlinearity=0.3, path_variation=0.2, noise="white", snr_db=25)
    )
    from rtvoice.audio import ulaw_encode

    bot_ulaw = bytes(ulaw_encode(BOT))
    caller_ulaw = bytes(ulaw_encode(CALLER))
    fast, slow = _pair()
    out_f = bytearray(2 * FRAME)
    out_s = bytearray(2 * FRAME)
    for k in range(600):
        if 300 <= k < 300 + len(caller_ulaw) // FRAME:
            speech = caller_ulaw[(k - 300) * FRAME : (k - 299) * FRAME]
        else:
            speech = b"\xff" * FRAME
        mic = np.asarray(ulaw_decode(line.mic_frame(speech, bot_ulaw, k * 20)), dtype=np.int16)
        ref = np.asarray(ulaw_decode(bot_ulaw[k * FRAME : (k + 1) * FRAME].ljust(FRAME, b"\xff")), dtype=np.int16)
        assert fast.process(mic, ref, out_f) == slow.process(mic, ref, out_s), k
        assert out_f == out_s, k
        assert _state(fast) == _state(slow), k
    # the fast core really adapted and detected (not a trivial run)
    assert fast.locked and fast.n_al >= 25 and any(fast.taps_copy()) and fast.dt_frames > 0


def test_fast_switch_can_change_mid_call() -> None:
    """The skip bookkeeping (zero taps, zero reference run) stays right while the reference code runs."""
    fast, slow = _pair()
    out_f = bytearray(2 * FRAME)
    out_s = bytearray(2 * FRAME)
    for k in range(300):
        fast.fast = (k // 25) % 2 == 0
        ref = _frame(BOT, k) if k % 90 < 60 else np.zeros(FRAME, np.int16)
        mic = _frame(np.roll(BOT, 800), k, 0.4) if k % 70 < 50 else np.zeros(FRAME, np.int16)
        assert fast.process(mic, ref, out_f) == slow.process(mic, ref, out_s), k
        assert out_f == out_s, k
        assert _state(fast) == _state(slow), k


def test_no_adaptation_on_a_digitally_silent_mic() -> None:
    """An all-zero mic frame (a muted or silence-suppressed caller leg) does not unlearn the echo path; with
    adapt_on_silence (the behaviour before issue 7) the taps decay towards zero output."""
    kept = _dsp.EchoCancellerCore()
    decayed = _dsp.EchoCancellerCore()
    decayed.adapt_on_silence = 1
    out = bytearray(2 * FRAME)
    for k in range(200):  # learn a 50 ms echo path
        ref = _frame(BOT, k)
        mic = _frame(np.roll(BOT, 400), k, 0.5)
        kept.process(mic, ref, out)
        decayed.process(mic, ref, out)
    learned = np.array(kept.taps_copy())
    assert np.abs(learned).max() > 0.1
    assert kept.taps_copy() == decayed.taps_copy()
    silent = np.zeros(FRAME, np.int16)
    for k in range(200, 260):
        kept.process(silent, _frame(BOT, k), out)
        decayed.process(silent, _frame(BOT, k), out)
    assert kept.taps_copy() == learned.tolist()
    assert np.abs(np.array(decayed.taps_copy())).max() < 0.5 * np.abs(learned).max()


def test_one_call_gate_frame_equals_the_previous_python_loop() -> None:
    """EchoGateCore.frame_at (ledger position, epoch and lost-frame replay fetched in C) against the Python
    code EchoAwareGate.frame ran before issue 7 (explicit positions into EchoGateCore.frame/skip): frames
    before any bot audio, losses of 1-2 frames, a stall longer than MAX_SKIP_FRAMES and a clear."""
    from rtvoice.audio import ulaw_encode
    from rtvoice.call.ledger import PlaybackLedger
    from rtvoice.echo import FRAME_MS, MAX_SKIP_FRAMES, EchoAwareGate

    bot = bytes(ulaw_encode(BOT))
    la, lb = PlaybackLedger(60), PlaybackLedger(60)
    gate = EchoAwareGate(la)
    ring, ec = _dsp.ReferenceRing(), _dsp.EchoCancellerCore()
    core = _dsp.EchoGateCore(ring, ec)
    lost = {12, 40, 41, 70} | set(range(100, 131))  # a 31-frame stall: only 25 are replayed
    for k in range(1, 220):
        now = k * 20
        if k == 10:  # the bot starts after the first frames
            for led, sink in ((la, gate.tap.sent), (lb, ring.sent)):
                led.sent("a", 0, len(bot), now)
                sink(bot)
        if k == 160:
            la.clear(now - 20)
            lb.clear(now - 20)
        if k in lost:
            continue
        # the echo of what played (from frame 10 on, 75 ms later, -8 dB), the caller from frame 180
        echo = _frame(np.roll(BOT, 600), k - 10, 0.4) if k >= 14 else np.zeros(FRAME, np.int16)
        mic = (echo.astype(np.int32) + (_frame(CALLER, k) if k > 180 else 0)).clip(-32768, 32767).astype(np.int16)
        view = memoryview(mic).cast("B").cast("h")
        got = bytes(gate.frame(view, now, True))
        # the previous Python loop
        gap = now - core.last_now
        if gap > FRAME_MS and core.primed:
            for i in range(min(gap // FRAME_MS - 1, MAX_SKIP_FRAMES), 0, -1):
                core.skip(lb.played_pos(now - i * FRAME_MS), lb.epoch)
        unprimed = core.frame(view, lb.played_pos(now), lb.epoch, now) & 8
        want = bytes(view) if unprimed else bytes(core.out)
        assert got == want, k
        assert (gate._core.recent, gate._core.echo_only) == (core.recent, core.echo_only), k
        assert _state(gate.canceller._core) == _state(ec), k
    assert gate.frames == core.frames > 150
    assert gate.canceller.locked and any(gate.canceller.taps)  # it did cancel something


@settings(max_examples=20, deadline=None)
@given(skips=st.lists(st.booleans(), min_size=1, max_size=90), seed=st.integers(0, 2**16))
def test_reference_history_is_the_last_samples_played(skips: list[bool], seed: int) -> None:
    """The history moves a window through a longer buffer (rebased every 16 frames) instead of shifting 12 KB
    per frame: whatever the mix of processed and lost frames, it holds exactly the last ``xlen`` reference
    samples, oldest first, zeros before the call's first frame."""
    rng = np.random.default_rng(seed)
    ec = _dsp.EchoCancellerCore()
    played = [np.zeros(len(ec.history_copy()), np.int16)]
    out = bytearray(2 * FRAME)
    for lost in skips:
        ref = rng.integers(-3000, 3000, FRAME).astype(np.int16)
        if lost:
            ec.skip(ref)
        else:
            ec.process(rng.integers(-100, 100, FRAME).astype(np.int16), ref, out)
        played.append(ref)
        want = np.concatenate(played)[-len(ec.history_copy()) :]
        assert ec.history_copy() == want.astype(np.float32).tolist()
    ec.reset()
    assert not any(ec.history_copy())
