"""Fan segment jobs out to Whisper workers; results come back as they complete (out of order).

Three local mappers implement :class:`Mapper`; the Modal mappers live in ``app/`` and implement
the same protocol around the same :func:`run_job`:

- :class:`InlineMapper`: this process, one segment at a time in a thread (tests, tiny inputs).
- :class:`LocalPoolMapper`: a pool of worker processes, shareable by concurrent jobs.
- :class:`SequentialMapper`: one segment at a time in index order over any other mapper, each
  with the previous text as ``initial_prompt`` (``mode="sequential"``).

Why a hand-rolled pool rather than ``concurrent.futures.ProcessPoolExecutor``: the executor
marks itself broken and fails *every* pending future when one worker dies (a segment that
crashes CTranslate2, an OOM kill), cannot tell which job the dead worker held, and cannot stop
a running job. Here each worker process has its own pipe and one job at a time, driven by one
thread in this process: a dead worker is replaced and exactly its job is retried, a cancelled
map's queued jobs are dropped, and closing the pool kills exactly its own processes.

Fault injection (a test hook, off unless set): ``STREAMSCRIBE_FAULTS`` makes :func:`run_job` fail
on purpose wherever it runs (a pool worker inherits the variable from the server), so fault
tests drive the real service. Rules are ``;``-separated ``ACTION:key=value,...``; today the one
action is ``raise``, which raises :class:`InjectedFault` where the engine is called, exactly as
an engine error would. Keys: ``index=N`` (only segment N; default every segment) and
``times=K`` (only the first K matching calls in each process; default every call). Example:
``STREAMSCRIBE_FAULTS="raise:index=1;raise:index=3,times=1"`` fails segment 1 for good and
segment 3 once (its retry succeeds). The variable is read once per process, on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import dataclasses
import functools
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from typing import Any, Protocol

import numpy as np

from transcriber.engine import EngineConfig, Piece, TranscribeOptions

log = logging.getLogger(__name__)

MODES = ("parallel", "sequential")

#: What a mapper does with a job that is already running when its map is closed (its consumer
#: left): ``finish`` lets the engine finish the segment and drops the result (the worker stays
#: warm for the next job); ``kill`` stops it at once where the mapper can (a pool kills the
#: worker process and starts a fresh one, which reloads the model).
ABANDON = ("finish", "kill")


@dataclass
class SegmentJob:
    """Everything a worker needs for one segment, and nothing of the rest of the file."""

    index: int
    #: Absolute offset of ``audio`` in the source, seconds.
    start: float
    end: float
    audio: np.ndarray  # 16 kHz mono float32
    engine: EngineConfig
    options: TranscribeOptions
    silent: bool = False
    #: One of :data:`ABANDON`: what happens to this job if its map is closed while it runs.
    #: A property of the job rather than a ``map`` argument so that it passes unchanged through
    #: any mapper that wraps another (:class:`SequentialMapper`, a test's recording mapper).
    abandon: str = "finish"
    #: The speech gate's map of this segment (:class:`transcriber.vad.SpeechMap`): only its
    #: speech regions are decoded. None: the gate is off, decode it whole.
    speech: Any = None


@dataclass
class SegmentResult:
    index: int
    start: float
    end: float
    #: Pieces with absolute timestamps (offset by ``start``).
    pieces: list[Piece] = field(default_factory=list)
    #: Set when the segment failed; the job goes on.
    error: str | None = None
    silent: bool = False
    #: Seconds the worker spent on it.
    elapsed: float = 0.0
    #: Tries it took (engine retries and worker replacements included).
    attempts: int = 1
    #: Pieces the speech gate dropped (non-speech, see :mod:`transcriber.vad`).
    dropped: int = 0

    @property
    def text(self) -> str:
        return " ".join(p.text.strip() for p in self.pieces if p.text.strip())


def _absolute(piece: Piece, start: float, end: float) -> Piece:
    """``piece`` moved by ``start`` and clamped into ``[start, end]``.

    Engines see a padded 30 s window, so a last timestamp can overshoot the real audio; the
    clamp keeps neighbouring segments from overlapping.
    """

    def clamp(t: float, low: float = start) -> float:
        return min(max(start + t, low), end)

    words = None
    if piece.words is not None:
        words = [dataclasses.replace(w, start=clamp(w.start), end=clamp(w.end)) for w in piece.words]
    p_start = clamp(piece.start)
    return dataclasses.replace(
        piece, start=p_start, end=clamp(piece.end, p_start), words=words
    )


# -- fault injection (a test hook; see the module docstring) -------------------------------------

FAULTS_ENV = "STREAMSCRIBE_FAULTS"


class InjectedFault(RuntimeError):
    """Raised where the engine runs when a ``STREAMSCRIBE_FAULTS`` rule matches the segment."""


@dataclass
class _FaultRule:
    action: str
    index: int | None = None
    #: Matching calls left in this process (None: unlimited).
    times: int | None = None


def parse_faults(spec: str) -> list[_FaultRule]:
    """``raise:index=1;raise:index=3,times=1`` -> rules; ``ValueError`` names a bad one."""
    rules = []
    for text in filter(None, (part.strip() for part in spec.split(";"))):
        action, _, params = text.partition(":")
        if action.strip() != "raise":
            raise ValueError(f"{FAULTS_ENV}: unknown action in {text!r} (known: raise)")
        rule = _FaultRule(action.strip())
        for pair in filter(None, (item.strip() for item in params.split(","))):
            key, _, value = pair.partition("=")
            if key.strip() not in ("index", "times") or not value.strip().isdigit():
                raise ValueError(f"{FAULTS_ENV}: bad setting {pair!r} in {text!r} (index=N, times=K)")
            setattr(rule, key.strip(), int(value))
        rules.append(rule)
    return rules


@functools.cache
def _fault_rules() -> list[_FaultRule]:
    """This process's rules, parsed on first use; [] when the variable is unset (the normal case)."""
    spec = os.environ.get(FAULTS_ENV, "").strip()
    if not spec:
        return []
    rules = parse_faults(spec)
    log.warning("fault injection is on (%s=%r): segments will fail on purpose", FAULTS_ENV, spec)
    return rules


