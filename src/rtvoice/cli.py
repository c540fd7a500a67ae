"""The ``python -m rtvoice`` command line.

Each subcommand lives in the module of its concern, which exposes ``configure(parser)`` and ``run(args) -> int``;
the module is imported only when its subcommand runs, so ``serve`` never loads the simulator or the local models.
With no subcommand, rtvoice serves.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rtvoice import __version__
from rtvoice.config import ConfigError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("rtvoice.server.main", "serve the Twilio webhook and Media Streams (the default)"),
    "simulate": ("rtvoice.sim.simulate", "place a simulated Twilio call against a running rtvoice"),
    "emulate": ("rtvoice.sim.emulate", "run a local emulator of the OpenAI Realtime or ElevenLabs APIs"),
    "demo": ("rtvoice.demo", "run an offline end-to-end demo call with the local agent"),
    "bench": ("rtvoice.bench.cli", "run the benchmark suites and print their tables"),
    "call": ("rtvoice.twilio.outbound", "place an outbound call through Twilio's REST API"),
    "calls": ("rtvoice.records_cli", "list, show and export call records and usage"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its options (keeps startup light)."""
    parser = argparse.ArgumentParser(
        prog="python -m rtvoice",
        description="rtvoice: AI phone calls over Twilio Media Streams. With no command, serves.",
    )
    parser.add_argument("--version", action="version", version=f"rtvoice {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rtvoice``; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "serve")
    command = args_list[0] if args_list[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(args_list)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args))
    except ConfigError as exc:
        print(f"rtvoice: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
