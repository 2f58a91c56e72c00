"""The local process pool: :class:`LocalPoolMapper`, worker processes on this machine, each
with the engine loaded once, shareable by concurrent jobs.

Why a hand-rolled pool rather than ``concurrent.futures.ProcessPoolExecutor``: the executor
marks itself broken and fails *every* pending future when one worker dies (a segment that
crashes CTranslate2, an OOM kill), cannot tell which job the dead worker held, and cannot stop
a running job. Here each worker process has its own pipe and one job at a time, driven by one
thread in this process: a dead worker is replaced and exactly its job is retried, a cancelled
map's queued jobs are dropped, and closing the pool kills exactly its own processes. What runs
inside a worker process is :mod:`transcriber.fanout.worker`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from typing import Any

from transcriber import exit_cause
from transcriber.engine import EngineConfig
from transcriber.fanout.jobs import SegmentJob, SegmentResult, batchable
from transcriber.fanout.worker import READY, worker_main

log = logging.getLogger(__name__)

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


class _TaskQueue:
    """First come, first served, except that a driver may take ready tasks that can share
    its task's engine call (:func:`batchable`) from anywhere in the queue."""

    def __init__(self) -> None:
        self._items: collections.deque[_Task | None] = collections.deque()
        self._ready = threading.Condition()

    def put(self, item: _Task | None) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def get(self) -> _Task | None:
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()

    def get_nowait(self) -> _Task | None:
        with self._ready:
            if not self._items:
                raise queue.Empty
            return self._items.popleft()

    def mates(self, first: _Task) -> list[_Task]:
        """Up to ``batch_size - 1`` queued tasks that can join ``first``; never waits for more."""
        room = first.job.options.batch_size - 1
        taken: list[_Task] = []
        with self._ready:
            for item in list(self._items):
                if len(taken) >= room:
                    break
                if item is not None and not item.future.done() and batchable(first.job, item.job):
                    self._items.remove(item)
                    taken.append(item)
        return taken