def _inject_faults(index: int) -> None:
    for rule in _fault_rules():
        if rule.index not in (None, index) or rule.times == 0:
            continue
        if rule.times is not None:
            rule.times -= 1
        raise InjectedFault(f"injected fault on segment {index} ({FAULTS_ENV})")


def run_job(job: SegmentJob) -> SegmentResult:
    """Transcribe one job with the (cached, once-per-process) engine for ``job.engine``.

    Shared by every mapper, local and Modal: skips silent segments, makes timestamps absolute,
    turns an engine exception into ``SegmentResult.error``.
    """
    began = time.perf_counter()
    result = SegmentResult(job.index, job.start, job.end, silent=job.silent)
    if not job.silent:
        try:
            from transcriber.engine import get_engine  # the engine cache lives in engine.py
            from transcriber.vad import transcribe_gated

            _inject_faults(job.index)  # a no-op unless STREAMSCRIBE_FAULTS is set
            gated = transcribe_gated(get_engine(job.engine), job.audio, job.options, job.speech)
            result.pieces = [_absolute(p, job.start, job.end) for p in gated.pieces]
            result.dropped = gated.dropped
        except Exception as exc:  # any engine failure is this segment's, not the job's
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result.error = f"the speech engine failed on this segment ({type(exc).__name__}" + (
                f": {detail[:200]})" if detail else ")"
            )
            log.warning("segment %d: %s", job.index, result.error)
            log.debug("segment %d failed", job.index, exc_info=True)
    result.elapsed = time.perf_counter() - began
    return result


