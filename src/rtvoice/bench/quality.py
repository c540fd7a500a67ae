"""``python -m rtvoice bench quality``: conversation quality of barge-in under echo, noise and frame loss.

A scenario matrix (echo delay x echo return loss x background noise x when the caller barges in), each with a
long bot answer, is played through rtvoice's real call state machine (:class:`rtvoice.call.call.Call`: the
real webrtcvad, playback ledger, pacer and barge-in controller) against the simulated Twilio's playout
emulator (:class:`rtvoice.sim.twilio.PlayoutEmulator`: buffer, marks, clear) and the line model
(:mod:`rtvoice.sim.line`: the caller's microphone picks up the echo of what the caller heard), on a simulated
clock (much faster than real time, deterministic from the seeds). The same scenarios run under each barge-in
policy in the same run:

1. ``vad``: plain webrtcvad on the raw caller audio;
2. ``ignore-first-3s``: no barge-in in the first 3 s of a bot turn (a peer's echo workaround);
3. ``echo-aware``: rtvoice's echo canceller + double-talk detector (:mod:`rtvoice.echo`).

Per policy: false barge-ins per 100 bot turns (the bot was cut while the caller had not started speaking),
missed barge-ins (% of caller interruptions that got no ``clear`` within 1 s of speech onset), reaction time
p50/p95 (caller speech onset -> ``clear`` sent), truncation error (``audio_end_ms`` rtvoice reports vs what
the caller heard, ms), and for the echo-aware gate the ERLE achieved (dB, echo-only frames from 1 s into the
bot turn, noise-free lines). Writes ``quality.md`` (table) and ``quality.png`` (plot) into ``--out``.

Targets for the echo-aware gate (issue 6): 0 false barge-ins at ERL >= 6 dB for delays up to 300 ms, >= 99 %
of true barge-ins caught, p95 reaction <= 120 ms, truncation error <= 20 ms. Also measured: the canceller's
cost per 20 ms frame (budget 10 µs), min over rounds, against a numpy block-NLMS reference in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rtvoice.audio import ulaw_decode, ulaw_encode
from rtvoice.call.call import Call
from rtvoice.config import Settings
from rtvoice.echo import EchoAwareGate, EchoCanceller
from rtvoice.sim.line import SPEECH_RMS, LineConfig, LineModel, NoiseKind
from rtvoice.sim.twilio import PlayoutEmulator
from rtvoice.twilio.media import Mark, Media, Start

POLICIES = ("vad", "ignore-first-3s", "echo-aware")
FRAME = 160
BOT_FILES = ("hours", "book", "close", "bye", "eight", "name", "two_people", "yes")
CALLER_FILES = ("interrupt", "manager")
BOT_START_MS = 400
#: a barge-in counts as caught when ``clear`` is sent within this long of the caller's speech onset
CATCH_WINDOW_MS = 1000
TARGETS = {"false_per_100": 0.0, "caught_pct": 99.0, "reaction_p95_ms": 120.0, "truncation_max_ms": 20.0}


def _fixture(name: str) -> bytes:
    return (resources.files("rtvoice") / "fixtures" / f"{name}.ulaw").read_bytes()


def bot_answer(seconds: float = 8.0) -> bytes:
    """A long bot answer: fixture utterances back to back (with short pauses), cut to ``seconds``."""
    out = bytearray()
    i = 0
    while len(out) < seconds * 8000:
        out += _fixture(BOT_FILES[i % len(BOT_FILES)]) + b"\xff" * 1200  # 150 ms pause
        i += 1
    n = int(seconds * 8000) // FRAME * FRAME
    return bytes(out[:n])


def speech_onset_ms(ulaw: bytes, threshold: float = 300.0) -> int:
    """First 20 ms frame whose RMS exceeds ``threshold``: the start of the caller's audible speech."""
    pcm = np.asarray(ulaw_decode(ulaw[: len(ulaw) // FRAME * FRAME]), dtype=np.float64).reshape(-1, FRAME)
    loud = np.flatnonzero(np.sqrt((pcm**2).mean(axis=1)) > threshold)
    return int(loud[0]) * 20 if loud.size else 0


@dataclass(frozen=True, slots=True)
class Scenario:
    """One line and one caller behaviour. ``barge_ms``: when (ms after the bot starts playing) the caller
    starts an utterance over the bot; None: the caller stays silent through the whole answer."""

    delay_ms: float
    erl_db: float
    noise: NoiseKind
    snr_db: float
    barge_ms: int | None
    seed: int = 0
    nonlinearity: float = 0.0
    path_variation: float = 0.2
    loss_rate: float = 0.0
    bot_seconds: float = 8.0


@dataclass(slots=True)
class Outcome:
    """What happened in one scenario under one policy."""

    scenario: Scenario
    policy: str
    clears: list[int] = field(default_factory=list)  # stream ms at which rtvoice sent a clear
    onset_ms: int | None = None  # true caller speech onset (stream ms)
    reaction_ms: int | None = None
    false_barge_in: bool = False
    missed: bool = False
    truncation_error_ms: float | None = None
    erle_db: float | None = None
    delay_found_ms: float | None = None


def run_scenario(sc: Scenario, policy: str) -> Outcome:
    """Play one scenario through the real :class:`Call` and the simulated Twilio playout."""
    settings = Settings(bargein_policy=policy, vad_onset_frames=3, vad_hangover_frames=15)
    outbox: list[str] = []
    call = Call(settings, None, send=outbox.append)
    playout = PlayoutEmulator()
    line = LineModel(
        LineConfig(
            echo_delay_ms=sc.delay_ms,
            erl_db=sc.erl_db,
            nonlinearity=sc.nonlinearity,
            path_variation=sc.path_variation,
            noise=sc.noise,
            snr_db=sc.snr_db,
            loss_rate=sc.loss_rate,
            seed=sc.seed,
        )
    )
    call.on_start(Start("MZ1", "CA1", "AC1", ("inbound",), {}, "audio/x-mulaw", 8000, 1, 1))
    bot = bot_answer(sc.bot_seconds)
    caller = _fixture(CALLER_FILES[sc.seed % len(CALLER_FILES)])
    out = Outcome(sc, policy)
    caller_start: int | None = None
    if sc.barge_ms is not None:
        # the utterance starts so that its first voiced frame lands barge_ms after the bot starts playing
        # Speech onset: the first frame at least 6 dB above the line noise (and above -40 dBFS); quieter
        # lead-ins (a breath, a soft consonant under white noise) cannot be heard by any detector.
        noise_rms = SPEECH_RMS / 10 ** (sc.snr_db / 20) if sc.noise != "none" else 0.0
        onset = speech_onset_ms(caller, max(300.0, 2.0 * noise_rms))
        caller_start = BOT_START_MS + sc.barge_ms - onset
        caller_start -= caller_start % 20
        out.onset_ms = caller_start + onset
    heard_at_clear: float | None = None
    seq = 0
    gate = call.bargein.gate
    echo_gate = gate if isinstance(gate, EchoAwareGate) else None
    ed_sum = ee_sum = 0.0
    end_ms = BOT_START_MS + int(sc.bot_seconds * 1000) + 1500

    def mark_back(names: list[str]) -> None:
        nonlocal seq
        for name in names:
            seq += 1
            call.on_mark(Mark("MZ1", seq, name))

    def flush(now: int) -> None:
        nonlocal heard_at_clear
        while outbox:
            msgs = outbox[:]
            outbox.clear()
            for text in msgs:
                msg = json.loads(text)
                event = msg["event"]
                if event == "media":
                    import base64

                    mark_back(playout.enqueue(now, base64.b64decode(msg["media"]["payload"])))
                elif event == "mark":
                    mark_back(playout.mark(now, msg["mark"]["name"]))
                elif event == "clear":
                    due, returned, _ = playout.clear(now)
                    out.clears.append(call.now)
                    if heard_at_clear is None:
                        heard_at_clear = playout.played_total / 8
                    mark_back(due)
                    mark_back(returned)

    for k in range(end_ms // 20):
        t = k * 20
        if t == BOT_START_MS:
            call.bot_audio("bot-1", bot)
            call.bot_audio_done("bot-1")
        flush(t)
        mark_back(playout.advance(t + 20))
        if caller_start is not None and caller_start <= t < caller_start + len(caller) // 8:
            i = (t - caller_start) * 8
            speech = caller[i : i + FRAME].ljust(FRAME, b"\xff")
        else:
            speech = b"\xff" * FRAME
        mic = line.mic_frame(speech, playout.heard, t)
        for chunk, payload in line.deliver(k + 1, mic):
            seq += 1
            call.on_media(Media("MZ1", seq, "inbound", chunk, (chunk - 1) * 20, payload))
        if echo_gate is not None:
            echo_level = float(np.mean(line.last_echo.astype(np.float64) ** 2))
            talking = caller_start is not None and t >= caller_start
            if (
                sc.noise == "none"
                and not talking
                and not out.clears
                and t >= BOT_START_MS + 1000
                and echo_level > 100.0**2
            ):
                ed, ee = echo_gate.canceller.last_energies
                ed_sum += ed
                ee_sum += ee
        flush(t + 20)

    if echo_gate is not None:
        out.delay_found_ms = echo_gate.canceller.delay_ms
        if ee_sum > 0:
            out.erle_db = 10 * math.log10(ed_sum / ee_sum)
    first = out.clears[0] if out.clears else None
    if out.onset_ms is None:
        out.false_barge_in = first is not None
    else:
        out.false_barge_in = first is not None and first < out.onset_ms
        caught = [c for c in out.clears if out.onset_ms <= c <= out.onset_ms + CATCH_WINDOW_MS]
        out.missed = not caught
        if caught:
            out.reaction_ms = caught[0] - out.onset_ms
    if first is not None and call.barge_ins and heard_at_clear is not None:
        heard = call.barge_ins[0][1]
        told = heard.audio_end_ms if heard is not None else heard_at_clear
        out.truncation_error_ms = abs(told - heard_at_clear)
    return out


def matrix(reduced: bool = False) -> list[Scenario]:
    """The scenario matrix: full (192 lines x callers) or reduced for CI."""
    if reduced:
        delays: tuple[float, ...] = (20, 300)
        erls: tuple[float, ...] = (0, 6, 30)
        noises: tuple[tuple[NoiseKind, float], ...] = (("none", 30.0), ("white", 20.0))
        barges: tuple[int | None, ...] = (None, 1500)
    else:
        delays = (20, 100, 200, 300)
        erls = (0, 6, 12, 30)
        noises = (("none", 30.0), ("white", 20.0), ("babble", 15.0))
        barges = (None, 1000, 2500, 5000)
    out = []
    for i, (d, e, (kind, snr), b) in enumerate(itertools.product(delays, erls, noises, barges)):
        out.append(
            Scenario(d, e, kind, snr, b, seed=i, nonlinearity=1.0 if i % 3 == 0 else 0.0, loss_rate=0.005)
        )
    return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(outcomes: list[Outcome], min_erl_db: float = 6.0) -> dict[str, dict[str, float | None]]:
    """Per-policy metrics; false barge-ins count only lines with ERL >= ``min_erl_db`` (the target's scope),
    the 0 dB lines are reported separately."""
    summary: dict[str, dict[str, float | None]] = {}
    for policy in POLICIES:
        rows = [o for o in outcomes if o.policy == policy]
        if not rows:
            continue
        scoped = [o for o in rows if o.scenario.erl_db >= min_erl_db]
        low = [o for o in rows if o.scenario.erl_db < min_erl_db]
        true = [o for o in rows if o.onset_ms is not None]
        reactions = [float(o.reaction_ms) for o in true if o.reaction_ms is not None]
        # the same scope as the false barge-ins (a 0 dB echo is as loud as the caller: the detector needs the
        # caller's louder syllables there, and those lines dominate the tail)
        reactions_scoped = [
            float(o.reaction_ms)
            for o in true
            if o.reaction_ms is not None and o.scenario.erl_db >= min_erl_db
        ]
        trunc = [
            o.truncation_error_ms for o in rows if o.truncation_error_ms is not None and not o.false_barge_in
        ]
        erle = [o.erle_db for o in rows if o.erle_db is not None]
        summary[policy] = {
            "turns": float(len(rows)),
            "false_per_100": 100.0 * sum(o.false_barge_in for o in scoped) / max(len(scoped), 1),
            "false_per_100_erl0": 100.0 * sum(o.false_barge_in for o in low) / len(low) if low else None,
            "caught_pct": 100.0 * sum(not o.missed for o in true) / max(len(true), 1),
            "missed_pct": 100.0 * sum(o.missed for o in true) / max(len(true), 1),
            "reaction_p50_ms": _pct(reactions, 50),
            "reaction_p95_ms": _pct(reactions, 95),
            "reaction_p95_ms_erl6": _pct(reactions_scoped, 95),
            "truncation_p95_ms": _pct(trunc, 95),
            "truncation_max_ms": max(trunc) if trunc else None,
            "erle_db": float(np.mean(erle)) if erle else None,
        }
    return summary


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_markdown(
    summary: dict[str, dict[str, float | None]],
    n_scenarios: int,
    cost: dict[str, float] | None,
    by_noise: dict[str, dict[str, str]] | None = None,
) -> str:
    """The results table (markdown); ``cost`` (from :func:`canceller_cost`) None leaves the cost line out."""
    lines = [
        f"Barge-in quality: {n_scenarios} scenarios per policy (8 s bot answers; echo delay x ERL x noise x "
        "barge-in time; 0.5 % frame loss; every third line with loudspeaker nonlinearity; slowly varying "
        "path).",
        "",
        "Reaction times are over the barge-ins a policy caught (onset: first caller frame 6 dB above the "
        "line noise); truncation error: |audio_end_ms rtvoice reports - bot audio the caller heard before "
        "the clear|.",
        "",
        "| policy | false barge-ins /100 turns (ERL >= 6 dB) | false /100 (ERL 0 dB) | missed % | "
        "reaction p50 ms | reaction p95 ms | reaction p95 ms (ERL >= 6 dB) | truncation p95 ms | "
        "truncation max ms | ERLE dB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, m in summary.items():
        lines.append(
            f"| {policy} | {_fmt(m['false_per_100'])} | {_fmt(m['false_per_100_erl0'])} | "
            f"{_fmt(m['missed_pct'])} | {_fmt(m['reaction_p50_ms'], 0)} | {_fmt(m['reaction_p95_ms'], 0)} | "
            f"{_fmt(m.get('reaction_p95_ms_erl6'), 0)} | {_fmt(m['truncation_p95_ms'], 0)} | "
            f"{_fmt(m['truncation_max_ms'], 0)} | {_fmt(m['erle_db'])} |"
        )
    if cost is not None:
        lines += [
            "",
            f"Echo canceller cost per 20 ms frame, adapting on a continuous echo: {cost['canceller_us']:.2f} µs; "
            f"whole echo-aware gate (ledger position, reference ring, cancellation, decision) "
            f"{cost.get('gate_us', math.nan):.2f} µs (min over rounds; budget 10 µs per frame per call); "
            f"numpy block-NLMS reference {cost['reference_us']:.1f} µs in the same run "
            f"({cost['reference_us'] / cost['canceller_us']:.0f}x).",
        ]
    checks = check_targets(summary)
    by_noise = by_noise or {}
    lines.append("")
    if by_noise:
        lines += [
            "",
            "By background noise: false barge-ins /100 turns (ERL >= 6 dB) / missed % / reaction p95 ms",
            "",
            "| policy | " + " | ".join(by_noise) + " |",
            "|---|" + "---|" * len(by_noise),
        ]
        for policy in summary:
            cells = [by_noise[k].get(policy, "n/a") for k in by_noise]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    verdicts = ", ".join(f"{k} {'OK' if ok else 'FAILED'}" for k, ok in checks.items())
    lines.append(f"Targets for echo-aware: {verdicts}")
    return "\n".join(lines)


def false_by_noise(outcomes: list[Outcome]) -> dict[str, dict[str, str]]:
    """Per background noise kind and policy: "false/100 turns (ERL >= 6 dB) / missed % / reaction p95 ms"."""
    out: dict[str, dict[str, str]] = {}
    for kind in sorted({o.scenario.noise for o in outcomes}):
        out[kind] = {}
        summary = summarize([o for o in outcomes if o.scenario.noise == kind])
        for policy, m in summary.items():
            out[kind][policy] = (
                f"{_fmt(m['false_per_100'])} / {_fmt(m['missed_pct'])} / {_fmt(m['reaction_p95_ms'], 0)}"
            )
    return out


def check_targets(summary: dict[str, dict[str, float | None]]) -> dict[str, bool]:
    """Which of the issue's targets the echo-aware gate meets."""
    m = summary.get("echo-aware", {})

    def le(key: str) -> bool:
        v = m.get(key)
        return v is not None and v <= TARGETS[key]

    caught = m.get("caught_pct")
    return {
        "false_per_100": le("false_per_100"),
        "caught_pct": caught is not None and caught >= TARGETS["caught_pct"],
        "reaction_p95_ms": le("reaction_p95_ms"),
        "truncation_max_ms": le("truncation_max_ms"),
    }


def plot(outcomes: list[Outcome], summary: dict[str, dict[str, float | None]], path: Path) -> None:
    """Bar charts: false barge-ins by ERL, caught %, reaction p50/p95 per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    erls = sorted({o.scenario.erl_db for o in outcomes})
    width = 0.8 / len(POLICIES)
    for i, policy in enumerate(POLICIES):
        rows = [o for o in outcomes if o.policy == policy]
        vals = [
            100.0 * sum(o.false_barge_in for o in rows if o.scenario.erl_db == e)
            / max(sum(1 for o in rows if o.scenario.erl_db == e), 1)
            for e in erls
        ]
        axes[0].bar(np.arange(len(erls)) + i * width, vals, width, label=policy)
    axes[0].set_xticks(np.arange(len(erls)) + width, [f"{e:g} dB" for e in erls])
    axes[0].set_title("false barge-ins per 100 bot turns, by ERL")
    axes[0].legend()
    names = [p for p in POLICIES if p in summary]
    caught = [summary[p]["caught_pct"] or 0.0 for p in names]
    axes[1].bar(names, caught, color=["C0", "C1", "C2"][: len(names)])
    axes[1].axhline(99, color="k", ls="--", lw=0.8)
    axes[1].set_title("true barge-ins caught (%)")
    axes[1].set_ylim(0, 105)
    for i, p in enumerate(names):
        m = summary[p]
        axes[2].bar(i - 0.2, m["reaction_p50_ms"] or 0.0, 0.4, color="C0", label="p50" if i == 0 else None)
        axes[2].bar(i + 0.2, m["reaction_p95_ms"] or 0.0, 0.4, color="C3", label="p95" if i == 0 else None)
    axes[2].axhline(120, color="k", ls="--", lw=0.8)
    axes[2].set_xticks(range(len(names)), names)
    axes[2].set_title("reaction of caught barge-ins: onset -> clear (ms)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _numpy_block_nlms(taps: int = 48) -> tuple[object, object]:
    """A numpy reference doing comparable per-frame work: block NLMS (filter, error, one gradient step)."""
    from numpy.lib.stride_tricks import sliding_window_view

    h = np.zeros(taps, dtype=np.float32)
    hist = np.zeros(taps - 1 + FRAME, dtype=np.float32)

    def step(mic: npt.NDArray[np.int16], ref: npt.NDArray[np.int16]) -> None:
        nonlocal h
        hist[: taps - 1] = hist[FRAME:]
        hist[taps - 1 :] = ref
        win = sliding_window_view(hist, taps)
        y = win @ h
        e = mic.astype(np.float32) - y
        h += 0.4 * (win.T @ e) / (float(np.dot(hist, hist)) + 1e4)

    return step, h


def canceller_cost(n_frames: int = 500, rounds: int = 7) -> dict[str, float]:
    """µs per 20 ms frame, min over ``rounds``: the compiled canceller alone, the whole echo-aware gate
    (reference from the ledger and the ring, cancellation, history bits, ``allow``) and the numpy block-NLMS
    reference, interleaved round by round. The input is one continuous echo (100 ms, ERL 6 dB, a little line
    noise) so that the canceller adapts on every frame, its most expensive path: each round processes the
    next ``n_frames`` (replaying the same frames would break the echo's continuity at the seam and send the
    detector into double talk, which freezes adaptation and measures the cheap path)."""
    from rtvoice.call.ledger import PlaybackLedger

    total = n_frames * rounds
    rng = np.random.default_rng(7)
    ulaw = bytes(ulaw_encode(rng.normal(0, 3000, (total + 20) * FRAME).astype(np.int16)))
    ref = np.asarray(ulaw_decode(ulaw), dtype=np.int16)
    mic = (np.roll(ref, 800) * 0.5 + rng.normal(0, 30, ref.size)).astype(np.int16)
    refs = ref.reshape(-1, FRAME)
    mics = mic.reshape(-1, FRAME)
    views = [memoryview(mics[k]).cast("B").cast("h") for k in range(total)]
    ec = EchoCanceller()
    ledger = PlaybackLedger(60)
    ledger.sent("bench", 0, len(ulaw), 0)
    gate = EchoAwareGate(ledger)
    gate.tap.sent(ulaw)
    out = np.zeros(FRAME, dtype=np.int16)
    step, _ = _numpy_block_nlms()
    best_ec = best_gate = best_np = math.inf
    for r in range(rounds):
        lo, hi = r * n_frames, (r + 1) * n_frames
        t0 = time.perf_counter()
        for k in range(lo, hi):
            ec.process(mics[k], refs[k], out)
        best_ec = min(best_ec, (time.perf_counter() - t0) / n_frames * 1e6)
        t0 = time.perf_counter()
        for k in range(lo, hi):
            gate.frame(views[k], (k + 1) * 20, True)
            gate.allow("vad", k * 20, (k + 1) * 20)
        best_gate = min(best_gate, (time.perf_counter() - t0) / n_frames * 1e6)
        t0 = time.perf_counter()
        for k in range(lo, hi):
            step(mics[k], refs[k])  # type: ignore[operator]
        best_np = min(best_np, (time.perf_counter() - t0) / n_frames * 1e6)
    return {
        "canceller_us": best_ec,
        "gate_us": best_gate,
        "reference_us": best_np,
        "double_talk_frames": float(ec._core.dt_frames),
    }


def run_all(scenarios: list[Scenario], policies: tuple[str, ...] = POLICIES) -> list[Outcome]:
    """Every scenario under every policy."""
    return [run_scenario(sc, p) for sc in scenarios for p in policies]


def configure(p: argparse.ArgumentParser) -> None:
    """Options of ``bench quality``."""
    p.add_argument("--out", default="bench-quality", help="output directory for quality.md and quality.png")
    p.add_argument("--reduced", action="store_true", help="the small CI matrix (24 scenarios)")
    p.add_argument("--json", action="store_true", help="also print the per-policy summary as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the matrix, write the table and plot; exit 1 when an echo-aware target fails."""
    scenarios = matrix(reduced=args.reduced)
    t0 = time.perf_counter()
    outcomes = run_all(scenarios)
    elapsed = time.perf_counter() - t0
    summary = summarize(outcomes)
    cost = canceller_cost()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_markdown(summary, len(scenarios), cost, false_by_noise(outcomes))
    (out / "quality.md").write_text(table + "\n")
    (out / "outcomes.json").write_text(
        json.dumps([{**asdict(o), "scenario": asdict(o.scenario)} for o in outcomes], indent=1)
    )
    plot(outcomes, summary, out / "quality.png")
    print(table)
    print(f"\n{len(outcomes)} runs in {elapsed:.1f} s; wrote {out / 'quality.md'} and {out / 'quality.png'}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0 if all(check_targets(summary).values()) else 1


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="python -m rtvoice.bench.quality")
    configure(parser)
    sys.exit(run(parser.parse_args()))
