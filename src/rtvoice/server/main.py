"""``python -m rtvoice serve``: run the server, one process or N workers sharing the port.

- One worker (default): this process binds, builds the app and serves on uvloop (plain asyncio if uvloop is
  missing).
- ``--workers N`` (N > 1): this process is a supervisor. It starts N copies of itself (``serve --worker-of
  PID``), each binding the same host:port with ``SO_REUSEPORT`` so the kernel spreads connections over them;
  it forwards SIGTERM/SIGINT to them, restarts a worker that dies unexpectedly (giving up if workers keep
  dying at startup), and exits 0 when they all exited 0. Metrics of all workers are aggregated through
  prometheus-client's multiprocess mode (see :mod:`rtvoice.metrics`).

GC: once serving, ``gc.freeze()`` and a larger young generation (see :func:`_tune_gc`).

Graceful shutdown (SIGTERM or SIGINT): stop accepting, run ``App.on_shutdown``, let active WebSockets (calls)
run for up to ``drain_timeout_s`` (``--drain-timeout`` / ``RTVOICE_DRAIN_TIMEOUT``), close what remains with
1001, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from rtvoice.config import AGENT_MODES, LOG_LEVELS, ConfigError, Settings, _parse_url

log = logging.getLogger("rtvoice.server")

DEFAULT_APP = "rtvoice.routes:build_app"
#: A worker that dies within this many seconds of its start counts as a startup failure.
_STARTUP_GRACE_S = 2.0
#: Consecutive startup failures after which the supervisor gives up.
_MAX_STARTUP_FAILURES = 5

T = TypeVar("T")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options; each overrides the matching environment variable."""
    parser.add_argument("--host", help="interface to bind (RTVOICE_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="TCP port (RTVOICE_PORT, default 5050; 0 picks a free one)")
    parser.add_argument("--workers", type=int, help="worker processes sharing the port (RTVOICE_WORKERS)")
    parser.add_argument(
        "--public-base-url",
        help="the https URL Twilio reaches, e.g. https://voice.example.com (PUBLIC_BASE_URL)",
    )
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="DEVELOPMENT ONLY: do not check X-Twilio-Signature (RTVOICE_VALIDATE_SIGNATURES=0)",
    )
    parser.add_argument("--agent", choices=AGENT_MODES, help="the AI agent mode (RTVOICE_AGENT)")
    parser.add_argument("--max-connections", type=int, help="open connections cap (RTVOICE_MAX_CONNECTIONS)")
    parser.add_argument(
        "--max-calls",
        type=int,
        help="calls each worker takes at once, then new ones get a busy signal (RTVOICE_MAX_CALLS; 0: no limit)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, help="seconds calls may continue after SIGTERM (RTVOICE_DRAIN_TIMEOUT)"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="(RTVOICE_LOG_LEVEL)")
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        help=f"app factory 'module:function' taking Settings (default {DEFAULT_APP}; "
        "rtvoice.server.echo_app:build_app serves an echo app for plumbing tests)",
    )
    parser.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``Settings.from_env()`` with the command-line flags applied on top."""
    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port {args.port}: expected 0 to 65535")
        changes["port"] = args.port
    if args.workers is not None:
        if not 1 <= args.workers <= 256:
            raise ConfigError(f"--workers {args.workers}: expected 1 to 256")
        changes["workers"] = args.workers
    if args.public_base_url is not None:
        changes["public_base_url"] = _parse_url("--public-base-url", args.public_base_url, ("https", "http"))
    if args.no_validate:
        changes["validate_signatures"] = False
    if args.agent is not None:
        changes["agent"] = args.agent
    if args.max_connections is not None:
        if args.max_connections < 1:
            raise ConfigError(f"--max-connections {args.max_connections}: expected at least 1")
        changes["max_connections"] = args.max_connections
    if args.max_calls is not None:
        if not 0 <= args.max_calls <= 1_000_000:
            raise ConfigError(f"--max-calls {args.max_calls}: expected 0 (no limit) to 1000000")
        changes["max_calls"] = args.max_calls
    if args.drain_timeout is not None:
        if not 0 <= args.drain_timeout <= 3600:
            raise ConfigError(f"--drain-timeout {args.drain_timeout}: expected 0 to 3600 seconds")
        changes["drain_timeout_s"] = args.drain_timeout
    if args.log_level is not None:
        changes["log_level"] = args.log_level
    return settings.with_overrides(**changes) if changes else settings


def _settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that carry ``settings``' serving fields to worker processes."""
    env = {
        "RTVOICE_HOST": settings.host,
        "RTVOICE_PORT": str(settings.port),
        "RTVOICE_WORKERS": "1",
        "RTVOICE_VALIDATE_SIGNATURES": "1" if settings.validate_signatures else "0",
        "RTVOICE_AGENT": settings.agent,
        "RTVOICE_MAX_CONNECTIONS": str(settings.max_connections),
        "RTVOICE_MAX_CALLS": str(settings.max_calls),
        "RTVOICE_OVERLOAD_LAG_MS": str(settings.overload_lag_ms),
        "RTVOICE_DRAIN_TIMEOUT": str(settings.drain_timeout_s),
        "RTVOICE_LOG_LEVEL": settings.log_level,
    }
    if settings.public_base_url:
        env["PUBLIC_BASE_URL"] = settings.public_base_url
    return env


