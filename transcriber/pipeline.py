"""Glue: source -> decode -> segment -> mapper -> events.

:func:`transcribe_stream` is the one entry point every transport iterates. Its moving parts:

- the source is resolved in a worker thread (yt-dlp blocks on the network);
- ffmpeg decoding and the segmenter run in one dedicated thread that hands finished segments
  to the event loop through a bounded buffer (when the workers fall behind, decoding pauses
  instead of filling memory);
- segments become :class:`~transcriber.fanout.SegmentJob` s for ``mapper.map`` *while decoding
  continues*, so the first text arrives long before the end of a long source;
- results come back in completion order; each becomes a ``segment`` (or ``segment_error``)
  event followed by a ``progress`` event that carries the in-order committed prefix and an ETA.

The decode thread, the job feeder and the mapper's pump report to the main loop of
:func:`transcribe_stream` with small typed messages (:class:`Cut`, :class:`Transcribed`,
:class:`Reused`, :class:`DecodeEnded`, :class:`DecodeFailed`, :class:`MapperFailed`,
:class:`MapperDone`), which it matches on.

Closing the generator (a client that went away) or cancelling its task stops everything within
about a second: the decode thread is told to stop and ffmpeg is killed at once (so even a read
blocked on a stalled network returns), the map is closed (its queued jobs are dropped) and
nothing of this job keeps running but a segment already inside an engine, which finishes or,
with ``abandon="kill"``, is stopped by killing its worker (see :data:`~transcriber.fanout.ABANDON`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from transcriber import SAMPLE_RATE, clock, media
from transcriber.engine import EngineConfig, TranscribeOptions
from transcriber.events import Done, Event, Failed, Meta, Progress, SegmentDone, SegmentFailed
from transcriber.fanout import (
    ABANDON,
    Mapper,
    SegmentJob,
    SegmentResult,
    bounded_prompt,
    mapper_for_mode,
)
from transcriber.media import MediaError, Source
from transcriber.segment import Segment, SegmentOptions, segment_stream
from transcriber.vad import VadOptions, gate_segment, speech_tracker
from transcriber.vocab import Mode

log = logging.getLogger(__name__)


@dataclass
class PipelineOptions:
    engine: EngineConfig = field(default_factory=EngineConfig)
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)
    #: A short first segment (12 s at most) so the first text comes after a short decode:
    #: tiny.en int8, beam 5, one thread takes ~1.9 s on 30 s of speech, ~0.95 s on 12 s, for
    #: one more encoder pass (~0.5 CPU-s) per job. (8 and 10 s cut the pipeline test's mix
    #: where openai-whisper then ended the next segment early; see bench/NOTES.md.)
    segment: SegmentOptions = field(default_factory=partial(SegmentOptions, first_max_seconds=12.0))
    #: ``parallel`` (fan out) | ``sequential`` (one worker, previous text as prompt). The
    #: mapper given to :func:`transcribe_stream` is always a parallel one; sequential mode is
    #: derived from it with :func:`~transcriber.fanout.mapper_for_mode`.
    mode: str = Mode.PARALLEL
    #: Reject media longer than this (seconds), from metadata and while decoding; None = no limit.
    max_duration: float | None = None
    #: Keyword arguments for :func:`transcriber.media.resolve` (yt-dlp options: cookies,
    #: ``allowed_extractors``...). Ignored when the source is already a :class:`Source`.
    resolve_options: dict[str, Any] = field(default_factory=dict)
    #: Segments decoded ahead of the workers before decoding pauses (memory bound: at most
    #: this many × ``segment.max_seconds`` of 16 kHz float32 audio, 8 × 30 s ≈ 15 MB, or
    #: × ``segment.max_span_seconds`` with the speech gate, 8 × 60 s ≈ 31 MB). Eight
    #: keep a local pool busy (it takes ~1 s per segment while ffmpeg decodes 30 s in
    #: milliseconds); 32 held 55 MB more in long jobs than in a 10-minute one.
    buffer_segments: int = 8
    #: Size of ffmpeg reads, seconds; the decode thread notices a stop between two reads.
    chunk_seconds: float = 0.5
    #: The speech gate (:mod:`transcriber.vad`): run once over the stream in the decode thread,
    #: guiding the cuts (in parallel mode segments then hold up to ``segment.max_seconds`` of
    #: *speech*, see ``segment.max_span_seconds``) and
    #: mapping each segment's speech; segments without speech skip the engine, and only the
    #: speech regions of the others are decoded.
    vad: VadOptions = field(default_factory=VadOptions)


# -- the messages between the steps -----------------------------------------------------------
#
# The decode thread hands the loop what it cut; the job feeder and the mapper's pump tell the
# main loop what happened. Each message is one small frozen dataclass, matched on its type.


@dataclass(frozen=True)
class Cut:
    """The decode thread cut a segment."""

    segment: Segment


@dataclass(frozen=True)
class DecodeEnded:
    """ffmpeg's output is exhausted: every segment has been cut."""