def run_job_retrying(job: SegmentJob, tries: int = 2) -> SegmentResult:
    """:func:`run_job`, again when the engine raised (a transient failure gets a second chance)."""
    elapsed = 0.0
    for attempt in range(1, max(1, tries) + 1):
        result = run_job(job)
        elapsed += result.elapsed
        result.attempts, result.elapsed = attempt, elapsed
        if result.error is None:
            break
    if result.error is not None and result.attempts > 1:
        result.error += f"; tried {result.attempts} times"
    return result


class Mapper(Protocol):
    def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        """Consume jobs as they arrive, yield results as they complete; bounded in-flight work.

        Closing the returned async generator (or cancelling its consumer) stops queued work;
        running work goes on or stops according to each job's ``abandon`` (:data:`ABANDON`),
        where the mapper can stop it (else it finishes and its result is dropped).
        ``map`` may be called again (and concurrently) on the same mapper.
        """
        ...

    async def aclose(self) -> None:
        """Release workers (processes, containers)."""
        ...


def mapper_for_mode(mapper: Mapper, mode: str) -> Mapper:
    """The mapper that runs ``mode`` on ``mapper``'s workers.

    ``parallel`` is ``mapper`` itself. For ``sequential``, a mapper with its own sequential path
    (a ``sequential()`` method, e.g. Modal's ``remote_gen`` mapper) provides it; any other is
    wrapped in :class:`SequentialMapper`, which borrows its workers one segment at a time. So a
    server holds one parallel mapper and serves both modes from it.
    """
    if mode == "parallel":
        return mapper
    if mode == "sequential":
        own = getattr(mapper, "sequential", None)
        return own() if callable(own) else SequentialMapper(mapper)
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


class InlineMapper:
    """Runs every job in this process, one at a time, in a thread so the event loop stays free.

    A cancelled map returns at once; the segment already in the engine finishes in its thread
    (a thread cannot be killed, so ``abandon="kill"`` cannot be honoured) and its result is
    dropped.
    """

    def __init__(self, *, engine_tries: int = 2) -> None:
        self.engine_tries = engine_tries

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        async for job in jobs:
            yield await asyncio.to_thread(run_job_retrying, job, self.engine_tries)

    async def aclose(self) -> None:
        pass


# -- the local process pool --------------------------------------------------------------------

#: What a worker sends once it reached its job loop (so a start-up failure is told apart).
_READY = "ready"

