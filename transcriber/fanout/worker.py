"""A worker process of the local pool (:mod:`transcriber.fanout.pool`): its thread and memory
settings, and its loop (:func:`worker_main`): one job, or one batch, at a time from its pipe,
through the shared per-job step (:func:`~transcriber.fanout.jobs.run_job_retrying`,
:func:`~transcriber.fanout.jobs.run_batch`), the result back.

The parent side (starting, driving and replacing workers) is :mod:`transcriber.fanout.pool`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

from transcriber.engine import EngineConfig
from transcriber.fanout.jobs import SegmentResult, run_batch, run_job_retrying

log = logging.getLogger(__name__)

#: What a worker sends once it reached its job loop (so a start-up failure is told apart).
READY = "ready"

# mallopt() parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Freed blocks up to this size stay in the worker's heap for the next window (see
#: :func:`_one_malloc_arena`).
_KEEP_FREED_BYTES = 64 * 1024 * 1024
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Cap every native thread pool in this process at ``threads`` (before torch/CT2 load)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    # numpy's OpenBLAS read its variable when this module imported numpy, before the lines above:
    # it had a thread per core, which spun after each mel filterbank product (4 % of a 10-min
    # run's CPU, taken from the other worker's core). Cap it where it already runs.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a dependency, but a worker without it still transcribes
        return
    threadpool_limits(threads, user_api="blas")
    # Not `import torch` here: a faster-whisper worker never uses it, and importing it cost each
    # worker ~2 s of CPU and ~160 MB of RSS (bench, 10 min input: tree peak 1024 -> 690 MB,
    # CPU 40 -> 36 s). torch reads OMP_NUM_THREADS when the openai-whisper engine imports it,
    # and that engine sets its thread count itself.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _one_malloc_arena() -> None:
    """Give this worker one glibc malloc arena.

    glibc gives each allocating thread an arena of its own; CTranslate2 runs the model in its
    own thread, whose arena keeps ~40 MB of freed buffers. With one arena a tiny.en int8 worker idles at
    241 MB instead of 278 MB and peaks at 293 MB instead of 330 MB per segment, for the same CPU
    time (bench/NOTES.md). A no-op where libc is not glibc.

    The encoder's activations (several MB a window) were mmap'ed and unmapped for every window,
    and the heap trimmed after it: the kernel zeroed and faulted the same pages in again each
    time (perf: 15 % of a 10-min run in the kernel, most of it page faults). Blocks under
    :data:`_KEEP_FREED_BYTES` now come from the heap, which keeps that much freed memory for
    reuse (ten segments in one process: 0.95 -> 0.07 s of system time, wall -5 %).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 1)
        libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)
    except (OSError, AttributeError):
        pass


def _with_threads(config: EngineConfig, threads: int) -> EngineConfig:
    return config if config.cpu_threads else dataclasses.replace(config, cpu_threads=threads)


def worker_main(
    conn: Connection, threads: int, preload: EngineConfig | None, engine_tries: int
) -> None:
    """A worker process: one job at a time from ``conn``, its result back, until ``None``/EOF."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _one_malloc_arena()
    limit_threads(threads)
    if preload is not None:
        try:
            from transcriber.engine import get_engine

            get_engine(_with_threads(preload, threads))
        except Exception:  # the first job reports it as a segment error, with retries
            log.warning("preloading %s failed", preload, exc_info=True)
    try:
        conn.send(READY)
    except OSError:
        return
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone: never outlive it
            return
        if job is None:
            return
        if isinstance(job, list):  # a batch: one engine call, a list of results back
            jobs = [dataclasses.replace(j, engine=_with_threads(j.engine, threads)) for j in job]
            result: SegmentResult | list[SegmentResult] = run_batch(jobs, engine_tries)
        else:
            job = dataclasses.replace(job, engine=_with_threads(job.engine, threads))
            result = run_job_retrying(job, engine_tries)
        try:
            conn.send(result)
        except OSError:
            return
