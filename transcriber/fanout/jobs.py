"""What every mapper shares: the job and result types, the :class:`Mapper` protocol, and
:func:`run_job`, the one function that turns a segment into text wherever it runs (this
process, a pool worker, a Modal GPU container).

:class:`InlineMapper` runs jobs in this process (tests, tiny inputs); :func:`mapper_for_mode`
picks the mapper for a ``mode`` (:class:`~transcriber.vocab.Mode`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from transcriber import faults
from transcriber.engine import EngineConfig, Piece, TranscribeOptions
from transcriber.vocab import Mode

log = logging.getLogger(__name__)

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
    #: How many segments shared its engine call (1: decoded alone, :func:`run_job`).
    batch: int = 1
    #: Its batched decode failed whisper's thresholds, so it was decoded again alone with the
    #: temperature fallback (:func:`transcriber.engine.transcribe_batch`).
    redecoded: bool = False

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


def run_job(job: SegmentJob) -> SegmentResult:
    """Transcribe one job with the (cached, once-per-process) engine for ``job.engine``.

    Shared by every mapper, local and Modal: skips silent segments, makes timestamps absolute,
    turns an engine exception into ``SegmentResult.error``.
    """
    began = time.perf_counter()
    result = SegmentResult(job.index, job.start, job.end, silent=job.silent)
    if not job.silent:
        try:
            from transcriber.engine import get_engine  # cached per process (engine/cache.py)
            from transcriber.vad import transcribe_gated

            faults.inject(job.index)  # a test hook: a no-op unless STREAMSCRIBE_FAULTS is set
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


def batchable(first: SegmentJob, job: SegmentJob) -> bool:
    """Whether ``job`` may share an engine call with ``first``: same weights and options, room
    in ``first``'s batch size, and neither is a job's first segment (that one goes alone, so
    the first text never waits for a batch) or silent (no engine call at all)."""
    return (
        first.options.batch_size > 1
        and job.engine == first.engine
        and job.options == first.options
        and 0 not in (first.index, job.index)
        and not (first.silent or job.silent)
    )


def run_batch(jobs: list[SegmentJob], tries: int = 2) -> list[SegmentResult]:
    """Transcribe several jobs (:func:`batchable` with the first) in one engine call.

    The batched counterpart of :func:`run_job` for every transport (a pool worker, a Modal GPU
    container): one encoder pass and one decode for all, a per-segment fallback for those
    that fail whisper's thresholds; one :class:`SegmentResult` per job, in order. One job is
    :func:`run_job_retrying` exactly; if the batched call raises, each job is run alone.
    """
    if len(jobs) <= 1:
        return [run_job_retrying(job, tries) for job in jobs]
    began = time.perf_counter()
    try:
        from transcriber.engine import get_engine, transcribe_batch
        from transcriber.vad import finish_gate, plan_gate, with_skipped

        for job in jobs:
            faults.inject(job.index)
        first = jobs[0]
        # The speech gate as in run_job: each segment's speech regions, laid end to end, are
        # what the engine decodes; their pieces go back to the segment's timeline after.
        plans = [plan_gate(job.audio, job.speech) for job in jobs]
        live = {i: plan.audio for i, plan in enumerate(plans) if plan is not None}
        engine = get_engine(first.engine)
        decoded = transcribe_batch(engine, list(live.values()), first.options)
        outcome = dict(zip(live, decoded, strict=True))
        skipped = {i: with_skipped(engine, plans[i], done.pieces, first.options) for i, done in outcome.items()}
    except Exception:  # one bad segment must not fail its batch-mates: each goes alone
        log.warning("a batch of %d segments failed; running them one by one", len(jobs), exc_info=True)
        return [run_job_retrying(job, tries) for job in jobs]
    elapsed = (time.perf_counter() - began) / len(jobs)
    results = []
    for i, job in enumerate(jobs):
        result = SegmentResult(job.index, job.start, job.end, elapsed=elapsed, batch=len(jobs))
        done = outcome.get(i)
        gated = finish_gate(plans[i], skipped.get(i, []), first.options.language)
        result.pieces = [_absolute(p, job.start, job.end) for p in gated.pieces]
        result.dropped = gated.dropped
        result.redecoded = bool(done and done.redecoded)
        results.append(result)
    return results


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
    def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncGenerator[SegmentResult, None]:
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
    if mode == Mode.PARALLEL:
        return mapper
    if mode == Mode.SEQUENTIAL:
        from transcriber.fanout.sequential import SequentialMapper  # it wraps the mappers here

        own = getattr(mapper, "sequential", None)
        return own() if callable(own) else SequentialMapper(mapper)
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(Mode)}")


class InlineMapper:
    """Runs every job in this process, one at a time, in a thread so the event loop stays free.

    A cancelled map returns at once; the segment already in the engine finishes in its thread
    (a thread cannot be killed, so ``abandon="kill"`` cannot be honoured) and its result is
    dropped.
    """

    def __init__(self, *, engine_tries: int = 2) -> None:
        self.engine_tries = engine_tries

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncGenerator[SegmentResult, None]:
        async for job in jobs:
            yield await asyncio.to_thread(run_job_retrying, job, self.engine_tries)

    async def aclose(self) -> None:
        pass
