"""The worker processes that recognise and synthesise speech for every local call in this process.

Recognition (~0.05 x real time) and synthesis are CPU work: on the event loop they would delay every other
call's 20 ms frames, so they run in one :class:`~concurrent.futures.ProcessPoolExecutor` sized to the cores and
shared by all calls. Workers are started with ``spawn`` (forking a process that runs an event loop and threads
is unsafe) and load the models once, in their initializer: the pocketsphinx decoder for the scenario's domain
model and the espeak-ng engine. A call for another scenario loads its decoder lazily in each worker.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor

from rtvoice.agents.local.asr import AsrModel, Recognizer
from rtvoice.agents.local.tts import Speech, Voice, engine, synthesize

# --- in the worker process ----------------------------------------------------------------------------------

_recognizers: dict[AsrModel, Recognizer] = {}


def _recognizer(model: AsrModel) -> Recognizer:
    rec = _recognizers.get(model)
    if rec is None:
        rec = _recognizers[model] = Recognizer(model)
    return rec


def _init_worker(model: AsrModel | None) -> None:
    if model is not None:
        _recognizer(model)
    engine()


def warm(model: AsrModel) -> int:
    """Make sure this worker has ``model`` loaded; returns the worker's pid."""
    _recognizer(model)
    return os.getpid()


def recognize(model: AsrModel, pcm8k: bytes) -> str:
    """Recognise one utterance of 8 kHz int16 audio (runs in a worker)."""
    return _recognizer(model).recognize_8k(pcm8k)


def speak(text: str, voice: Voice) -> Speech:
    """Synthesise ``text`` to μ-law 8 kHz with word timings (runs in a worker)."""
    return synthesize(text, voice)


# --- in the serving process ---------------------------------------------------------------------------------

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def worker_count() -> int:
    """Workers in the pool: one per core (the recogniser is single-threaded)."""
    return max(1, os.cpu_count() or 1)


def get_pool(model: AsrModel | None = None) -> ProcessPoolExecutor:
    """The process-wide pool, created on first use with ``model`` preloaded in every worker."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=worker_count(),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(model,),
            )
        return _pool


def start_workers(model: AsrModel) -> list[Future[int]]:
    """Start every worker now (each loads the models) instead of on the first utterance."""
    pool = get_pool(model)
    return [pool.submit(warm, model) for _ in range(worker_count())]


def shutdown_pool() -> None:
    """Stop the workers (tests and the demo call this at the end; otherwise it happens at exit)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
