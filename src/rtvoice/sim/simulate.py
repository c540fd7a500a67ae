"""``python -m rtvoice simulate``: place one simulated Twilio call against a running rtvoice.

Example::

    python -m rtvoice serve &                     # in another terminal
    python -m rtvoice simulate --url http://127.0.0.1:5050 --wav hello.wav --record heard.wav

It posts the signed webhook, opens the Media Stream like Twilio, speaks the WAV (or 1 s of a test tone) after
``--say-at-ms``, waits for the bot to answer and fall silent, hangs up, and prints the timing summary.
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
    parser.add_argument("--wav", default=None, help="caller audio: a WAV (any rate); default a tone")
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


def _tone_ulaw(ms: int = 1000) -> bytes:
    import numpy as np

    from rtvoice.audio import ulaw_encode

    t = np.arange(ms * 8) / 8000.0
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    return bytes(ulaw_encode(pcm.tobytes()))


async def _main(args: argparse.Namespace) -> int:
    from rtvoice.sim.twilio import CallScript, SimulatedTwilio

    token = args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN", "")
    if not token:
        print(
            "rtvoice simulate: no auth token: pass --auth-token or set TWILIO_AUTH_TOKEN (the same as the "
            "server's, or the server must run with RTVOICE_VALIDATE_SIGNATURES=0)",
            file=sys.stderr,
        )
        token = "unset"
    audio = args.wav if args.wav else _tone_ulaw()
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
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m rtvoice simulate``; exit code 0 when the call went through cleanly."""
    if args.speed <= 0:
        print("rtvoice simulate: --speed must be positive", file=sys.stderr)
        return 2
    return asyncio.run(_main(args))
