"""``python -m rtvoice simulate``: place one simulated Twilio call against a running rtvoice.

Example::

    python -m rtvoice serve &                     # in another terminal
    python -m rtvoice simulate --url http://127.0.0.1:5050 --wav hello.wav --record heard.wav

It posts the signed webhook, opens the Media Stream like Twilio, speaks the WAV (by default a bundled recording of
"Hi, what are your opening hours?") after ``--say-at-ms``, waits for the bot to answer and fall silent, hangs up,
and prints the timing summary. The exit code is 0 only when the call went through cleanly and the bot answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:5050", help="where rtvoice listens (http://host:port)")
    parser.add_argument(
        "--public-url",
        default=None,
        help="rtvoice's PUBLIC_BASE_URL, over which Twilio signs (default: --url)",
    )
    parser.add_argument("--auth-token", default=None, help="Twilio auth token to sign with (default: env)")
    parser.add_argument("--wav", default=None, help="caller audio: a WAV (any rate); default a bundled question")
    parser.add_argument("--speed", type=float, default=1.0, help="stream clock speed (1 = real time)")
    parser.add_argument("--record", default=None, help="write what the caller heard to this WAV (stereo)")
    parser.add_argument("--from", dest="from_number", default="+15550100001")
    parser.add_argument("--to", dest="to_number", default="+15550100002")
    parser.add_argument("--say-at-ms", type=float, default=500.0, help="when the caller starts speaking")
    parser.add_argument(
        "--hangup-after-silence-ms",
        type=float,
        default=1500.0,
        help="hang up once the bot has answered and then been silent this long",
    )
    parser.add_argument("--max-duration-s", type=float, default=60.0, help="hang up after this long anyway")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _default_caller_audio() -> bytes:
    """The bundled caller question (8 kHz μ-law, the same fixture the demo uses): real speech, so any agent's
    VAD hears a turn (a test tone is not reliably speech to webrtcvad)."""
    from importlib.resources import files

    return files("rtvoice").joinpath("fixtures/hours.ulaw").read_bytes()


async def _main(args: argparse.Namespace) -> int:
    from rtvoice.sim.twilio import CallScript, SimulatedTwilio

    token = args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN", "")
    if not token:
        print(
            "rtvoice simulate: note: no auth token (--auth-token or TWILIO_AUTH_TOKEN), so requests are signed with "
            "a placeholder: the server must run with RTVOICE_VALIDATE_SIGNATURES=0",
            file=sys.stderr,
        )
        token = "unset"
    audio = args.wav if args.wav else _default_caller_audio()
    script = (
        CallScript()
        .say(audio, at_ms=args.say_at_ms)
        .hangup(after_bot_silence_ms=args.hangup_after_silence_ms)
    )
    sim = SimulatedTwilio(args.url, auth_token=token, public_base_url=args.public_url, speed=args.speed)
    max_ms = args.max_duration_s * 1000.0
    call = sim.start_call(
        script, from_number=args.from_number, to_number=args.to_number, max_duration_ms=max_ms
    )
    result = await call.wait_done(timeout_s=max_ms / 1000.0 / args.speed + 60.0)
    if args.record:
        result.write_wav(args.record)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        print(result.format_summary())
        if args.record:
            print(f"  recording (left: caller, right: heard): {args.record}")
    ok = result.outcome in ("completed", "closed_by_server", "max_duration") and not result.violations
    if result.first_bot_audio_ms is None:
        print("rtvoice simulate: the bot never answered", file=sys.stderr)
        ok = False
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m rtvoice simulate``; exit code 0 when the call went through cleanly."""
    if args.speed <= 0:
        print("rtvoice simulate: --speed must be positive", file=sys.stderr)
        return 2
    return asyncio.run(_main(args))