def _load_factory(spec: str) -> Callable[[Settings], Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app {spec!r}: expected 'module:function'")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if not callable(factory):
        raise ConfigError(f"--app {spec!r}: {attr} is not a function of {module_name}")
    return factory  # type: ignore[no-any-return]


def _setup_logging(settings: Settings) -> None:
    """rtvoice's structured logs (JSON lines or text, secrets redacted) from :mod:`rtvoice.logs`."""
    try:
        from rtvoice.logs import configure_logging
    except ImportError:  # pragma: no cover - logs.py is part of the package; plain logging as a fallback
        pass
    else:
        configure_logging(settings)
        return
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
            stream=sys.stderr,
        )
    else:
        root.setLevel(settings.log_level)


def _announce(settings: Settings, workers: int) -> None:
    base = settings.effective_public_base_url
    print(f"rtvoice: serving on {settings.host}:{settings.port} with {workers} worker(s)", flush=True)
    print(f"rtvoice: webhook URL (Twilio console, 'A call comes in'): {base}/incoming-call", flush=True)
    print(f"rtvoice: media stream URL: {settings.media_stream_url}", flush=True)
    if not settings.public_base_url:
        print("rtvoice: PUBLIC_BASE_URL is not set; Twilio cannot reach a loopback URL", flush=True)
    if not settings.validate_signatures:
        print("rtvoice: WARNING: Twilio signature validation is OFF (development only)", flush=True)


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def run(args: argparse.Namespace) -> int:
    """Run ``serve``; returns the exit code (0 after a graceful shutdown)."""
    settings = settings_from_args(args)
    _setup_logging(settings)
    factory = _load_factory(args.app)
    if args.worker_of is None:  # a bad agent configuration (e.g. scenario file) fails here, not at a call
        from rtvoice.agents.registry import preflight

        preflight(settings)
    if args.worker_of is not None:
        return int(run_loop(_serve(settings, factory, worker=True)))
    if settings.workers > 1:
        return _supervise(settings, args.app)
    return int(run_loop(_serve(settings, factory, worker=False)))


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (the serving loop: cheaper per socket event than asyncio's selector loop), or on
    asyncio where uvloop is missing."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(settings: Settings, factory: Callable[[Settings], Any], *, worker: bool) -> int:
    from rtvoice.server.http import start_server

    sock = _bind(settings.host, settings.port, reuse_port=worker)
    port = int(sock.getsockname()[1])
    if port != settings.port:
        settings = settings.with_overrides(port=port)  # port 0: the URLs must name the real port
    try:
        app = factory(settings)
    except BaseException:
        sock.close()
        raise
    server = await start_server(app, settings, sock=sock)
    _tune_gc()
    if worker:
        print(f"rtvoice: worker {os.getpid()} listening on {settings.host}:{port}", flush=True)
    else:
        _announce(settings, 1)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1f s", settings.drain_timeout_s)
    await server.shutdown()
    log.info("stopped")
    return 0


#: Young-generation GC threshold of a serving process (CPython's default: 700 allocations). Per-frame objects
#: die by reference counting and do not trigger collections; what does is calls being set up (SDK objects,
#: buffers), and with hundreds of calls each young collection also walks every object of the calls set up
#: since the last older collection. A larger young generation means far fewer collections during ramps.
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """After start-up: ``gc.freeze()`` moves everything alive now (modules, the OpenAI SDK's pydantic models,
    the app) to the permanent generation, so no collection ever walks it again (a full collection at 500
    calls took ~100 ms before, stalling every call), and the young generation is made larger (see
    ``GC_GEN0_THRESHOLD``). Objects stay collectable by reference counting; only the cycle detector skips
    the frozen ones."""
    import gc

    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _supervise(settings: Settings, app_spec: str) -> int:
    """Start ``settings.workers`` worker processes on one port; forward signals; restart crashed workers."""
    reserve: socket.socket | None = None
    if settings.port == 0:
        # Pick the port once for all workers; the reserving socket never listens, so it receives no
        # connections.
        reserve = _bind(settings.host, 0, reuse_port=True)
        settings = settings.with_overrides(port=int(reserve.getsockname()[1]))
    metrics_dir = tempfile.mkdtemp(prefix="rtvoice-metrics-")
    env = dict(os.environ)
    env.update(_settings_env(settings))
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    cmd = [sys.executable, "-m", "rtvoice", "serve", "--app", app_spec, "--worker-of", str(os.getpid())]

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def spawn() -> tuple[subprocess.Popen[bytes], float]:
        return subprocess.Popen(cmd, env=env), time.monotonic()

    _announce(settings, settings.workers)
    workers = [spawn() for _ in range(settings.workers)]
    failures = 0
    exit_code = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, (proc, started) in enumerate(workers):
                rc = proc.poll()
                if rc is None or stopping:
                    continue
                _mark_dead(proc.pid, metrics_dir)
                quick = time.monotonic() - started < _STARTUP_GRACE_S
                failures = failures + 1 if quick else 0
                print(f"rtvoice: worker {proc.pid} exited with {rc}", file=sys.stderr, flush=True)
                if failures >= _MAX_STARTUP_FAILURES:
                    print("rtvoice: workers keep failing at startup; stopping", file=sys.stderr, flush=True)
                    stopping = True
                    exit_code = 1
                    break
                time.sleep(min(1.0, 0.1 * 2**failures))
                workers[i] = spawn()
        for proc, _ in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.drain_timeout_s + 15.0
        for proc, _ in workers:
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"rtvoice: worker {proc.pid} did not stop; killing it", file=sys.stderr, flush=True)
                proc.kill()
                rc = proc.wait()
            if rc != 0 and exit_code == 0:
                exit_code = 1
    finally:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.kill()
        if reserve is not None:
            reserve.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges from the aggregated metrics."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
    except Exception:  # the directory may not exist yet if the worker died at import
        pass
