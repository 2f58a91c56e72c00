"""Playlists: a playlist, channel or feed link becomes a batch of ordinary jobs.

``POST /jobs`` with such a link lists its entries (:func:`transcriber.playlist.list_playlist`,
no media downloaded) and answers 201 ``{"id", "type": "playlist", "title", "jobs": [...]}``.
Every entry is an ordinary job, made (``queued``) with the playlist so its id is known at once:
its events, downloads and cache are those of any job, and an entry already transcribed with the
same options is the cached job itself. An entry the URL guard refuses is a job that failed at
once, with the guard's reason.

A *runner* (one asyncio task per playlist) starts the entries a few at a time: at most
``playlist_concurrency`` of one playlist run at once, and never in the last free slot of
``max_concurrent_jobs``, so a 50-entry playlist cannot keep a single video waiting. It follows
each entry it started (which keeps the entry alive, as any listener does) and copies the entry's
events into the playlist's own log, tagged with ``job_id``, beside ``playlist`` progress events.
That log is stored before it is sent, like a job's, so ``GET /playlists/{id}/events`` replays
and resumes with ``Last-Event-ID`` exactly as a job's stream does.

Routes (registered by :func:`register`): ``GET /playlists/{id}``,
``GET /playlists/{id}/events``, ``GET /playlists/{id}/transcripts.zip?format=srt|vtt|txt|json``,
``DELETE /playlists/{id}``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any, Literal, Protocol, cast

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from app.jobs import (
    JobError,
    JobManager,
    JobNotFound,
    JobRequest,
    TooManyJobs,
)
from app.settings import Settings
from app.store import JobRecord, PlaylistRecord, PlaylistStore, Store, StoredEvent
from transcriber import formats
from transcriber.events import Failed, Meta, from_dict, to_dict
from transcriber.media import MediaError, youtube_id
from transcriber.playlist import Entry, Playlist, file_name, list_playlist
from transcriber.vocab import ACTIVE, FINISHED, JobStatus, OutputFormat

log = logging.getLogger("streamscribe.playlists")

#: Seconds between tries to start the next entry while the server has no room for it.
RETRY_S = 0.5


@dataclass
class _Run:
    """A playlist whose runner lives in this process."""

    record: PlaylistRecord
    #: The last seq of the playlist's log.
    seq: int
    #: job id -> its status as the runner last saw it.
    statuses: dict[str, str]
    #: job id -> the last of its events copied into the playlist's log.
    copied: dict[str, int]
    listeners: set[asyncio.Queue] = field(default_factory=set)
    task: asyncio.Task | None = None
    #: Entries this runner started (DELETE cancels them).
    started: set[str] = field(default_factory=set)
    cancelled: bool = False
    finished: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when a DELETE wants the runner to look at once.
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, ev: StoredEvent | None) -> None:
        for queue in self.listeners:
            queue.put_nowait(ev)


class _PlaylistJobStore(Store, PlaylistStore, Protocol):
    """The job store with playlists (when :attr:`PlaylistManager.enabled`)."""


class PlaylistManager:
    """Makes playlists of jobs and runs them through the :class:`JobManager`."""

    def __init__(self, settings: Settings, jobs: JobManager):
        self.settings = settings
        self.jobs = jobs
        self.store = cast(_PlaylistJobStore, jobs.store)  # used only when enabled
        self._runs: dict[str, _Run] = {}

    @property
    def enabled(self) -> bool:
        """Whether the store keeps playlists (the SQLite and the Modal Dict stores do)."""
        return hasattr(self.store, "create_playlist")

    # -- POST /jobs -----------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> PlaylistRecord | None:
        """The playlist made for ``request``'s link, or None when the link is not a playlist.

        A link that cannot be listed (unreachable, refused while listing) is not a playlist
        here: the ordinary job then reports the error on its stream, as for any link.
        """
        if not self.enabled or request.url is None or youtube_id(request.url):
            return None  # a YouTube video id means one video (playlists are never expanded)
        s = self.settings
        options = {"cookiefile": s.cookies_file} if s.cookies_file else {}
        try:
            listing = await asyncio.to_thread(
                list_playlist,
                request.url,
                guard=s.guard_policy(),
                max_items=s.max_playlist_items,
                **options,
            )
        except MediaError as err:
            log.info("listing %s failed (%s); trying it as one video", request.url, err)
            return None
        if listing is None:
            return None
        if not listing.entries:
            raise EmptyPlaylist("This playlist has no items.")
        record = await asyncio.to_thread(self._create, listing, request)
        self._run(record)
        return record

    def _create(self, listing: Playlist, request: JobRequest) -> PlaylistRecord:
        """Blocking: one job per entry (or the cached job), then the playlist record."""
        entries = []
        for entry in listing.entries:
            job_id = self._entry_job(entry, request)
            entries.append(
                {"index": entry.index, "job_id": job_id, "title": entry.title, "url": entry.url}
            )
        record = PlaylistRecord(
            id=uuid.uuid4().hex,
            url=listing.url,
            title=listing.title,
            entries=entries,
            total=listing.total,
            notice=listing.notice,
        )
        self.store.create_playlist(record)
        return record

    def _entry_job(self, entry: Entry, request: JobRequest) -> str:
        fields: dict[str, Any] = {"title": entry.title, "duration": entry.duration}
        if entry.error is not None:
            record = JobRecord(
                id=uuid.uuid4().hex,
                key=f"refused:{uuid.uuid4().hex}",
                request=asdict(replace(request, url=entry.url)),
                status=JobStatus.ERROR,
                error=entry.error,
                **fields,
            )
            self.store.create_job(record)
            failed = to_dict(Failed(entry.error, code=entry.code or "refused"))
            self.store.append_event(record.id, StoredEvent(1, failed["type"], failed))
            return record.id
        job_request = replace(request, url=entry.url)
        key = job_request.cache_key()
        # Done: the cached job itself. Waiting or running (the same feed posted twice, an
        # entry shared by two playlists): that job, started by whichever runner comes first.
        for statuses in ((JobStatus.DONE,), (*ACTIVE, JobStatus.INTERRUPTED)):
            same = self.store.find_by_key(key, statuses)
            if same is not None:
                return same.id
        record = JobRecord(id=uuid.uuid4().hex, key=key, request=asdict(job_request), **fields)
        self.store.create_job(record)
        return record.id

    # -- the API's other calls ------------------------------------------------------------------

    async def get(self, playlist_id: str) -> PlaylistRecord:
        record = None
        if self.enabled:
            record = await asyncio.to_thread(self.store.get_playlist, playlist_id)
        if record is None:
            raise JobNotFound(f"No playlist with id {playlist_id!r}.")
        if record.status == JobStatus.RUNNING and playlist_id not in self._runs:
            self._run(record)  # its server died: go on where it stopped
        return record

    async def view(self, record: PlaylistRecord) -> dict[str, Any]:
        return await asyncio.to_thread(self._view, record)

    def _view(self, record: PlaylistRecord) -> dict[str, Any]:
        """``GET /playlists/{id}``: status, totals and every entry with its progress."""
        jobs = []
        for entry in record.entries:
            job = self.store.get_job(entry["job_id"])
            status = job.status if job is not None else JobStatus.ERROR
            jobs.append(
                {
                    "id": entry["job_id"],
                    "index": entry["index"],
                    # The listing's title (a feed item's, a video's): the media's own may be
                    # a bare file name.
                    "title": entry["title"],
                    "url": entry["url"],
                    "status": status,
                    "progress": self._progress(entry["job_id"], status),
                    "duration": job.duration if job is not None else None,
                    "error": job.error if job is not None else None,
                    "job_url": f"/jobs/{entry['job_id']}",
                    "events_url": f"/jobs/{entry['job_id']}/events",
                }
            )
        counts = _counts(j["status"] for j in jobs)
        return {
            "id": record.id,
            "type": "playlist",
            "title": record.title,
            "source_url": record.url,
            "status": record.status,
            "created": record.created,
            "updated": record.updated,
            "total": record.total,
            "truncated": record.notice is not None,
            "notice": record.notice,
            "counts": counts,
            "jobs": jobs,
            "url": f"/playlists/{record.id}",
            "events_url": f"/playlists/{record.id}/events",
            "transcripts_url": f"/playlists/{record.id}/transcripts.zip",
        }

    def _progress(self, job_id: str, status: str) -> float | None:
        """The share of the entry's audio transcribed: 1 when done, from its last progress."""
        if status == JobStatus.DONE:
            return 1.0
        if status != JobStatus.RUNNING:
            return None
        last = next((ev.data for ev in reversed(self.store.events(job_id)) if ev.type == "progress"), None)
        if not last or not last.get("duration"):
            return 0.0
        return min(1.0, last["audio_done"] / last["duration"])

    async def follow(self, playlist_id: str, after: int = 0) -> AsyncIterator[StoredEvent]:
        """The playlist's log after ``after``, then live events until every entry ended."""
        await self.get(playlist_id)
        return self._follow(playlist_id, after, self._runs.get(playlist_id))

    async def _follow(self, playlist_id: str, after: int, run: _Run | None) -> AsyncIterator[StoredEvent]:
        # As JobManager._follow: subscribe first, replay the store, drop overlap by seq.
        queue: asyncio.Queue | None = None
        if run is not None and not run.finished:
            queue = asyncio.Queue()
            run.listeners.add(queue)
        try:
            for ev in await asyncio.to_thread(self.store.playlist_events, playlist_id, after):
                after = ev.seq
                yield ev
            while queue is not None and (ev := await queue.get()) is not None:
                if ev.seq > after:
                    after = ev.seq
                    yield ev
        finally:
            if run is not None and queue is not None:
                run.listeners.discard(queue)

    async def cancel(self, playlist_id: str) -> PlaylistRecord:
        """Stop what is left: queued entries never start, running ones are cancelled."""
        record = await self.get(playlist_id)
        run = self._runs.get(playlist_id)
        if run is not None and not run.finished:
            run.cancelled = True
            run.wake.set()
            for job_id in list(run.started):
                await self.jobs.cancel(job_id)
            await run.closed.wait()
            record = await self.get(playlist_id)
        return record

    async def transcripts_zip(self, record: PlaylistRecord, fmt: str) -> bytes:
        return await asyncio.to_thread(self._zip, record, fmt)

    def _zip(self, record: PlaylistRecord, fmt: str) -> bytes:
        """One document per finished entry, named ``NN title.fmt`` (NN: its place in the list)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for entry in record.entries:
                job = self.store.get_job(entry["job_id"])
                if job is None or job.status != JobStatus.DONE:
                    continue
                stored = self.store.events(job.id)
                segments = formats.assemble(ev.data for ev in stored)
                meta = next(
                    (m for ev in stored if ev.type == Meta.type and isinstance(m := from_dict(dict(ev.data)), Meta)),
                    None,
                )
                name = file_name(entry["index"], entry["title"], fmt)
                archive.writestr(name, formats.write(fmt, segments, meta))
        return buffer.getvalue()

    async def shutdown(self) -> None:
        """Stop the runners (the jobs stop with the job manager); they go on after a restart."""
        runs = [run for run in self._runs.values() if run.task is not None]
        for run in runs:
            cast(asyncio.Task, run.task).cancel()
        await asyncio.gather(*(run.closed.wait() for run in runs))

    # -- the runner -----------------------------------------------------------------------------

    def _run(self, record: PlaylistRecord) -> None:
        run = _Run(record, seq=0, statuses={}, copied={})
        self._runs[record.id] = run
        run.task = asyncio.create_task(self._drive(run), name=f"playlist-{record.id}")

    async def _drive(self, run: _Run) -> None:
        record = run.record
        try:
            await asyncio.to_thread(self._load, run)
            if run.seq == 0:
                await self._progress_event(run, None)
            await self._start_and_follow(run)
            counts = _counts(run.statuses.values())
            status = (
                JobStatus.CANCELLED if run.cancelled or (counts[JobStatus.CANCELLED] and not counts[JobStatus.DONE] + counts[JobStatus.ERROR])
                else JobStatus.DONE if counts[JobStatus.DONE]
                else JobStatus.ERROR
            )  # fmt: skip
            await asyncio.to_thread(self.store.update_playlist, record.id, status=status)
            run.record = replace(record, status=status)
            await self._progress_event(run, None)
        except asyncio.CancelledError:
            pass  # shutdown: the playlist stays running and resumes when next asked for
        except Exception:
            log.exception("playlist %s failed", record.id)
            # Said on the stream and stored, so nobody waits for a runner that is gone.
            await asyncio.to_thread(self.store.update_playlist, record.id, status=JobStatus.ERROR)
            run.record = replace(record, status=JobStatus.ERROR)
            await self._progress_event(run, None)
        finally:
            run.finished = True
            run.publish(None)
            run.closed.set()
            self._runs.pop(record.id, None)

    def _load(self, run: _Run) -> None:
        """Blocking: the entries' statuses and what of their events the log already holds."""
        for entry in run.record.entries:
            job = self.store.get_job(entry["job_id"])
            run.statuses[entry["job_id"]] = job.status if job is not None else JobStatus.ERROR
        for ev in self.store.playlist_events(run.record.id):
            run.seq = ev.seq
            if "job_seq" in ev.data:  # an entry's event (``playlist`` ones have no job_seq)
                run.copied[ev.data["job_id"]] = ev.data["job_seq"]

    async def _start_and_follow(self, run: _Run) -> None:
        waiting = [jid for jid, status in run.statuses.items() if status not in FINISHED]
        # Finished entries (cached, refused) only have their events copied, at once.
        followers = {
            jid: asyncio.create_task(self._copy(run, jid))
            for jid, status in run.statuses.items()
            if status in FINISHED
        }
        try:
            while waiting or followers:
                if run.cancelled and waiting:
                    await self._cancel_waiting(run, waiting)
                    waiting = []
                running = sum(1 for jid in followers if jid in run.started)
                while waiting and running < self.settings.playlist_concurrency and self._room():
                    job_id = waiting[0]
                    if not await self._start(run, job_id):
                        break
                    waiting.pop(0)
                    followers[job_id] = asyncio.create_task(self._copy(run, job_id))
                    running += 1
                run.wake.clear()
                wake = asyncio.ensure_future(run.wake.wait())
                done, _ = await asyncio.wait(
                    [*followers.values(), wake], timeout=RETRY_S, return_when=asyncio.FIRST_COMPLETED
                )
                wake.cancel()
                for job_id, task in list(followers.items()):
                    if task in done:
                        del followers[job_id]
                        await self._entry_ended(run, job_id, task)
        finally:
            for task in followers.values():
                task.cancel()

    def _room(self) -> bool:
        """Whether an entry may start: one slot of the server's stays free for other people."""
        return self.jobs.running() < max(1, self.settings.max_concurrent_jobs - 1)

    async def _start(self, run: _Run, job_id: str) -> bool:
        record = await asyncio.to_thread(self.store.get_job, job_id)
        assert record is not None  # stored with the playlist; jobs are never deleted
        try:
            await self.jobs.start_prepared(record)
        except TooManyJobs:
            return False
        run.started.add(job_id)
        run.statuses[job_id] = JobStatus.RUNNING
        await self._progress_event(run, job_id)
        if run.cancelled:
            await self.jobs.cancel(job_id)
        return True

    async def _copy(self, run: _Run, job_id: str) -> None:
        """The entry's events into the playlist's log, tagged, until the entry ends."""
        events = await self.jobs.follow(job_id, run.copied.get(job_id, 0))
        async for ev in events:
            await self._emit(run, ev.type, {**ev.data, "job_id": job_id, "job_seq": ev.seq})
            run.copied[job_id] = ev.seq

    async def _entry_ended(self, run: _Run, job_id: str, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("playlist %s: following job %s failed", run.record.id, job_id,
                      exc_info=task.exception())  # fmt: skip
        job = await asyncio.to_thread(self.store.get_job, job_id)
        status = job.status if job is not None else JobStatus.ERROR
        if run.statuses.get(job_id) != status:
            run.statuses[job_id] = status
            await self._progress_event(run, job_id)

    async def _cancel_waiting(self, run: _Run, waiting: list[str]) -> None:
        """Entries that never started end as cancelled, with the error event a job gets."""
        message = "Cancelled with its playlist."
        for job_id in waiting:
            await asyncio.to_thread(self._cancel_queued, job_id, message)
            run.statuses[job_id] = JobStatus.CANCELLED
            failed = to_dict(Failed(message, code="cancelled"))
            await self._emit(run, "error", {**failed, "job_id": job_id, "job_seq": 1})
            run.copied[job_id] = 1
            await self._progress_event(run, job_id)

    def _cancel_queued(self, job_id: str, message: str) -> None:
        failed = to_dict(Failed(message, code="cancelled"))
        seq = len(self.store.events(job_id)) + 1
        self.store.append_event(job_id, StoredEvent(seq, "error", failed))
        self.store.update_job(job_id, status=JobStatus.CANCELLED, error=message)

    async def _progress_event(self, run: _Run, job_id: str | None) -> None:
        data: dict[str, Any] = {
            "type": "playlist",
            "id": run.record.id,
            "status": run.record.status,
            "entries": len(run.record.entries),
            "counts": _counts(run.statuses.values()),
        }
        if job_id is not None:
            data |= {"job_id": job_id, "job_status": run.statuses[job_id]}
        await self._emit(run, "playlist", data)

    async def _emit(self, run: _Run, kind: str, data: dict[str, Any]) -> None:
        """Next seq, stored, then published (even when cancelled meanwhile, as for jobs)."""
        run.seq += 1
        ev = StoredEvent(run.seq, kind, data)
        write = asyncio.ensure_future(
            asyncio.to_thread(self.store.append_playlist_event, run.record.id, ev)
        )
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await write  # stored: publish it too, so live listeners never see a gap
            run.publish(ev)
            raise
        run.publish(ev)


class EmptyPlaylist(JobError):
    code = "empty_playlist"


def _counts(statuses) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(JobStatus, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


# -- routes -------------------------------------------------------------------------------------


ZipFormat = Annotated[OutputFormat, Query(description="Document format.")]


def register(
    app: FastAPI,
    playlists: PlaylistManager,
    *,
    auth: list,
    stream: Callable[..., Response],
    pick_format: Callable[[Request, str | None], str],
    last_event_id: Callable[[Request, int | None], int | None],
) -> None:
    """Add the ``/playlists`` routes; the API hands in its auth, stream and header helpers."""

    @app.get("/playlists/{playlist_id}", dependencies=auth, tags=["playlists"])
    async def get_playlist(playlist_id: str) -> dict[str, Any]:
        """Status, totals and each entry's job with its status and progress."""
        return await playlists.view(await playlists.get(playlist_id))

    @app.get("/playlists/{playlist_id}/events", dependencies=auth, tags=["playlists"],
             responses={200: {"content": {"text/event-stream": {}}}})  # fmt: skip
    async def playlist_events(
        request: Request,
        playlist_id: str,
        last_event_id_q: Annotated[int | None, Query(alias="last_event_id", ge=0)] = None,
        format: Annotated[Literal["sse", "ndjson"] | None, Query()] = None,
    ) -> Response:
        """``playlist`` progress events and every entry's events (tagged ``job_id``)."""
        after = last_event_id(request, last_event_id_q)
        # Plain text cannot tell the entries apart: the events as NDJSON instead.
        fmt = {"text": "ndjson"}.get(pick_format(request, format), pick_format(request, format))
        events = await playlists.follow(playlist_id, after or 0)
        return stream(events, fmt, playlist_id)

    @app.get("/playlists/{playlist_id}/transcripts.zip", dependencies=auth, tags=["playlists"],
             responses={200: {"content": {"application/zip": {}}}})  # fmt: skip
    async def playlist_zip(playlist_id: str, format: ZipFormat = OutputFormat.SRT) -> Response:
        """One transcript per finished entry, named from its title."""
        record = await playlists.get(playlist_id)
        body = await playlists.transcripts_zip(record, format)
        name = file_name(None, record.title, "zip")
        return Response(
            body,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.delete("/playlists/{playlist_id}", dependencies=auth, tags=["playlists"])
    async def delete_playlist(playlist_id: str) -> dict[str, Any]:
        """Cancel the entries not finished yet; finished ones stay."""
        return await playlists.view(await playlists.cancel(playlist_id))


def created_response(view: dict[str, Any]) -> JSONResponse:
    return JSONResponse(view, status_code=201, headers={"Location": view["url"]})
