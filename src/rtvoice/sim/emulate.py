"""``python -m rtvoice emulate openai|elevenlabs``: run a vendor emulator on a local port.

Point a deployment at it with the printed variable (``OPENAI_WEBSOCKET_BASE_URL=ws://127.0.0.1:8765/v1`` or
``ELEVENLABS_BASE_URL=http://127.0.0.1:8766``) to test it without keys, network or cost. Replies are scripted
(``--reply`` in order, then ``--default-reply``); audio is the deterministic synthetic voice of
:mod:`rtvoice.sim.voice`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtvoice.sim.openai_emulator import Reply, Script


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``emulate`` options."""
    parser.add_argument("vendor", choices=("openai", "elevenlabs"), help="which API to emulate")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8765 openai, 8766 elevenlabs)")
    parser.add_argument("--reply", action="append", default=[], help="scripted reply, in order (repeatable)")
    parser.add_argument("--default-reply", default="Sure.", help="reply once the scripted replies ran out")
    parser.add_argument("--user-transcript", action="append", default=[],
                        help="what the emulator 'hears' in the caller's n-th turn (pairs with --reply)")
    parser.add_argument("--ms-per-char", type=float, default=60.0, help="synthetic speech rate (default 60)")
    parser.add_argument("--first-audio-ms", type=float, default=0.0, help="time to first audio of each reply")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="audio generation speed in x real time (0 = as fast as possible; default 1)")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--first-message", default=None, help="elevenlabs: the agent's first message")
    parser.add_argument("--agent-audio-format", default="ulaw_8000",
                        help="elevenlabs: agent_output_audio_format and user_input_audio_format")
    parser.add_argument("--session-limit-s", type=float, default=None,
                        help="openai: session duration limit in seconds (OpenAI: 3600)")


def _script(args: argparse.Namespace) -> Script:
    from rtvoice.sim.openai_emulator import Reply, Script

    replies: list[str | Reply] = []
    for i, text in enumerate(args.reply):
        heard = args.user_transcript[i] if i < len(args.user_transcript) else None
        replies.append(Reply(text=text, user_transcript=heard))
    return Script(replies, default=args.default_reply)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if args.vendor == "openai":
        from rtvoice.sim.openai_emulator import OpenAIEmulatorConfig, OpenAIFaults, OpenAIRealtimeEmulator

        cfg = OpenAIEmulatorConfig(api_key=args.api_key, ms_per_char=args.ms_per_char,
                                   first_audio_delay_ms=args.first_audio_ms, speed=args.speed)
        faults = OpenAIFaults(max_session_s=args.session_limit_s)
        emu = OpenAIRealtimeEmulator(_script(args), host=args.host, port=args.port or 8765, config=cfg,
                                     faults=faults)
        async with emu:
            print(f"OpenAI Realtime (GA) emulator listening on {emu.url}/realtime", flush=True)
            print(f"OPENAI_WEBSOCKET_BASE_URL={emu.url}", flush=True)
            await stop.wait()
    else:
        from rtvoice.sim.elevenlabs_emulator import ElevenLabsConfig, ElevenLabsEmulator

        ecfg = ElevenLabsConfig(api_key=args.api_key, ms_per_char=args.ms_per_char,
                                first_audio_delay_ms=args.first_audio_ms, speed=args.speed,
                                first_message=args.first_message,
                                agent_output_audio_format=args.agent_audio_format,
                                user_input_audio_format=args.agent_audio_format)
        el = ElevenLabsEmulator(_script(args), host=args.host, port=args.port or 8766, config=ecfg)
        async with el:
            print(f"ElevenLabs emulator listening on {el.base_url} (TTS WebSockets + Conversational AI)",
                  flush=True)
            print(f"ELEVENLABS_BASE_URL={el.base_url}", flush=True)
            await stop.wait()


def run(args: argparse.Namespace) -> int:
    """Run the emulator until interrupted."""
    from rtvoice.sim.elevenlabs_emulator import CONVAI_FORMATS

    if args.vendor == "elevenlabs" and args.agent_audio_format not in CONVAI_FORMATS:
        print(f"rtvoice emulate: --agent-audio-format must be one of {', '.join(CONVAI_FORMATS)}")
        return 2
    try:
        # the server's loop: under the load benchmark the emulator shares a core with the load generators,
        # and plain asyncio's selector loop cost it a third more CPU per message
        from rtvoice.server.main import run_loop

        run_loop(_serve(args))
    except OSError as exc:
        print(f"rtvoice emulate: cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    return 0
