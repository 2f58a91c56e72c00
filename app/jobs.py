"""Jobs: one transcription run, its event log, and everyone listening to it.

A job is an asyncio task that consumes :func:`transcriber.pipeline.transcribe_stream`. Each event
gets the next sequence number of its job (1, 2, 3...; the SSE ``id:``), is written to the store,
and only then is handed to live listeners — so anything a listener has seen can be replayed.

Lifetimes:

- A job runs while someone follows it, and for ``job_grace_s`` after the last listener leaves
  (or after it was created; looking at it with :meth:`JobManager.get` does not count); then it
  is cancelled.
  One-shot streams (``POST /transcribe``) use a grace of zero: their client leaving stops the work,
  and their segments already inside an engine are stopped too (``abandon="kill"``: their workers
  are killed and replaced), so it all stops within a second. Other jobs, when cancelled or past
  their grace, let such segments finish (``abandon="finish"``): nothing asks them to stop fast,
  and the workers stay warm for the next job (a model load can cost more than a segment).
- The same request (source + engine + model + language + task + mode + beam size) is a *cache
  key*. Asking again while a job with that key runs joins it; once it is done, the finished job
  itself is returned and replayed from the store (no new job is made, nothing is transcribed).
- An uploaded file lives as long as its job's transcript (the page plays it beside the text,
  ``GET /jobs/{id}/media``); a job that ended without any segment deletes it.
- A job still ``queued``/``running`` when its server died is marked ``interrupted`` at start-up.
  Asking for it again (same request, or its events) resumes it in place: the pipeline gets the
  finished segments as ``completed=`` and transcribes only what is missing; sequence numbers go
  on from the last stored one, so a browser's EventSource reconnect loses nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.store import (
    JobRecord,
    Store,
    StoredEvent,
    completed_segments,
)
from transcriber.engine import EngineConfig, TranscribeOptions
from transcriber.events import Done, Event, Failed, Meta, Progress, SegmentDone, to_dict
from transcriber.fanout import Mapper
from transcriber.media import youtube_id
from transcriber.pipeline import PipelineOptions, transcribe_stream
from transcriber.urlguard import check_url
from transcriber.vad import VadOptions
from transcriber.vocab import ACTIVE, FINISHED, JobStatus, Mode, Task

log = logging.getLogger("streamscribe.jobs")

class JobError(Exception):
    """Base of the job manager's errors; ``str()`` is for people, ``code`` is stable for
    programs (the API's status for each is in :data:`app.errors.JOB_ERROR_STATUS`)."""

    code = "bad_request"


class JobNotFound(JobError):
    code = "not_found"


class TooManyJobs(JobError):
    """The concurrent-job limit is reached; try again after ``retry_after`` seconds."""

    code = "busy"

    def __init__(self, limit: int, retry_after: int):
        super().__init__(
            f"The server is busy with {limit} transcriptions already; try again in about "
            f"{retry_after} s."
        )
        self.retry_after = retry_after


class NotResumable(JobError):
    code = "not_resumable"


class RunningElsewhere(JobError):
    """Another server (a second web container on Modal) holds the job's lease and runs it."""

    code = "running_elsewhere"


class ModelNotServed(JobError):
    """The mapper cannot run this engine/model (a Modal deployment serves one, pinned)."""

    code = "model_not_served"


@dataclass(frozen=True)
class JobRequest:
    """What to transcribe and how; the API's request body, defaults filled by :meth:`resolved`."""

    #: An http(s) link yt-dlp understands (vetted by :func:`transcriber.urlguard.check_url`).
    url: str | None = None
    #: Path of an uploaded file under the data directory (set by the API, never by a client).
    upload: str | None = None
    #: SHA-256 of the uploaded bytes: the upload's identity for the cache.
    upload_sha256: str | None = None
    #: The uploaded file's name, shown as the title.
    filename: str | None = None
    model: str | None = None
    engine: str | None = None
    #: None = detect.
    language: str | None = None
    task: str = Task.TRANSCRIBE
    mode: str = Mode.PARALLEL
    beam_size: int | None = None
    #: Word-level times on every piece (``words``): the page highlights the spoken word and
    #: subtitles break between words at their real times. On unless asked otherwise.
    word_timestamps: bool | None = None
    #: Defaults of this job's SRT/VTT downloads (:class:`transcriber.subtitles.SubtitleOptions`;
    #: the download's query parameters override them). None: the library's defaults.
    max_line_width: int | None = None
    max_line_count: int | None = None
    max_words_per_line: int | None = None
    highlight_words: bool | None = None
    #: The speech gate on or off; None = the server's ``STREAMSCRIBE_VAD``.
    vad: bool | None = None
    #: The gate's speech threshold; None = :class:`transcriber.vad.VadOptions`' default.
    vad_threshold: float | None = None
    #: Segments decoded in one engine call (None: the server's ``batch_size``).
    batch_size: int | None = None

    def resolved(self, settings: Settings) -> JobRequest:
        """Defaults from ``settings`` filled in, and everything validated.

        Raises ``ValueError`` for a bad option and :class:`~transcriber.urlguard.UrlRefused`
        for a link the URL guard refuses. The option values the request body's schema fixes
        (engine, task, mode, beam size: ``app.api.TranscribeBody``) were checked there; what
        depends on the settings (model, language) is checked here. Blocking: the link's host is resolved (DNS), so
        async code calls this in a thread. The URL comes back normalised (the guard's form),
        so spellings of one link share one cache entry.
        """
        if (self.url is None) == (self.upload is None):
            raise ValueError("Give either a URL or a file.")
        url = None if self.url is None else check_url(self.url, settings.guard_policy()).url
        engine = self.engine or settings.engine
        model = self.model or settings.model
        if model != settings.model and model not in WHISPER_MODELS:
            # A request must never name a local path: only the server's model or a known name.
            raise ValueError(f"Unknown model {model!r}; choose one of {', '.join(WHISPER_MODELS)}.")
        language = (self.language or "").strip().lower() or None
        if language is not None and language not in _language_codes():
            raise ValueError(f"Unknown language {language[:16]!r}; use a code such as en, de or fr.")
        if model.endswith(".en") and language not in (None, "en"):
            raise ValueError(f"The English-only model {model} cannot transcribe {language!r}.")
        return replace(
            self,
            url=url,
            engine=engine,
            model=model,
            language=language,
            beam_size=self.beam_size or settings.beam_size,
            word_timestamps=self.word_timestamps is not False,
            vad=settings.vad if self.vad is None else self.vad,
            vad_threshold=self.vad_threshold or VadOptions.threshold,
            batch_size=self.batch_size or settings.batch_size,
        )

    def source_key(self) -> str:
        """The source's identity: a YouTube video id, the upload's hash, else the URL."""
        if self.upload is not None:
            return f"file:{self.upload_sha256}"
        assert self.url is not None  # a request names a URL or an upload
        vid = youtube_id(self.url)
        return f"youtube:{vid}" if vid else f"url:{self.url}"

    def cache_key(self) -> str:
        parts = {
            "source": self.source_key(),
            "engine": self.engine,
            "model": self.model,
            "language": self.language,
            "task": self.task,
            "mode": self.mode,
            "beam_size": self.beam_size,
            # Word times change the stored events; the subtitle options only shape downloads.
            "word_timestamps": self.word_timestamps,
            "vad": self.vad,
            "vad_threshold": self.vad_threshold,
            # A batched decode can differ from a lone one (its fallback is per segment).
            "batch_size": self.batch_size,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def vad_options(request: JobRequest) -> VadOptions:
    """The speech gate a (resolved) request asks for."""
    return VadOptions(enabled=request.vad is not False, threshold=request.vad_threshold or VadOptions.threshold)


@functools.cache
def _language_codes() -> frozenset[str]:
    """The language codes Whisper knows (the same 100 in both engines)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


WHISPER_MODELS = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo", "distil-large-v3",
)  # fmt: skip


@dataclass
class Submitted:
    record: JobRecord
    #: ``new`` | ``joined`` (same request already running) | ``cached`` (finished job) | ``resumed``.
    outcome: str


@dataclass
class _Live:
    """A job that has a task in this process."""

    record: JobRecord
    request: JobRequest
    grace: float
    #: Started by a one-shot stream (``POST /transcribe``): its work is killed when it stops.
    one_shot: bool = False
    seq: int = 0
    task: asyncio.Task | None = None
    listeners: set[asyncio.Queue] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    finished: bool = False
    finishing: bool = False
    #: Set once the final status is stored and listeners were told the job ended.
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Why the task was cancelled: ``cancelled`` (DELETE), ``abandoned`` (no listener), ``shutdown``.
    stop_reason: str | None = None
    eta: float | None = None
    #: Segments stored for this job (earlier runs' included): with any, the job has a
    #: transcript, and its upload is kept for the page's player (``GET /jobs/{id}/media``).
    segments: int = 0

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        if self.finished:
            queue.put_nowait(None)
        self.listeners.add(queue)
        return queue

    def publish(self, ev: StoredEvent | None) -> None:
        for queue in self.listeners:
            queue.put_nowait(ev)


@dataclass
class Stats:
    """Counters for ``/healthz`` and tests: what the manager did since start."""

    jobs_started: int = 0
    jobs_resumed: int = 0
    jobs_joined: int = 0
    cache_hits: int = 0
    segments_transcribed: int = 0
    running: int = 0


class JobManager:
    """Starts, shares, caches, resumes and cancels jobs; the API's only way into the pipeline."""

    def __init__(self, settings: Settings, mapper: Mapper, store: Store, *, recover: bool = True):
        self.settings = settings
        self.mapper = mapper
        self.store = store
        #: Mark jobs left running by a dead server as interrupted at :meth:`startup`. A deployment
        #: whose servers share one store (several Modal containers) must turn this off.
        self.recover = recover
        self.stats = Stats()
        self._live: dict[str, _Live] = {}
        self._by_key: dict[str, _Live] = {}
        self._submit_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> int:
        """Mark jobs a dead server left behind as interrupted; returns how many."""
        if not self.recover:
            return 0
        stale = await asyncio.to_thread(self.store.jobs_with_status, ACTIVE)
        stale = [rec for rec in stale if await self._claim(rec)]
        for rec in stale:
            await asyncio.to_thread(self.store.update_job, rec.id, status=JobStatus.INTERRUPTED)
        return len(stale)

    async def _claim(self, record: JobRecord) -> bool:
        """Take the job's owner lease where the store keeps leases (``claim``, the Modal Dict
        store); False while another live server runs it (a rolling redeploy's old container)."""
        claim = getattr(self.store, "claim", None)
        return claim is None or await asyncio.to_thread(claim, record.id)

    def _check_served(self, request: JobRequest) -> None:
        """A mapper that runs only some engines/models (``refusal``) refuses the others."""
        refusal = getattr(self.mapper, "refusal", None)
        why = refusal and refusal(request.engine, request.model)
        if why:
            raise ModelNotServed(why)

    async def shutdown(self) -> None:
        """Stop every job; they stay ``interrupted`` in the store and resume when asked for."""
        lives = list(self._live.values())
        for live in lives:
            self._stop(live, "shutdown")
        await asyncio.gather(*(lv.closed.wait() for lv in lives))

    # -- the API's calls -----------------------------------------------------------------------

    async def submit(self, request: JobRequest, *, one_shot: bool = False) -> Submitted:
        """Start (or join, or serve from cache, or resume) the job for ``request``.

        ``request`` must be :meth:`JobRequest.resolved`. Raises :class:`TooManyJobs`.
        """
        key = request.cache_key()
        self._check_served(request)
        async with self._submit_lock:
            live = self._by_key.get(key)
            if live is not None and not live.finished:
                if not one_shot:
                    live.grace = max(live.grace, self.settings.job_grace_s)
                self.stats.jobs_joined += 1
                self._discard_upload(request, live.request)
                return Submitted(live.record, "joined")
            done = await asyncio.to_thread(self.store.find_by_key, key, (JobStatus.DONE,))
            if done is not None:
                self.stats.cache_hits += 1
                self._discard_upload(request, None)
                return Submitted(done, "cached")
            stale = await asyncio.to_thread(self.store.find_by_key, key, (JobStatus.INTERRUPTED,))
            if stale is not None:
                self._discard_upload(request, JobRequest(**stale.request))
                live = await self._resume(stale, one_shot=one_shot)
                return Submitted(live.record, "resumed")
            self._check_capacity()
            record = JobRecord(id=uuid.uuid4().hex, key=key, request=asdict(request))
            await asyncio.to_thread(self.store.create_job, record)
            self._start(record, request, one_shot=one_shot, completed=[], seq=0)
            self.stats.jobs_started += 1
            return Submitted(record, "new")

    async def start_prepared(self, record: JobRecord) -> None:
        """Start a job that a batch (a playlist) stored earlier as ``queued``, or resume it where
        a dead server left it ``interrupted``. Raises :class:`TooManyJobs`."""
        async with self._submit_lock:
            if record.id in self._live or record.status in FINISHED:
                return  # another batch sharing this job started it already
            if record.status == JobStatus.INTERRUPTED:
                await self._resume(record, one_shot=False)
                return
            self._check_capacity()
            self._start(record, JobRequest(**record.request), one_shot=False, completed=[], seq=0)
            self.stats.jobs_started += 1

    async def get(self, job_id: str) -> JobRecord:
        """The job's record. Looking is not listening: it leaves the grace period alone, or a
        status poll every few seconds would keep an abandoned job running for ever."""
        record = await asyncio.to_thread(self.store.get_job, job_id)
        if record is None:
            raise JobNotFound(f"No job with id {job_id!r}.")
        return record

    async def events(self, job_id: str, after: int = 0) -> list[StoredEvent]:
        return await asyncio.to_thread(self.store.events, job_id, after)

    async def cancel(self, job_id: str) -> JobRecord:
        """Stop a queued/running job (its last event is an ``error`` with code ``cancelled``)."""
        record = await self.get(job_id)
        live = self._live.get(job_id)
        if live is not None and live.task is not None:
            self._stop(live, "cancelled")
            await live.closed.wait()
            record = await self.get(job_id)
        elif record.status == JobStatus.INTERRUPTED:
            await asyncio.to_thread(self.store.update_job, job_id, status=JobStatus.CANCELLED)
            record = await self.get(job_id)
        return record

    async def follow(
        self, job_id: str, last_event_id: int | None = None, *, one_shot: bool = False
    ) -> AsyncGenerator[StoredEvent, None]:
        """Events after ``last_event_id`` (from the store), then live ones until the job ends.

        Checks run now (:class:`JobNotFound`; an interrupted job is resumed, which may raise
        :class:`TooManyJobs`); the events come from the returned iterator, which counts as a
        listener while it is being iterated and until it is closed.
        """
        live = self._live.get(job_id)
        if live is None:
            record = await asyncio.to_thread(self.store.get_job, job_id)
            if record is None:
                raise JobNotFound(f"No job with id {job_id!r}.")
            if record.status == JobStatus.INTERRUPTED:
                async with self._submit_lock:
                    live = self._live.get(job_id) or await self._resume(record, one_shot=one_shot)
        return self._follow(job_id, last_event_id or 0, live)

    def running(self) -> int:
        return sum(1 for live in self._live.values() if not live.finished)

    # -- internals -----------------------------------------------------------------------------

    async def _follow(
        self, job_id: str, after: int, live: _Live | None
    ) -> AsyncGenerator[StoredEvent, None]:
        # Subscribe before reading the store: every event published from now on is queued, and
        # every earlier one is already stored (stored before published). Overlap is dropped by seq.
        queue = self._listen(live) if live is not None else None
        try:
            for ev in await asyncio.to_thread(self.store.events, job_id, after):
                after = ev.seq
                yield ev
            if queue is None:
                return
            while (ev := await queue.get()) is not None:
                if ev.seq > after:
                    after = ev.seq
                    yield ev
        finally:
            if live is not None and queue is not None:
                self._unlisten(live, queue)

    def _listen(self, live: _Live) -> asyncio.Queue:
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        return live.subscribe()

    def _unlisten(self, live: _Live, queue: asyncio.Queue) -> None:
        live.listeners.discard(queue)
        if not live.listeners and not live.finished:
            self._arm_grace(live, live.grace)

    def _arm_grace(self, live: _Live, delay: float) -> None:
        if live.timer is not None:
            live.timer.cancel()
        loop = asyncio.get_running_loop()
        live.timer = loop.call_later(delay, self._grace_over, live)

    def _grace_over(self, live: _Live) -> None:
        live.timer = None
        if not live.listeners and not live.finished:
            log.info("job %s: nobody listening for %.0f s, stopping it", live.record.id, live.grace)
            self._stop(live, "abandoned")

    def _stop(self, live: _Live, reason: str) -> None:
        if live.task is not None and not live.task.done() and live.stop_reason is None:
            live.stop_reason = reason
            live.task.cancel()

    def _check_capacity(self) -> None:
        limit = self.settings.max_concurrent_jobs
        if self.running() >= limit:
            etas = [lv.eta for lv in self._live.values() if lv.eta is not None and not lv.finished]
            retry = int(min(max(min(etas, default=10.0), 1.0), 120.0))
            raise TooManyJobs(limit, retry)

    async def _resume(self, record: JobRecord, *, one_shot: bool) -> _Live:
        request = JobRequest(**record.request)
        if request.upload is not None and not Path(request.upload).exists():
            raise NotResumable("This job's uploaded file is gone; upload it again.")
        self._check_served(request)
        self._check_capacity()
        stored = await asyncio.to_thread(self.store.events, record.id, 0)
        if not await self._claim(record):
            raise RunningElsewhere("This job is running on another server; follow it there.")
        live = self._start(
            record,
            request,
            one_shot=one_shot,
            completed=completed_segments(stored),
            seq=stored[-1].seq if stored else 0,
        )
        self.stats.jobs_resumed += 1
        return live

    def _start(
        self,
        record: JobRecord,
        request: JobRequest,
        *,
        one_shot: bool,
        completed: list[SegmentDone],
        seq: int,
    ) -> _Live:
        grace = 0.0 if one_shot else self.settings.job_grace_s
        live = _Live(record, request, grace=grace, one_shot=one_shot, seq=seq, segments=len(completed))
        self._live[record.id] = live
        self._by_key[record.key] = live
        # Nobody listens yet: the grace period runs from creation (a one-shot stream subscribes
        # at once; a job made by POST /jobs has job_grace_s to be followed).
        self._arm_grace(live, max(live.grace, self.settings.job_grace_s))
        # A fresh context: the task must not inherit the request's (on Modal, the web input's),
        # or cancelling that one input would cancel a job other listeners follow, and the GPU
        # calls it spawns.
        live.task = asyncio.create_task(
            self._run(live, completed), name=f"job-{record.id}", context=contextvars.Context()
        )
        live.task.add_done_callback(functools.partial(self._task_done, live))
        self.stats.running = self.running()
        return live

    def pipeline_options(self, request: JobRequest) -> PipelineOptions:
        s = self.settings
        return PipelineOptions(
            # Threads per worker are the mapper's business (a local pool splits the cores).
            engine=EngineConfig(engine=request.engine or s.engine, model=request.model or s.model),
            transcribe=TranscribeOptions(
                language=request.language,
                task=request.task,
                beam_size=request.beam_size or s.beam_size,
                word_timestamps=bool(request.word_timestamps),
                batch_size=request.batch_size or s.batch_size,
            ),
            mode=request.mode,
            vad=vad_options(request),
            max_duration=s.max_duration_s or None,
            # A web server must never read its own disk for a URL, and every request made for a
            # link obeys the URL guard (yt-dlp's and the media download's); cookies help with
            # bot checks.
            resolve_options=(
                {
                    "allow_local": False,
                    "guard": s.guard_policy(),
                    "max_bytes": s.max_download_bytes,
                    **({"cookiefile": s.cookies_file} if s.cookies_file else {}),
                }
                if request.url is not None
                else {}
            ),
        )

    async def _run(self, live: _Live, completed: list[SegmentDone]) -> None:
        record, request = live.record, live.request
        resumed = live.seq > 0
        skip = {seg.index for seg in completed}
        status: JobStatus = JobStatus.ERROR
        error: str | None = None
        wall = self.settings.max_job_wall_s or None
        try:
            await asyncio.to_thread(self.store.update_job, record.id, status=JobStatus.RUNNING)
            async with asyncio.timeout(wall):
                source = request.url or request.upload
                assert source is not None  # a request names a URL or an upload
                stream = transcribe_stream(
                    source,
                    self.pipeline_options(request),
                    self.mapper,
                    completed={seg.index: seg for seg in completed} or None,
                    abandon="kill" if live.one_shot else "finish",
                )
                try:
                    async for event in stream:
                        # A resumed job already stored its Meta and finished segments.
                        if resumed and isinstance(event, Meta):
                            continue
                        if isinstance(event, SegmentDone) and event.index in skip:
                            continue
                        await self._emit(live, event)
                        if isinstance(event, Done):
                            status = JobStatus.DONE
                        elif isinstance(event, Failed):
                            status, error = JobStatus.ERROR, event.message
                finally:
                    # transcribe_stream is an async generator, annotated as an AsyncIterator.
                    await stream.aclose()  # type: ignore[attr-defined]
            if status != JobStatus.DONE and error is None:
                error = "The transcription ended without a result."
                await self._emit(live, Failed(error, code="internal"))
        except TimeoutError:
            error = f"Stopped: the job ran longer than the {wall:.0f} s limit."
            await self._emit(live, Failed(error, code="timeout"))
        except asyncio.CancelledError:
            reason = live.stop_reason or "shutdown"
            if reason == "shutdown":
                # Not the user's doing: leave it resumable for the next server.
                status = JobStatus.INTERRUPTED
            else:
                status = JobStatus.CANCELLED
                error = (
                    "Cancelled."
                    if reason == "cancelled"
                    else "Stopped: nobody was following this job any more."
                )
                await self._emit(live, Failed(error, code="cancelled"))
        except Exception:
            log.exception("job %s failed", record.id)
            error = "Internal error while transcribing; see the server log."
            await self._emit(live, Failed(error, code="internal"))
        finally:
            await self._finish(live, status, error)

    def _task_done(self, live: _Live, task: asyncio.Task) -> None:
        """Safety net: a task cancelled before its first step never runs its own clean-up."""
        if not live.finishing:
            reason = live.stop_reason or "shutdown"
            status = JobStatus.INTERRUPTED if reason == "shutdown" else JobStatus.CANCELLED
            asyncio.get_running_loop().create_task(self._finish(live, status, None))

    async def _finish(self, live: _Live, status: JobStatus, error: str | None) -> None:
        live.finishing = True
        rec = live.record
        try:
            await asyncio.to_thread(self.store.update_job, rec.id, status=status, error=error)
        finally:
            live.finished = True
            live.closed.set()
            if live.timer is not None:
                live.timer.cancel()
            live.publish(None)
            self._live.pop(rec.id, None)
            if self._by_key.get(rec.key) is live:
                del self._by_key[rec.key]
            self.stats.running = self.running()
            if status in FINISHED and not live.segments:
                # No transcript to play along with: the file is of no further use.
                remove_upload(live.request.upload)

    async def _emit(self, live: _Live, event: Event) -> None:
        """Give ``event`` the next seq, store it, then publish it — even if cancelled meanwhile."""
        live.seq += 1
        ev = StoredEvent(live.seq, event.type, to_dict(event))
        write = asyncio.ensure_future(self._store_and_publish(live, ev, event))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # The event may already be in the store: finish publishing it so live listeners
            # never see a gap, then let the cancellation go on.
            await write
            raise

    async def _store_and_publish(self, live: _Live, ev: StoredEvent, event: Event) -> None:
        await asyncio.to_thread(self.store.append_event, live.record.id, ev)
        if isinstance(event, Meta):
            fields: dict[str, Any] = {
                "title": event.title,
                "duration": event.duration,
                "source_id": event.source_id,
            }
            await asyncio.to_thread(self.store.update_job, live.record.id, **fields)
            live.record = replace(live.record, **fields)
        elif isinstance(event, SegmentDone):
            self.stats.segments_transcribed += 1
            live.segments += 1
        elif isinstance(event, Progress):
            live.eta = event.eta
        live.publish(ev)

    @staticmethod
    def _discard_upload(request: JobRequest, kept: JobRequest | None) -> None:
        """Delete an upload this request brought when another job's file serves instead."""
        if kept is None or kept.upload != request.upload:
            remove_upload(request.upload)


def remove_upload(path: str | None) -> None:
    """Delete an uploaded file and the folder made for it (``uploads/<id>/<name>``)."""
    if path:
        Path(path).unlink(missing_ok=True)
        try:
            Path(path).parent.rmdir()
        except OSError:
            pass