class LocalPoolMapper:
    """Worker processes on this machine, each with the engine loaded once.

    ``workers`` × ``threads`` default to :func:`default_split` of the usable cores. Workers are
    started with ``spawn`` (never ``fork``: forking a process in which torch/CTranslate2 threads
    exist can deadlock the child), cap their native thread pools at ``threads``, and load
    ``preload`` (if given) as soon as they start so the first segment does not wait for it.

    One pool may serve several concurrent :meth:`map` calls (a web server shares one across
    requests). Each map keeps at most ``max_in_flight`` jobs submitted (default ``2 × workers``:
    one running and one queued per worker; with a ``batch_size`` above 1, a batch queued per
    worker) and stops pulling jobs until one finishes, which is the backpressure on its job
    iterator. Jobs of all maps are served first come, first served; a worker that takes a job
    takes with it up to ``batch_size - 1`` queued jobs that may share its engine call
    (:func:`~transcriber.fanout.jobs.batchable`: never a job's first segment), without waiting
    for more, and sends them as one message (:func:`~transcriber.fanout.jobs.run_batch`).

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
        #: None: the limit grows with a job's batch size (see :meth:`in_flight_limit`).
        self._given_in_flight = max_in_flight
        self.preload = preload
        self.max_attempts, self.engine_tries = max_attempts, engine_tries
        self._ctx: Any = multiprocessing.get_context(context)  # typeshed: BaseContext has no Process
        self._queue = _TaskQueue()
        self._lock = threading.Lock()
        self._spawn_lock = threading.Lock()
        self._drivers: list[threading.Thread] = []
        self._live: dict[int, tuple[_Worker, _Task | None]] = {}
        self._closing = threading.Event()
        self._stats = dict.fromkeys(
            ("submitted", "started", "completed", "failed", "cancelled", "retried", "spawned", "batches", "redecoded"), 0
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
        from the queue, or killed while running), retried, spawned, batches (engine calls of
        more than one segment), redecoded (segments whose batched decode failed whisper's
        thresholds and were decoded again alone); and right now: ``workers`` (processes ready for work: their model is loaded)
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

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncGenerator[SegmentResult, None]:
        source = aiter(jobs)
        pending: dict[asyncio.Future, _Task] = {}
        next_job: asyncio.Future | None = None
        exhausted = False
        limit = self.max_in_flight
        try:
            while True:
                if not exhausted and next_job is None and len(pending) < limit:
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
                        limit = self.in_flight_limit(job)
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

    def in_flight_limit(self, job: SegmentJob) -> int:
        """One running and one queued per worker, or, for batches, a full batch queued per
        worker so that a free worker finds its batch ready (the queue is what batches form from)."""
        if self._given_in_flight is not None:
            return self._given_in_flight
        return max(self.max_in_flight, self.workers * (job.options.batch_size + 1))

    # -- the driver threads -------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        with self._spawn_lock:  # Process.start() is not meant to race with itself
            process = self._ctx.Process(
                target=worker_main,
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
                tasks = [t for t in [task, *self._queue.mates(task)] if t.future.set_running_or_notify_cancel()]
                if not tasks:
                    continue  # its map was closed while it waited
                self._count("started", len(tasks))
                try:
                    results, worker = self._execute(slot, tasks, worker)
                except BaseException as exc:  # a bug here must fail the tasks, not hang the map
                    for t in tasks:
                        t.future.set_exception(exc)
                    raise
                for t, result in zip(tasks, results, strict=True):
                    t.future.set_result(result)
        finally:
            with self._lock:
                self._live.pop(slot, None)
            if worker is not None:
                worker.stop()

    def _execute(
        self, slot: int, tasks: list[_Task], worker: _Worker | None
    ) -> tuple[list[SegmentResult], _Worker | None]:
        """Run ``tasks`` on this slot's worker: one job as itself (today's message), several
        as one list (one engine call); replace a dead worker and retry, as for one job."""
        deaths = 0
        message: SegmentJob | list[SegmentJob] = tasks[0].job if len(tasks) == 1 else [t.job for t in tasks]
        while True:
            if worker is None or not worker.ready or not worker.process.is_alive():
                if worker is not None:
                    worker.stop()
                worker = self._start_worker(slot)
            if worker.ready:
                with self._lock:
                    self._live[slot] = (worker, tasks[0])
                try:
                    worker.conn.send(message)
                    reply = self._await_reply(worker, tasks)
                except OSError:  # the pipe broke: the worker died before reading the job
                    reply = _DIED
                finally:
                    with self._lock:
                        self._live[slot] = (worker, None)
            else:
                reply = _STOPPED if self._closing.is_set() else _DIED
            replies = [reply] if isinstance(reply, SegmentResult) else reply
            if isinstance(replies, list):
                if len(replies) > 1:
                    self._count("batches")
                for result in replies:
                    result.attempts += deaths
                    self._count("failed" if result.error else "completed")
                    self._count("redecoded", int(result.redecoded))
                return replies, worker
            if reply is _STOPPED:  # killed: the pool is closing, or the jobs were abandoned
                worker.stop()  # reaps it
                self._count("cancelled", len(tasks))
                text = "the segment was cancelled"
                return [SegmentResult(t.job.index, t.job.start, t.job.end, error=text) for t in tasks], None
            deaths += 1
            worker.process.join(1.0)  # the sentinel fires a moment before the exit status exists
            exitcode = worker.process.exitcode
            # Exiting by itself before its job loop (an import error, a bad install) is a
            # start-up failure; a signal is a death like any other.
            broken = not worker.ready and exitcode is not None and exitcode > 0
            cause = exit_cause(exitcode)
            worker.stop()
            worker = None
            if deaths >= self.max_attempts:
                self._count("failed", len(tasks))
                text = (
                    f"the worker transcribing this segment died ({cause}) "
                    f"{deaths} time{'s' if deaths > 1 else ''}; giving up on it"
                    if not broken
                    else f"a worker process could not start ({cause}); see the server log"
                )
                return [
                    SegmentResult(t.job.index, t.job.start, t.job.end, error=text, attempts=deaths) for t in tasks
                ], None
            log.warning("worker died (%s) on segment %s; retrying it", cause, ", ".join(str(t.job.index) for t in tasks))
            self._count("retried", len(tasks))

    def _start_worker(self, slot: int) -> _Worker:
        """A new worker process, returned once it is ready (``preload`` loaded) or gone."""
        worker = self._spawn()
        with self._lock:
            self._live[slot] = (worker, None)
        reply = self._await_reply(worker, [])
        worker.ready = isinstance(reply, str) and reply == READY
        return worker

    def _await_reply(self, worker: _Worker, tasks: list[_Task]) -> object:
        """The worker's next message, or ``_DIED`` / ``_STOPPED``; polls so that closing the
        pool (or abandoning ``tasks`` when their jobs say ``abandon="kill"``) is noticed within
        0.2 s, and then kills the worker. A batch is killed only when every job in it may be:
        a batch-mate still wanted (another job's segment) keeps the worker running."""
        while True:
            ready = wait_ready([worker.conn, worker.process.sentinel], timeout=0.2)
            if worker.conn in ready:
                try:
                    return worker.conn.recv()
                except (EOFError, OSError):
                    return _DIED
            if ready:
                return _DIED
            kill = bool(tasks) and all(t.abandoned and t.job.abandon == "kill" for t in tasks)
            if self._closing.is_set() or kill:
                worker.process.kill()
                return _STOPPED
