"""``python -m rtvoice demo``: an offline end-to-end phone call with the local agent, no keys, no network.

It starts the rtvoice server in-process on loopback (a free port), with the local agent (pocketsphinx,
a scenario, espeak-ng), and has the simulated Twilio place a call whose caller speaks a scripted dialog from
the bundled fixtures (or ``--wav FILE``, your own recording). As the call runs it prints the transcript and
each turn's latency; one caller utterance interrupts a long answer (barge-in). At the end it writes the
caller-side recording (stereo WAV: caller left, what the caller heard right) and a timeline picture (PNG) into
``--out`` (default ``out/``).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rtvoice.agents.local.agent import LocalAgent, TurnTiming
    from rtvoice.config import Settings
    from rtvoice.sim.twilio import CallResult, CallScript

#: Silence after the bot's turn before the scripted caller speaks (a polite caller; also > espeak's pauses).
REPLY_GAP_MS = 700
#: How far into the long opening-hours answer the caller barges in.
BARGE_IN_AFTER_MS = 2500


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out", help="folder for the recording and timeline (default: out/)")
    parser.add_argument(
        "--wav", metavar="FILE", help="speak this recording (any WAV) to the agent instead of the script"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="run the call's clock this many times faster than real time"
    )
    parser.add_argument("--verbose", action="store_true", help="show the server's logs")


def fixture(uid: str) -> bytes:
    """A bundled caller utterance (8 kHz μ-law)."""
    return resources.files("rtvoice").joinpath(f"fixtures/{uid}.ulaw").read_bytes()


def demo_script(wav: str | None = None) -> CallScript:
    """The caller's side of the demo call."""
    from rtvoice.sim.twilio import CallScript

    script = CallScript()
    if wav is not None:
        script.say(wav, after_bot_silence_ms=REPLY_GAP_MS)
        return script.hangup(after_bot_silence_ms=2000)
    script.say(fixture("hours"), after_bot_silence_ms=REPLY_GAP_MS)
    script.say(fixture("interrupt"), after_bot_audio_ms=BARGE_IN_AFTER_MS)  # barge-in on the long answer
    script.say(fixture("name"), after_bot_silence_ms=REPLY_GAP_MS)
    script.say(fixture("yes"), after_bot_silence_ms=REPLY_GAP_MS)
    script.say(fixture("bye"), after_bot_silence_ms=REPLY_GAP_MS)
    return script  # the bot says goodbye and hangs up


@dataclass
class DemoResult:
    """What the demo observed."""

    call: CallResult
    agent: LocalAgent
    lines: list[str] = field(default_factory=list)
    wav_path: Path | None = None
    png_path: Path | None = None
    barge_ins: list[tuple[str | None, str | None]] = field(default_factory=list)
    load_s: float = 0.0

    def latencies(self) -> list[tuple[TurnTiming, float | None]]:
        """Per answered turn: its timing and when the caller first heard the reply, if heard.

        All stamps are on the server's stream clock, whose "now" is the end of the caller audio received so
        far (the agent's ``speech_end_ms`` and ``first_audio_ms``, the call's ``TurnLatency``). The simulated
        Twilio sends each 20 ms frame at its *start* time (its clock runs one frame behind the server's), so
        a reply it starts playing at its time t was heard at server time t + 20 ms: comparing its raw
        playout stamps with the server's made "heard" up to 20 ms earlier than "sent".
        """
        from rtvoice.vad import FRAME_MS

        out: list[tuple[TurnTiming, float | None]] = []
        for turn in self.agent.turns:
            heard = None
            if turn.first_audio_ms is not None:
                starts = [
                    s + FRAME_MS for s, _ in self.call.bot_segments if s + FRAME_MS >= turn.first_audio_ms
                ]
                heard = min(starts) if starts else None
            out.append((turn, heard))
        return out


class _Printer:
    def __init__(self, stream: TextIO, clock: Any) -> None:
        self.stream = stream
        self.clock = clock  # () -> stream ms
        self.lines: list[str] = []

    def __call__(self, who: str, text: str, note: str = "") -> None:
        line = f"[{self.clock() / 1000:6.2f} s] {who:7s} {text}" + (f"   ({note})" if note else "")
        self.lines.append(line)
        print(line, file=self.stream, flush=True)


async def _load_models(settings: Settings, stream: TextIO) -> float:
    from rtvoice.agents.local import pool
    from rtvoice.agents.local.agent import load_runtime

    t0 = time.perf_counter()
    task = asyncio.ensure_future(load_runtime(settings.scenario_path))
    spinner = "|/-\\"
    i = 0
    tty = stream.isatty()
    while not task.done():
        if tty:
            elapsed = time.perf_counter() - t0
            print(
                f"\rLoading speech models (domain language model, {pool.worker_count()} worker processes "
                f"with pocketsphinx + espeak-ng) {spinner[i % 4]} {elapsed:4.1f} s",
                end="",
                file=stream,
                flush=True,
            )
        i += 1
        await asyncio.wait({task}, timeout=0.1)
    runtime = task.result()
    took = time.perf_counter() - t0
    print(
        f"\rLoaded speech models in {took:.1f} s: scenario {runtime.scenario.name!r}, "
        f"{runtime.model.vocabulary_size}-word domain vocabulary, {pool.worker_count()} worker processes."
        + " " * 10,
        file=stream,
        flush=True,
    )
    return took


