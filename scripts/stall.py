"""Run a command while freezing it for short random stalls, the way a busy shared machine does.

    STALL_MS=60 EVERY_MS=150 .venv/bin/python scripts/stall.py .venv/bin/python -m pytest -q tests/test_echo_e2e.py

Every ~EVERY_MS (0.3-1.7x, random) the command's whole process group gets SIGSTOP for ~STALL_MS (0.2-1.8x)
and then SIGCONT. Busy-loop CPU hogs rarely stall a test process for long (the scheduler shares the cores
fairly); this does, on demand, so wall-clock assumptions in a test show up in a handful of runs instead of
one CI run in fifteen. Exit status: the command's.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    stall_ms = float(os.environ.get("STALL_MS", "40"))
    every_ms = float(os.environ.get("EVERY_MS", "150"))
    proc = subprocess.Popen(argv, start_new_session=True)
    rng = random.Random()
    try:
        while proc.poll() is None:
            time.sleep(rng.uniform(0.3, 1.7) * every_ms / 1000)
            try:
                os.killpg(proc.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0.2, 1.8) * stall_ms / 1000)
            finally:
                # never leave the command frozen (Ctrl-C while it was stopped included)
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    break
    except KeyboardInterrupt:
        proc.terminate()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
