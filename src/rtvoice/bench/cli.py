"""``python -m rtvoice bench [SUITE]``: run one benchmark suite and print its table (``dsp`` by default).

Each suite is a module of :mod:`rtvoice.bench` with ``configure(parser)`` and ``run(args) -> int``; only the chosen
one is imported (the load and quality suites pull in the simulator and the server).
"""

from __future__ import annotations

import argparse
import importlib

#: suite name -> (module, help)
SUITES: dict[str, tuple[str, str]] = {
    "dsp": ("rtvoice.bench.dsp", "per-frame audio core against audioop/numpy/soxr (default)"),
    "quality": ("rtvoice.bench.quality", "barge-in under echo: vad/ignore-3s/echo-aware"),
    "load": ("rtvoice.bench.load", "calls per core: simulated calls against one server core"),
}
DEFAULT_SUITE = "dsp"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the suites as subcommands; with none, the default suite runs with its own options."""
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    for name, (module, help_text) in SUITES.items():
        importlib.import_module(module).configure(sub.add_parser(name, help=help_text, description=help_text))
    importlib.import_module(SUITES[DEFAULT_SUITE][0]).configure(parser)


def run(args: argparse.Namespace) -> int:
    """Run the chosen suite; its exit code (1 when a budget failed)."""
    suite = getattr(args, "suite", None) or DEFAULT_SUITE
    return int(importlib.import_module(SUITES[suite][0]).run(args))