@dataclass(frozen=True)
class DecodeFailed:
    """Decoding stopped on an error; the segments already cut still finish."""

    error: BaseException


@dataclass(frozen=True)
class Transcribed:
    """A result from the mapper, or a silent segment that needed no engine."""

    result: SegmentResult


@dataclass(frozen=True)
class Reused:
    """A segment a previous run stored (``completed=``), sent again instead of transcribed."""

    event: SegmentDone


@dataclass(frozen=True)
class MapperFailed:
    """The mapper itself broke (not one segment): the stream ends."""

    error: Exception


@dataclass(frozen=True)
class MapperDone:
    """The mapper returned its last result: nothing more will come."""


#: What the decode thread sends.
FeedItem = Cut | DecodeEnded | DecodeFailed
#: What the main loop of :func:`transcribe_stream` reads.
Message = Transcribed | Reused | DecodeEnded | DecodeFailed | MapperFailed | MapperDone


# -- the decode thread -----------------------------------------------------------------------


class _DecodeFeed:
    """ffmpeg + segmenter in a dedicated thread, handing segments to the event loop.

    A semaphore bounds the segments buffered between the thread and the loop; the thread waits
    on it in short steps so a stop request is noticed even while it is blocked on a full buffer.
    """

    def __init__(self, source: Source, options: PipelineOptions) -> None:
        self.source, self.options = source, options
        self.loop = asyncio.get_running_loop()
        self.items: asyncio.Queue[FeedItem] = asyncio.Queue()
        self.slots = threading.Semaphore(max(1, options.buffer_segments))
        self.stop = threading.Event()
        #: Set the moment ffmpeg's output is exhausted (or decoding failed).
        self.finished = threading.Event()
        #: Samples decoded and segments cut so far (written by the thread only).
        self.samples = 0
        self.cut = 0
        self.thread = threading.Thread(target=self._run, name="streamscribe-decode", daemon=True)

    def start(self) -> None:
        self.thread.start()

    async def get(self) -> FeedItem:
        item = await self.items.get()
        self.slots.release()
        return item

    async def close(self, timeout: float = 2.0) -> None:
        """Stop decoding and wait (off the loop) for the thread, which closes ffmpeg."""
        self.stop.set()
        await asyncio.to_thread(self.thread.join, timeout)

    def _put(self, item: FeedItem) -> bool:
        while not self.stop.is_set():
            if self.slots.acquire(timeout=0.1):
                try:
                    self.loop.call_soon_threadsafe(self.items.put_nowait, item)
                except RuntimeError:  # the loop is gone: nobody is listening any more
                    return False
                return True
        return False

    def _counted(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for chunk in chunks:
            if self.stop.is_set():
                return
            self.samples += len(chunk)
            yield chunk

    def _run(self) -> None:
        chunks = None
        try:
            chunks = media.decode(
                self.source,
                chunk_seconds=self.options.chunk_seconds,
                max_seconds=self.options.max_duration,  # raises TooLong past it
                stop=self.stop,  # kills ffmpeg when the job stops, even mid-read
            )
            # The VAD runs once over the stream, as it is decoded: it guides the cuts (into
            # music or noise, speech packed into full windows) and maps each segment's speech.
            tracker = speech_tracker(self.options.vad)
            for segment in segment_stream(self._counted(chunks), _segment_options(self.options), tracker):
                segment = gate_segment(segment, self.options.vad, keep_pauses=self.options.mode == Mode.SEQUENTIAL)
                self.cut += 1
                if self.stop.is_set() or not self._put(Cut(segment)):
                    return
            self.finished.set()  # before the item: a reader of the item sees final counters
            self._put(DecodeEnded())
        except BaseException as exc:  # handed to the loop, which turns it into an event
            self.finished.set()  # before the item: a reader of the item sees final counters
            self._put(DecodeFailed(exc))
        finally:
            self.finished.set()  # also when stopped early: nothing more will be decoded
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # kills ffmpeg when it is still running


def _segment_options(options: PipelineOptions) -> SegmentOptions:
    """The segmenter's options for ``options.mode``. Sequential mode packs no speech (a
    segment spans at most ``max_seconds`` of source, as without the gate): there the previous
    text is the prompt, and tiny.en, prompted, decoded only the first sentence of a window of
    speech regions laid end to end and dropped the other four (the test mix, segment 1)."""
    if options.mode == Mode.SEQUENTIAL:
        return dataclasses.replace(options.segment, max_span_seconds=None)
    return options.segment


# -- the bookkeeping of one run --------------------------------------------------------------


@dataclass
class _Tally:
    started: float
    duration: float | None
    finished: set[int] = field(default_factory=set)
    failed: list[int] = field(default_factory=list)
    committed: int = 0
    audio_done: float = 0.0
    #: Audio transcribed in this run (not resumed), and when the first job went out.
    fresh_audio: float = 0.0
    first_dispatch: float | None = None
    first_segment: float | None = None
    first_any_segment: float | None = None
    #: Segments taken from ``completed=`` instead of being transcribed again.
    reused: int = 0
    #: Pieces the speech gate dropped.
    dropped: int = 0
    #: Segments decoded again alone after their batched decode failed whisper's thresholds,
    #: and how many segments went through engine calls of each batch size.
    redecoded: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def engine_call(self, result: SegmentResult) -> None:
        """Count how ``result`` was decoded (batched, re-decoded alone, pieces the gate dropped)."""
        if not (result.silent or result.error):
            self.batch_sizes[result.batch] = self.batch_sizes.get(result.batch, 0) + 1
        self.redecoded += int(result.redecoded)
        self.dropped += result.dropped

    def finish(self, event: SegmentDone | SegmentFailed, fresh: bool) -> None:
        """Count a segment sent; ``fresh`` when this run transcribed it (not reused)."""
        now = time.monotonic()
        if isinstance(event, SegmentDone):
            self.first_any_segment = self.first_any_segment or now
            if event.text and self.first_segment is None:
                self.first_segment = now
        else:
            self.failed.append(event.index)
        self.finished.add(event.index)
        self.audio_done += event.end - event.start
        if fresh:
            self.fresh_audio += event.end - event.start
        else:
            self.reused += 1
        while self.committed in self.finished:
            self.committed += 1

    def eta(self, now: float, total: float | None) -> float | None:
        if total is None or self.first_dispatch is None or self.fresh_audio <= 0:
            return None
        rate = self.fresh_audio / max(now - self.first_dispatch, 1e-6)
        return max(0.0, total - self.audio_done) / rate

    def progress(self, feed: _DecodeFeed) -> Progress:
        # Read the flag first: once it is set, the thread's counters are final.
        decoded = feed.finished.is_set()
        total = feed.samples / SAMPLE_RATE if decoded else self.duration
        return Progress(
            segments_done=len(self.finished),
            segments_total=feed.cut,
            audio_done=round(self.audio_done, 3),
            duration=total,
            eta=_rounded(self.eta(time.monotonic(), total)),
            committed=self.committed,
            decoding_done=decoded,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _segment_event(result: SegmentResult) -> SegmentDone | SegmentFailed:
    if result.error:
        return SegmentFailed(result.index, result.start, result.end, result.error)
    return SegmentDone(
        index=result.index,
        start=result.start,
        end=result.end,
        text=result.text,
        pieces=[dataclasses.asdict(p) for p in result.pieces],
        silent=result.silent,
    )


def _same_cut(done: SegmentDone, segment: Segment) -> bool:
    """A stored segment is reused only where today's segmentation cut the same span."""
    return abs(done.start - segment.start) < 1e-3 and abs(done.end - segment.end) < 1e-3


# -- the entry point ----------------------------------------------------------------------------


async def transcribe_stream(
    source: str | Source,
    options: PipelineOptions,
    mapper: Mapper,
    *,
    completed: Mapping[int, SegmentDone] | None = None,
    abandon: str = "finish",
) -> AsyncIterator[Event]:
    """Meta, then SegmentDone/SegmentFailed/Progress as they happen, then Done (or Failed).

    ``mapper`` is the parallel mapper (a server shares one across requests); ``options.mode``
    picks how it is used. ``completed`` holds segments a previous run of the same source and
    options already finished (a store's): they are sent again as they are cut, without being
    transcribed again. A fatal problem (media that cannot be read, a source too long, a
    mapper that broke) ends the stream with ``Failed``; every segment sent before it stays valid.

    ``abandon`` (:data:`~transcriber.fanout.ABANDON`) is what becomes of segments already inside
    an engine when the stream is closed early: ``finish`` (the worker stays warm for the next
    job; cheaper where a model load costs more than the rest of a segment, as on a GPU) or
    ``kill`` (the work stops within a second, for one model load).
    """
    if abandon not in ABANDON:
        raise ValueError(f"unknown abandon policy {abandon!r}; choose one of {', '.join(ABANDON)}")
    started = time.monotonic()
    if options.mode not in tuple(Mode):
        yield Failed(f"unknown mode {options.mode!r}; choose one of {', '.join(Mode)}", "bad_option")
        return
    try:
        src = await _resolve(source, options)
    except MediaError as err:
        yield Failed(str(err), err.code)
        return
    except Exception as err:  # a bug or an unmapped library error: still one clear event
        log.exception("resolving %r failed", source)
        yield Failed(f"could not open this source ({type(err).__name__}: {err})", "error")
        return
    yield _meta(src, options)

    # Decode in a thread; feed its segments to the mapper as jobs while decoding goes on; the
    # loop below turns what comes back (in completion order) into events.
    tally = _Tally(started=started, duration=src.duration)
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    feed = _DecodeFeed(src, options)
    jobs = _jobs(feed, outbox, completed or {}, options, tally, abandon)
    feed.start()
    pump_task = asyncio.create_task(_pump(mapper, options.mode, jobs, outbox))
    fatal: BaseException | None = None
    try:
        while True:
            match await outbox.get():
                case Transcribed(result):
                    event, fresh = _segment_event(result), True
                    tally.engine_call(result)
                case Reused(stored):
                    event, fresh = stored, False
                case DecodeEnded():
                    yield tally.progress(feed)
                    continue
                case DecodeFailed(error):
                    fatal = error  # segments already cut still finish; then the stream fails
                    continue
                case MapperFailed(error):
                    fatal = error
                    break
                case MapperDone():
                    break
            tally.finish(event, fresh)
            yield event
            yield tally.progress(feed)
        if fatal is not None:
            yield _failure(fatal)
            return
        yield _done(tally, feed)
    finally:
        pump_task.cancel()
        await asyncio.gather(pump_task, return_exceptions=True)
        await feed.close()


async def _resolve(source: str | Source, options: PipelineOptions) -> Source:
    if isinstance(source, Source):
        resolved = source
    else:
        resolved = await asyncio.to_thread(media.resolve, source, **options.resolve_options)
    limit = options.max_duration
    if limit is not None and (resolved.duration or 0) > limit:
        raise media.TooLong(
            f"The media is {clock(resolved.duration)} long, over the {clock(limit)} limit."
        )
    return resolved


def _meta(src: Source, options: PipelineOptions) -> Meta:
    return Meta(
        source_id=src.id,
        title=src.title,
        duration=src.duration,
        engine=options.engine.engine,
        model=options.engine.model,
        url=src.url,
        webpage_url=src.webpage_url,
        is_youtube=src.is_youtube,
        language=options.transcribe.language,
        task=options.transcribe.task,
        mode=options.mode,
        chapters=src.chapters,
    )


async def _jobs(
    feed: _DecodeFeed,
    outbox: asyncio.Queue[Message],
    completed: Mapping[int, SegmentDone],
    options: PipelineOptions,
    tally: _Tally,
    abandon: str,
) -> AsyncIterator[SegmentJob]:
    """The segments ``feed`` cuts, as jobs for the mapper. Those that need no engine (reused
    from ``completed``; silent, in parallel mode) and the end of decoding go straight to
    ``outbox``."""
    seed: str | None = None  # sequential mode: the text before the first missing segment
    while True:
        item = await feed.get()
        if not isinstance(item, Cut):  # DecodeEnded or DecodeFailed: the main loop decides
            outbox.put_nowait(item)
            return
        segment = item.segment
        stored = completed.get(segment.index)
        if stored is not None and _same_cut(stored, segment):
            seed = bounded_prompt(f"{seed or ''} {stored.text}")
            outbox.put_nowait(Reused(stored))
            continue
        # Nothing for an engine to do in a silent segment: no need to ship the audio. In
        # sequential mode it still goes through the mapper, which keeps the promised index
        # order (run_job skips it at once, and the prompt carries over it).
        if segment.silent and options.mode != Mode.SEQUENTIAL:
            empty = SegmentResult(segment.index, float(segment.start), float(segment.end), silent=True)
            outbox.put_nowait(Transcribed(empty))
            continue
        transcribe = options.transcribe
        if options.mode == Mode.SEQUENTIAL and seed and not transcribe.initial_prompt:
            transcribe = dataclasses.replace(transcribe, initial_prompt=seed)
        seed = None
        if tally.first_dispatch is None:
            tally.first_dispatch = time.monotonic()
        yield SegmentJob(
            index=segment.index,
            start=float(segment.start),  # plain floats: events go to JSON as they are
            end=float(segment.end),
            audio=segment.samples,
            engine=options.engine,
            options=transcribe,
            silent=segment.silent,
            abandon=abandon,
            speech=segment.speech,
        )


async def _pump(
    mapper: Mapper, mode: str, jobs: AsyncIterator[SegmentJob], outbox: asyncio.Queue[Message]
) -> None:
    """Run ``jobs`` through the mapper for ``mode``, each result into ``outbox``."""
    results = mapper_for_mode(mapper, mode).map(jobs)
    try:
        async for result in results:
            outbox.put_nowait(Transcribed(result))
    except Exception as err:  # the mapper itself broke (not one segment)
        log.exception("the mapper failed")
        outbox.put_nowait(MapperFailed(err))
    finally:
        await results.aclose()
    outbox.put_nowait(MapperDone())


def _done(tally: _Tally, feed: _DecodeFeed) -> Done:
    wall = time.monotonic() - tally.started
    audio = feed.samples / SAMPLE_RATE
    first = tally.first_segment or tally.first_any_segment
    return Done(
        wall_s=round(wall, 3),
        first_segment_s=None if first is None else round(first - tally.started, 3),
        audio_s=round(audio, 3),
        rtf=round(wall / audio, 4) if audio > 0 else None,
        segments=feed.cut,
        failed_segments=sorted(tally.failed),
        reused_segments=tally.reused,
        dropped_pieces=tally.dropped,
        redecoded_segments=tally.redecoded,
        batch_sizes=dict(sorted(tally.batch_sizes.items())),
    )


def _failure(err: BaseException) -> Failed:
    if isinstance(err, MediaError):
        return Failed(str(err), err.code)
    log.error("transcription failed", exc_info=err)
    return Failed(f"transcription failed ({type(err).__name__}: {err})", "error")