async def run_demo(
    *,
    out_dir: str | Path = "out",
    wav: str | None = None,
    speed: float = 1.0,
    settings: Settings | None = None,
    stream: TextIO | None = None,
    timeout_s: float = 300.0,
) -> DemoResult:
    """Run the demo call; returns what happened (the CLI prints it, tests check it)."""
    from rtvoice.agents.local.agent import END_OF_TURN_MS, LocalAgent, TurnTiming
    from rtvoice.call.registry import CallRegistry
    from rtvoice.config import Settings
    from rtvoice.routes import build_app
    from rtvoice.server.http import start_server
    from rtvoice.sim.twilio import SimulatedCall, SimulatedTwilio

    out = sys.stdout if stream is None else stream
    base = settings or Settings()
    token = secrets.token_hex(16)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = base.with_overrides(
        host="127.0.0.1",
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        twilio_auth_token=token,
        stream_secret="",
        agent="local",
    )
    load_s = await _load_models(settings, out)

    holder: dict[str, Any] = {}
    barge_ins: list[tuple[str | None, str | None]] = []

    def clock() -> float:
        call: SimulatedCall | None = holder.get("call")
        return call.now_ms if call is not None else 0.0

    say = _Printer(out, clock)

    def listen(kind: str, data: object) -> None:
        if kind == "bot":
            assert isinstance(data, tuple)
            say("bot", data[1])
        elif kind == "caller" and isinstance(data, TurnTiming):
            say(
                "caller",
                data.caller_text,
                f"end of speech at {data.speech_end_ms / 1000:.2f} s, "
                f"recognised in {data.asr_s * 1000:.0f} ms",
            )
        elif kind == "first_audio" and isinstance(data, TurnTiming):
            assert data.first_audio_s is not None
            assert data.first_audio_ms is not None
            say(
                "",
                f"-> first bot audio sent {data.first_audio_ms - data.speech_end_ms} ms after the end of speech "
                f"({data.first_audio_s * 1000:.0f} ms after the turn was detected by "
                f"{END_OF_TURN_MS} ms of silence)",
            )
        elif kind == "barge_in":
            assert isinstance(data, tuple)
            barge_ins.append(data)
            heard = data[1]
            say(
                "BARGE-IN",
                "the caller interrupted; the bot's memory keeps only what was heard: "
                + (repr(heard) if heard is not None else "(nothing was cut off)"),
            )

    agents: list[LocalAgent] = []

    def factory(s: Settings) -> LocalAgent:
        agent = LocalAgent(s, listener=listen)
        agents.append(agent)
        return agent

    registry = CallRegistry(settings, agent_factory=factory)
    server = await start_server(build_app(settings, registry), settings, sock=sock)
    try:
        twilio = SimulatedTwilio(f"http://127.0.0.1:{port}", auth_token=token, speed=speed)
        print(
            f"rtvoice is listening on http://127.0.0.1:{port}; the simulated Twilio places a call"
            + (f" speaking {wav}" if wav else " (scripted caller: opening hours, barge-in, booking, goodbye)")
            + (f", clock x{speed:g}" if speed != 1 else "")
            + ".\n",
            file=out,
            flush=True,
        )
        call = twilio.start_call(demo_script(wav))
        holder["call"] = call
        result = await call.wait_done(timeout_s)
    finally:
        await registry.shutdown()
        await asyncio.wait_for(server.shutdown(0.0), 20)
    if not agents:
        raise RuntimeError(f"the call never reached the agent ({result.outcome}: {result.close_reason})")
    demo = DemoResult(result, agents[0], say.lines, barge_ins=barge_ins, load_s=load_s)
    # matplotlib and the WAV writer block for ~1 s: off the loop (nothing else runs now, but keep it clean)
    await asyncio.to_thread(_write_outputs, demo, Path(out_dir), settings)
    return demo


def _write_outputs(demo: DemoResult, folder: Path, settings: Settings) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    demo.wav_path = folder / "demo-call.wav"
    demo.call.write_wav(demo.wav_path, stereo=True)
    demo.png_path = folder / "demo-timeline.png"
    write_timeline(demo, demo.png_path, settings)