_M_ARENA_MAX = -8  # mallopt() parameter number, from glibc's malloc.h
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def default_split(cpus: int | None = None) -> tuple[int, int]:
    """``(workers, threads)`` filling ``cpus`` cores without oversubscribing them.

    Whisper's per-segment work parallelises better across processes than across the intra-op
    threads of one engine (a segment's decoder loop is mostly serial, and threads that wait on
    each other suffer most when the machine is busy), so small machines get one thread per
    worker. Measured on 2 cores (tiny.en int8, greedy, 96 s of JFK clips, 4 segments, warm
    workers, median of 3): 2 workers x 1 thread 8.1 s wall / 7.8 CPU-s; 1 x 2 9.9 s / 8.8 CPU-s.
    Above 4 cores, two threads per worker halve the number of loaded models (memory: each
    worker holds one) for a small loss of throughput.
    """
    if cpus is None:
        usable = getattr(os, "sched_getaffinity", None)  # honours taskset/cgroup CPU pinning
        cpus = len(usable(0)) if usable else os.cpu_count() or 1
    cpus = max(1, cpus)
    threads = 1 if cpus <= 4 else 2
    return max(1, cpus // threads), threads


def _limit_threads(threads: int) -> None:
    """Cap every native thread pool in this process at ``threads`` (before torch/CT2 load)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
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
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


def _with_threads(config: EngineConfig, threads: int) -> EngineConfig:
    return config if config.cpu_threads else dataclasses.replace(config, cpu_threads=threads)


def _worker_main(
    conn: Connection, threads: int, preload: EngineConfig | None, engine_tries: int
) -> None:
    """A worker process: one job at a time from ``conn``, its result back, until ``None``/EOF."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _one_malloc_arena()
    _limit_threads(threads)
    if preload is not None:
        try:
            from transcriber.engine import get_engine

            get_engine(_with_threads(preload, threads))
        except Exception:  # the first job reports it as a segment error, with retries
            log.warning("preloading %s failed", preload, exc_info=True)
    try:
        conn.send(_READY)
    except OSError:
        return
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone: never outlive it
            return
        if job is None:
            return
        job = dataclasses.replace(job, engine=_with_threads(job.engine, threads))
        result = run_job_retrying(job, engine_tries)
        try:
            conn.send(result)
        except OSError:
            return


@dataclass
class _Task:
    job: SegmentJob
    future: concurrent.futures.Future
    #: Set when the map that submitted it was closed while it ran.
    abandoned: bool = False


class _Worker:
    def __init__(self, process: Any, conn: Connection) -> None:
        self.process, self.conn = process, conn
        self.pid: int = process.pid
        #: Whether the process got as far as its job loop (else it failed to start).
        self.ready = False

    def stop(self, grace: float = 2.0) -> None:
        """Ask nicely, then terminate, then kill; always reaps the process."""
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process.close()


_DIED, _STOPPED = object(), object()


class LocalPoolMapper:
    """Worker processes on this machine, each with the engine loaded once.

    ``workers`` × ``threads`` default to :func:`default_split` of the usable cores. Workers are
    started with ``spawn`` (never ``fork``: forking a process in which torch/CTranslate2 threads
    exist can deadlock the child), cap their native thread pools at ``threads``, and load
    ``preload`` (if given) as soon as they start so the first segment does not wait for it.

    One pool may serve several concurrent :meth:`map` calls (a web server shares one across
    requests). Each map keeps at most ``max_in_flight`` jobs submitted (default ``2 × workers``:
    one running and one queued per worker) and stops pulling jobs until one finishes, which is
    the backpressure on its job iterator. Jobs of all maps are served first come, first served.

    A worker that dies mid-segment (a signal, an OOM kill) is replaced and the segment retried,
    up to ``max_attempts`` tries in all, after which it comes back as an error result; an engine
    exception is retried ``engine_tries - 1`` times inside the worker. Closing a map drops its
    queued jobs; its running ones finish (their results are dropped), except jobs with
    ``abandon="kill"``, whose workers are killed within 0.2 s and replaced at once by a fresh
    worker that preloads the model (fast cancellation at the cost of one model load).
    :meth:`aclose` stops every worker.
    """

    def __init__(
        self,
        workers: int | None = None,
        threads: int | None = None,
        max_in_flight: int | None = None,
        *,
        preload: EngineConfig | None = None,
        context: str = "spawn",
        max_attempts: int = 2,
        engine_tries: int = 2,
    ) -> None:
        auto_workers, auto_threads = default_split()
        if threads is None:
            threads = auto_threads
        if workers is None:
            on_gpu = preload is not None and preload.device == "cuda"
            workers = 1 if on_gpu else max(1, (auto_workers * auto_threads) // threads)
        if workers < 1 or threads < 1:
            raise ValueError("workers and threads must be at least 1")
        self.workers, self.threads = workers, threads
        self.max_in_flight = max_in_flight or 2 * workers
        self.preload = preload
        self.max_attempts, self.engine_tries = max_attempts, engine_tries
        self._ctx = multiprocessing.get_context(context)
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._spawn_lock = threading.Lock()
        self._drivers: list[threading.Thread] = []
        self._live: dict[int, tuple[_Worker, _Task | None]] = {}
        self._closing = threading.Event()
        self._stats = dict.fromkeys(
            ("submitted", "started", "completed", "failed", "cancelled", "retried", "spawned"), 0
        )

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> LocalPoolMapper:
        """Start the workers now (else the first :meth:`map` does); returns at once."""
        with self._lock:
            if self._closing.is_set():
                raise RuntimeError("this worker pool is closed")
            if not self._drivers:
                for slot in range(self.workers):
                    driver = threading.Thread(
                        target=self._drive, args=(slot,), name=f"pool-driver-{slot}", daemon=True
                    )
                    self._drivers.append(driver)
                    driver.start()
        return self

    def close(self) -> None:
        """Drop queued jobs and stop every worker process (blocking; see :meth:`aclose`)."""
        with self._lock:
            self._closing.set()
            drivers = list(self._drivers)
        while True:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task.future.cancel()
        for _ in drivers:
            self._queue.put(None)
        for driver in drivers:
            driver.join()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> LocalPoolMapper:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- what callers and tests read ----------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start the workers if needed and block until every one has loaded ``preload``;
        False on timeout. Blocking: from async code, ``await asyncio.to_thread(...)``."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                live = list(self._live.values())
            if len(live) == self.workers and all(w.ready for w, _ in live):
                return True
            if self._closing.is_set() or (deadline is not None and time.monotonic() > deadline):
                return False
            time.sleep(0.05)

    def stats(self) -> dict[str, int]:
        """Counters since start: submitted, started, completed, failed, cancelled (dropped
        from the queue, or killed while running), retried, spawned; and right now: ``workers`` (processes ready for work: their model is loaded)
        and ``busy`` (those on a segment).

        ``completed + failed`` is the number of segments the workers actually ran (a server's
        ``/healthz`` shows these, e.g. to prove a resumed job transcribed only what was missing).
        """
        with self._lock:
            ready = sum(1 for worker, _ in self._live.values() if worker.ready)
            busy = sum(1 for _, task in self._live.values() if task is not None)
            return {**self._stats, "workers": ready, "busy": busy}

    def running(self) -> dict[int, int | None]:
        """Live worker pid -> index of the segment it is transcribing (None when idle)."""
        with self._lock:
            return {w.pid: (t.job.index if t else None) for w, t in self._live.values()}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    # -- mapping ------------------------------------------------------------------------------

    def submit(self, job: SegmentJob) -> concurrent.futures.Future:
        """Queue one job; the future's result is its :class:`SegmentResult` (never an exception
        for engine or worker failures). Cancelling the future before it runs drops the job."""
        return self._submit(job).future

    def _submit(self, job: SegmentJob) -> _Task:
        self.start()
        task = _Task(job, concurrent.futures.Future())
        task.future.add_done_callback(lambda f: self._count("cancelled") if f.cancelled() else None)
        self._count("submitted")
        self._queue.put(task)
        return task

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        source = aiter(jobs)
        pending: dict[asyncio.Future, _Task] = {}
        next_job: asyncio.Future | None = None
        exhausted = False
        try:
            while True:
                if not exhausted and next_job is None and len(pending) < self.max_in_flight:
                    next_job = asyncio.ensure_future(anext(source))
                waiting = set(pending) | ({next_job} if next_job is not None else set())
                if not waiting:
                    return
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if next_job in done:
                    arrived, next_job = next_job, None
                    try:
                        job = arrived.result()
                    except StopAsyncIteration:
                        exhausted = True
                    else:
                        task = self._submit(job)
                        pending[asyncio.wrap_future(task.future)] = task
                for result in done:
                    if result in pending:
                        del pending[result]
                        yield result.result()
        finally:
            for task in pending.values():
                task.abandoned = True
                task.future.cancel()  # dropped if still queued; a running one is abandoned
            if next_job is not None:
                next_job.cancel()
                await asyncio.gather(next_job, return_exceptions=True)
            if hasattr(source, "aclose"):
                await source.aclose()

    # -- the driver threads -------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        with self._spawn_lock:  # Process.start() is not meant to race with itself
            process = self._ctx.Process(
                target=_worker_main,
                args=(child, self.threads, self.preload, self.engine_tries),
                name="streamscribe-worker",
                daemon=True,  # multiprocessing terminates daemons when this process exits
            )
            process.start()
        child.close()
        self._count("spawned")
        return _Worker(process, parent)

    def _drive(self, slot: int) -> None:
        """Feed one worker process, one task at a time, until the pool closes."""
        worker: _Worker | None = None
        try:
            while True:
                if worker is None and not self._closing.is_set():
                    # At start, and at once after a worker was killed or given up on: the
                    # next job should not wait for a model to load.
                    worker = self._start_worker(slot)
                task = self._queue.get()
                if task is None or self._closing.is_set():
                    if task is not None:
                        task.future.cancel()
                    return
                if not task.future.set_running_or_notify_cancel():
                    continue  # its map was closed while it waited
                self._count("started")
                try:
                    result, worker = self._execute(slot, task, worker)
                except BaseException as exc:  # a bug here must fail the task, not hang the map
                    task.future.set_exception(exc)
                    raise
                task.future.set_result(result)
        finally:
            with self._lock:
                self._live.pop(slot, None)
            if worker is not None:
                worker.stop()

    def _execute(
        self, slot: int, task: _Task, worker: _Worker | None
    ) -> tuple[SegmentResult, _Worker | None]:
        deaths = 0
        while True:
            if worker is None or not worker.ready or not worker.process.is_alive():
                if worker is not None:
                    worker.stop()
                worker = self._start_worker(slot)
            if worker.ready:
                with self._lock:
                    self._live[slot] = (worker, task)
                try:
                    worker.conn.send(task.job)
                    reply = self._await_reply(worker, task)
                except OSError:  # the pipe broke: the worker died before reading the job
                    reply = _DIED
                finally:
                    with self._lock:
                        self._live[slot] = (worker, None)
            else:
                reply = _STOPPED if self._closing.is_set() else _DIED
            if isinstance(reply, SegmentResult):
                reply.attempts += deaths
                self._count("failed" if reply.error else "completed")
                return reply, worker
            job = task.job
            if reply is _STOPPED:  # killed: the pool is closing, or the job was abandoned
                worker.stop()  # reaps it
                self._count("cancelled")
                message = "the segment was cancelled"
                return SegmentResult(job.index, job.start, job.end, error=message), None
            deaths += 1
            worker.process.join(1.0)  # the sentinel fires a moment before the exit status exists
            exitcode = worker.process.exitcode
            # Exiting by itself before its job loop (an import error, a bad install) is a
            # start-up failure; a signal is a death like any other.
            broken = not worker.ready and exitcode is not None and exitcode > 0
            cause = _exit_cause(exitcode)
            worker.stop()
            worker = None
            if deaths >= self.max_attempts:
                self._count("failed")
                message = (
                    f"the worker transcribing this segment died ({cause}) "
                    f"{deaths} time{'s' if deaths > 1 else ''}; giving up on it"
                    if not broken
                    else f"a worker process could not start ({cause}); see the server log"
                )
                return SegmentResult(job.index, job.start, job.end, error=message, attempts=deaths), None
            log.warning("worker died (%s) on segment %d; retrying it", cause, job.index)
            self._count("retried")

    def _start_worker(self, slot: int) -> _Worker:
        """A new worker process, returned once it is ready (``preload`` loaded) or gone."""
        worker = self._spawn()
        with self._lock:
            self._live[slot] = (worker, None)
        reply = self._await_reply(worker, None)
        worker.ready = isinstance(reply, str) and reply == _READY
        return worker

    def _await_reply(self, worker: _Worker, task: _Task | None) -> object:
        """The worker's next message, or ``_DIED`` / ``_STOPPED``; polls so that closing the
        pool (or abandoning ``task`` when its job says ``abandon="kill"``) is noticed within
        0.2 s, and then kills the worker."""
        while True:
            ready = wait_ready([worker.conn, worker.process.sentinel], timeout=0.2)
            if worker.conn in ready:
                try:
                    return worker.conn.recv()
                except (EOFError, OSError):
                    return _DIED
            if ready:
                return _DIED
            kill = task is not None and task.abandoned and task.job.abandon == "kill"
            if self._closing.is_set() or kill:
                worker.process.kill()
                return _STOPPED


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


# -- sequential mode ------------------------------------------------------------------------------

#: Whisper conditions on at most 223 previous tokens; ~800 characters of English is about that.
MAX_PROMPT_CHARS = 800


def bounded_prompt(text: str, limit: int = MAX_PROMPT_CHARS) -> str | None:
    """The last ``limit`` characters of ``text`` as a prompt (whitespace folded, never starting
    mid-word), or None when nothing is left."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[-limit:]
        text = text.split(" ", 1)[1] if " " in text else text  # do not start mid-word
    return text or None


def tripped_guard(result: SegmentResult, options: TranscribeOptions) -> bool:
    """Whether ``result`` looks like a hallucination loop (whisper's guards) or failed.

    Carrying such text as the next prompt invites the loop to continue, so the prompt resets.
    """
    if result.error:
        return True
    for piece in result.pieces:
        ratio, logprob = options.compression_ratio_threshold, options.log_prob_threshold
        if ratio is not None and piece.compression_ratio > ratio:
            return True
        if logprob is not None and piece.avg_logprob < logprob:
            return True
    return False


@dataclass
class PromptCarry:
    """The sequential mode's context, and the one place its rules live.

    Like whisper inside one long file: the previous segments' final text (the last
    ``max_chars`` characters) becomes the next job's ``initial_prompt``; a segment that trips
    :func:`tripped_guard` resets it; a segment with no text carries it over. The first job keeps
    the ``initial_prompt`` it came with (the pipeline seeds it with stored text when resuming).

    :class:`SequentialMapper` and the Modal GPU generator (``app/modal_app.py``) both run
    ``job = carry.apply(job)``, transcribe, ``carry.advance(job, result)``. The fields are
    plain, so the state can travel to a GPU container and back (``asdict`` / ``PromptCarry(**d)``).
    """

    max_chars: int = MAX_PROMPT_CHARS
    #: The text the next job is prompted with (None: nothing yet, or reset).
    prompt: str | None = None
    #: False until a segment is done: until then a job keeps its own ``initial_prompt``.
    carrying: bool = False

    def apply(self, job: SegmentJob) -> SegmentJob:
        """``job`` with the carried text as its ``initial_prompt``."""
        if not self.carrying:
            return job
        options = dataclasses.replace(job.options, initial_prompt=self.prompt)
        return dataclasses.replace(job, options=options)

    def advance(self, job: SegmentJob, result: SegmentResult) -> None:
        """Move past ``result``; ``job`` is the one :meth:`apply` returned for it."""
        if tripped_guard(result, job.options):
            self.prompt = None
        elif result.text:
            self.prompt = bounded_prompt(f"{job.options.initial_prompt or ''} {result.text}",
                                          self.max_chars)
        else:
            self.prompt = job.options.initial_prompt  # silence carries the context over
        self.carrying = True


class SequentialMapper:
    """One segment at a time, in index order, each prompted with the text before it
    (:class:`PromptCarry`, at most ``max_prompt_chars`` of it).

    Jobs must come in index order; gaps (silent or resumed segments the caller kept to itself)
    carry the prompt over.
    ``base`` runs the jobs (default: an :class:`InlineMapper`); it is borrowed, not closed,
    unless ``close_base``.
    """

    def __init__(
        self,
        base: Mapper | None = None,
        *,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        close_base: bool | None = None,
    ) -> None:
        self.base: Mapper = base if base is not None else InlineMapper()
        self.max_prompt_chars = max_prompt_chars
        self.close_base = base is None if close_base is None else close_base

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        carry = PromptCarry(self.max_prompt_chars)
        async for job in jobs:
            job = carry.apply(job)
            result = await self._one(job)
            carry.advance(job, result)
            yield result

    async def _one(self, job: SegmentJob) -> SegmentResult:
        async def single() -> AsyncIterator[SegmentJob]:
            yield job

        results = self.base.map(single())
        try:
            return await anext(results)
        finally:
            await results.aclose()

    async def aclose(self) -> None:
        if self.close_base:
            await self.base.aclose()