def latency_table(demo: DemoResult) -> str:
    """The per-turn latency table (stream ms)."""
    rows = [
        f"{'turn':>4}  {'caller said (as recognised)':44s} {'end->sent':>10} {'end->heard':>11} {'ASR':>7}",
    ]
    for i, (turn, heard) in enumerate(demo.latencies(), 1):
        sent = "-" if turn.first_audio_ms is None else f"{turn.first_audio_ms - turn.speech_end_ms} ms"
        heard_s = "-" if heard is None else f"{heard - turn.speech_end_ms:.0f} ms"
        text = turn.caller_text if len(turn.caller_text) <= 44 else turn.caller_text[:41] + "..."
        rows.append(f"{i:>4}  {text:44s} {sent:>10} {heard_s:>11} {turn.asr_s * 1000:>4.0f} ms")
    return "\n".join(rows)


def write_timeline(demo: DemoResult, path: Path, settings: Settings) -> None:
    """The call timeline: caller and bot waveforms, the caller VAD decisions, marks, barge-in and clear."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rtvoice.audio import ulaw_decode
    from rtvoice.vad import SpeechEnd, SpeechStart, VoiceActivity

    call = demo.call
    silence = bytes([0xFF] * 8)
    sent = np.asarray(ulaw_decode(bytes(call.sent) or silence), dtype=np.int16)
    heard = np.asarray(ulaw_decode(bytes(call.heard) or silence), dtype=np.int16)
    # The call's VAD decisions, recomputed on what the caller sent with the server's settings.
    vad = VoiceActivity.from_settings(settings)
    spans: list[tuple[float, float]] = []
    onset: float | None = None
    for i in range(0, len(sent) - 159, 160):
        ev = vad.process(sent[i : i + 160].tobytes(), i // 8)
        if isinstance(ev, SpeechStart):
            onset = ev.onset_ms
        elif isinstance(ev, SpeechEnd) and onset is not None:
            spans.append((onset / 1000, ev.end_ms / 1000))
            onset = None
    if onset is not None:
        spans.append((onset / 1000, len(sent) / 8000))

    fig, (ax_c, ax_b) = plt.subplots(2, 1, figsize=(14, 6), sharex=True)
    ax_c.plot(np.arange(len(sent)) / 8000, sent, lw=0.3, color="tab:blue")
    for a, b in spans:
        ax_c.axvspan(a, b, color="tab:green", alpha=0.15, lw=0)
    ax_c.set_ylabel("caller (sent)")
    ax_c.set_title(
        "rtvoice demo call: green = caller VAD speech, | = end of speech, ^ = first bot audio sent, "
        "red = barge-in"
    )
    ax_b.plot(np.arange(len(heard)) / 8000, heard, lw=0.3, color="tab:orange")
    ax_b.set_ylabel("bot (heard)")
    ax_b.set_xlabel("stream time (s)")
    for turn in demo.agent.turns:
        ax_c.axvline(turn.speech_end_ms / 1000, color="k", lw=0.8)
        if turn.first_audio_ms is not None:
            ax_b.plot([turn.first_audio_ms / 1000], [-30000], marker="^", color="k")
    for mark in call.marks:
        if mark.echoed_ms is not None:
            ax_b.plot([mark.echoed_ms / 1000], [31000], marker="|", color="tab:gray", ms=6)
    for clear in call.clears:
        for ax in (ax_c, ax_b):
            ax.axvline(clear.at_ms / 1000, color="red", lw=1.5)
        ax_b.annotate(
            f"barge-in: clear ({clear.discarded_ms:.0f} ms dropped)",
            (clear.at_ms / 1000, 25000),
            color="red",
            fontsize=8,
            xytext=(4, 0),
            textcoords="offset points",
        )
    for ax in (ax_c, ax_b):
        ax.set_ylim(-33000, 33000)
        ax.set_yticks([])
    ax_b.set_xlim(0, max(len(sent), len(heard)) / 8000 + 0.2)
    echoed = sum(m.echoed_ms is not None for m in call.marks)
    fig.text(0.01, 0.005, f"marks echoed by Twilio (grey ticks): {echoed}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import logging

    from rtvoice.agents.local import pool
    from rtvoice.config import Settings

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.wav is not None and not Path(args.wav).is_file():
        print(f"rtvoice demo: --wav {args.wav}: no such file", file=sys.stderr)
        return 2
    if args.speed <= 0:
        print("rtvoice demo: --speed must be positive", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        demo = asyncio.run(run_demo(out_dir=args.out, wav=args.wav, speed=args.speed, settings=settings))
    finally:
        pool.shutdown_pool()
    call = demo.call
    ended = f"{call.outcome} ({call.closed_by or '-'})"
    print(f"\nCall ended: {ended}, {call.duration_ms / 1000:.1f} s of stream time.")
    from rtvoice.agents.local.agent import END_OF_TURN_MS

    print(
        "\nPer-turn latency (ms after the caller's end of speech, on the stream clock; the turn is detected "
        f"after {END_OF_TURN_MS} ms of silence, then recognised (ASR), answered and synthesised):"
    )
    print(latency_table(demo))
    print(f"\nBarge-ins: {len(call.clears)} clear(s) sent to Twilio.")
    print(f"Recording (stereo: caller left, what the caller heard right): {demo.wav_path}")
    print(f"Timeline: {demo.png_path}")
    return 0
