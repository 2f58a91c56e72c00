"""The HTTP API and the page: ``create_app(settings, mapper, store) -> FastAPI``.

Routes (OpenAPI at ``/docs``):

- ``POST /transcribe``: JSON ``{"url", "model"?, "engine"?, "language"?, "task"?, "mode"?,
  "beam_size"?, "vad"?, "vad_threshold"?}`` or multipart with a ``file`` field (plus the same options as form fields);
  streams the job's events as SSE (default), NDJSON or plain text (``Accept`` or ``?format=``).
  The client going away stops the work.
- ``POST /jobs`` (same body) -> 201 ``{"id", "events_url", ...}``; ``GET /jobs/{id}``;
  ``GET /jobs/{id}/events`` (SSE; ``Last-Event-ID`` or ``?last_event_id=``);
  ``GET /jobs/{id}/transcript.{txt,srt,vtt,json}`` (SRT/VTT take ``?max_line_width=``,
  ``max_line_count``, ``max_words_per_line``, ``highlight_words``); ``GET /jobs/{id}/media``
  (an upload, with Range); ``GET /jobs/{id}/chapters.vtt``; ``DELETE /jobs/{id}``.
- A playlist, channel or feed link given to ``POST /jobs`` makes one job per entry and answers
  ``{"id", "type": "playlist", "title", "jobs": [...]}``; ``/playlists/{id}`` and its
  ``events``, ``transcripts.zip`` and ``DELETE`` live in :mod:`app.playlists`.
- ``GET /healthz``; the page at ``/`` and its files under ``/static``.

Every error is JSON ``{"detail": "...", "code": "..."}`` with a 4xx status: ``detail`` is a
sentence for people, ``code`` is stable for programs (:mod:`app.errors`; a link the URL guard
refuses carries the guard's code, e.g. ``forbidden_address``). 429 carries ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app import errors
from app import playlists as playlist_routes
from app.auth import AUTH, add_docs
from app.errors import ApiError
from app.jobs import JobManager, JobRequest, Submitted, remove_upload
from app.settings import Settings
from app.sse import (
    FORMATS,
    STREAM_HEADERS,
    EventStreamResponse,
    Heartbeat,
    TextStream,
    choose_format,
    ndjson_event,
    sse_comment,
    sse_event,
    with_heartbeats,
)
from app.store import JobRecord, Store, StoredEvent
from app.uploads import receive_upload, whole_number
from transcriber import formats
from transcriber.events import Meta, from_dict, to_dict
from transcriber.fanout import Mapper
from transcriber.subtitles import SubtitleOptions
from transcriber.urlguard import UrlRefused
from transcriber.vocab import EngineName, Mode, Task

log = logging.getLogger("streamscribe.api")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

#: Milliseconds a browser's EventSource waits before reconnecting (sent as ``retry:``).
SSE_RETRY_MS = 2000


_SUBTITLE_DOC = {
    "max_line_width": "SRT/VTT: characters per line (default 42; 0: one cue per Whisper piece).",
    "max_line_count": "SRT/VTT: lines per cue (default 2).",
    "max_words_per_line": "SRT/VTT: words per line (default: no limit).",
    "highlight_words": "SRT/VTT: one cue per word, the spoken word underlined.",
}


class TranscribeBody(BaseModel):
    """The JSON body of ``POST /transcribe`` and ``POST /jobs``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="An http(s) link yt-dlp understands.")
    model: str | None = Field(None, max_length=64, description="Whisper model name; default: the server's.")
    engine: EngineName | None = Field(None, description="Default: the server's engine.")
    language: str | None = Field(None, max_length=16, description="Spoken language code; default: detect.")
    task: Task = Task.TRANSCRIBE
    mode: Mode = Field(
        Mode.PARALLEL,
        description="parallel: segments fan out to every worker (fast); sequential: one worker in "
        "order, each segment's text prompting the next (more consistent, slower).",
    )
    beam_size: int | None = Field(None, ge=1, le=10)
    word_timestamps: bool | None = Field(
        None, description="Word-level times on every piece (default: on; the page and the "
        "subtitle shaping use them)."
    )
    max_line_width: int | None = Field(None, ge=0, le=200, description=_SUBTITLE_DOC["max_line_width"])
    max_line_count: int | None = Field(None, ge=1, le=10, description=_SUBTITLE_DOC["max_line_count"])
    max_words_per_line: int | None = Field(
        None, ge=1, le=100, description=_SUBTITLE_DOC["max_words_per_line"]
    )
    highlight_words: bool | None = Field(None, description=_SUBTITLE_DOC["highlight_words"])
    vad: bool | None = Field(
        None,
        description="The speech gate: no text over music, noise or hum (Silero VAD); default: the "
        "server's (STREAMSCRIBE_VAD, on).",
    )
    vad_threshold: float | None = Field(
        None, gt=0, lt=1, description="Speech probability at which the gate hears speech (default 0.4)."
    )
    batch_size: int | None = Field(
        None, ge=1, le=64, description="Segments decoded in one engine call; 1 decodes each alone. "
        "Default: the server's (STREAMSCRIBE_BATCH_SIZE)."
    )


#: ``?format=``: the response type, overriding ``Accept``.
Format = Annotated[Literal["sse", "ndjson", "text"] | None, Query(description="Overrides Accept.")]

_OPTION_FIELDS = tuple(name for name in TranscribeBody.model_fields if name != "url")

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TranscribeBody.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{
                            name: {"type": "string"}
                            for name in _OPTION_FIELDS
                        },
                    },
                }
            },
        },
    }
}


# -- request bodies ------------------------------------------------------------------------------


async def _read_upload(request: Request, settings: Settings) -> JobRequest:
    upload = await receive_upload(request, settings, _OPTION_FIELDS)
    try:
        options = TranscribeBody.model_validate({"url": "-", **upload.fields})
    except ValidationError as err:
        remove_upload(str(upload.path))
        raise ApiError(422, errors.plain(err.errors())) from None
    return JobRequest(
        upload=str(upload.path),
        upload_sha256=upload.sha256,
        filename=upload.filename,
        **options.model_dump(exclude={"url"}),
    )


async def _read_json(request: Request, settings: Settings) -> JobRequest:
    limit = settings.max_body_kb * 1024
    too_big = f"The request body is larger than {settings.max_body_kb} KB."
    declared = request.headers.get("content-length", "")
    if whole_number(declared) and int(declared) > limit:
        raise ApiError(413, too_big, code="body_too_large")  # refused before reading a byte of it
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, too_big, code="body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:
        # ValueError: bad syntax or UTF-8, or an integer over Python's digit limit;
        # RecursionError: nesting deeper than the parser's stack.
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise ApiError(400, f"The body is not valid JSON ({reason}).", code="invalid_json") from None
    try:
        parsed = TranscribeBody.model_validate(data)
    except ValidationError as err:
        raise ApiError(422, errors.plain(err.errors())) from None
    return JobRequest(**parsed.model_dump())


async def read_job_request(request: Request) -> JobRequest:
    """The body of ``POST /transcribe`` / ``POST /jobs``, validated, defaults filled in."""
    settings: Settings = request.app.state.settings
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        job_request = await _read_json(request, settings)
    elif media == "multipart/form-data":
        job_request = await _read_upload(request, settings)
    else:
        raise ApiError(415, "Send JSON (application/json) or a file upload (multipart/form-data).")
    try:
        # The URL guard resolves the link's host (DNS): off the event loop.
        return await asyncio.to_thread(job_request.resolved, settings)
    except UrlRefused as err:
        remove_upload(job_request.upload)
        if err.address:
            log.warning("refused %s: %s resolves to %s", err.code, err.url, err.address)
        raise ApiError(400, str(err), code=err.code) from None
    except ValueError as err:
        remove_upload(job_request.upload)
        raise ApiError(422, str(err)) from None


# -- views ----------------------------------------------------------------------------------------


def _public_request(record: JobRecord) -> dict[str, Any]:
    """The request without server paths."""
    req = dict(record.request)
    req.pop("upload", None)
    req.pop("upload_sha256", None)
    return req


def _links(job_id: str) -> dict[str, Any]:
    return {
        "url": f"/jobs/{job_id}",
        "events_url": f"/jobs/{job_id}/events",
        "transcripts": {fmt: f"/jobs/{job_id}/transcript.{fmt}" for fmt in formats.FORMATS},
    }


def job_view(record: JobRecord, events: list[StoredEvent]) -> dict[str, Any]:
    """``GET /jobs/{id}``: status, meta, segments so far in reading order, progress, result."""
    last: dict[str, dict[str, Any]] = {}
    failed = []
    for ev in events:
        last[ev.type] = ev.data
        if ev.type == "segment_error":
            failed.append(ev.data)
    segments = formats.assemble(ev.data for ev in events)
    return {
        "id": record.id,
        "status": record.status,
        "created": record.created,
        "updated": record.updated,
        "title": record.title,
        "duration": record.duration,
        "source_id": record.source_id,
        "request": _public_request(record),
        "meta": last.get("meta"),
        "progress": last.get("progress"),
        "result": last.get("done"),
        "error": last.get("error"),
        "text": " ".join(s.text.strip() for s in segments if s.text.strip()),
        "segments": [{k: v for k, v in to_dict(s).items() if k != "type"} for s in segments],
        "failed_segments": failed,
        "last_event_id": events[-1].seq if events else 0,
        **_links(record.id),
    }


def _submitted_view(sub: Submitted) -> dict[str, Any]:
    rec = sub.record
    return {"id": rec.id, "status": rec.status, "outcome": sub.outcome, "title": rec.title, **_links(rec.id)}


def _attachment(title: str | None, job_id: str, fmt: str) -> str:
    base = re.sub(r"[^\w.\- ]+", "", (title or "").strip())[:80].strip() or f"transcript-{job_id[:8]}"
    ascii_name = base.encode("ascii", "ignore").decode() or f"transcript-{job_id[:8]}"
    return f"attachment; filename=\"{ascii_name}.{fmt}\"; filename*=UTF-8''{quote(base)}.{fmt}"


# -- the app --------------------------------------------------------------------------------------


def create_app(
    settings: Settings, mapper: Mapper, store: Store, *, recover: bool = True
) -> FastAPI:
    """The FastAPI app; the lifespan recovers interrupted jobs and closes mapper and store.

    ``recover``: at start-up, mark jobs the store shows as queued/running as ``interrupted``
    (they were this server's before it died). Servers that share one store at once (several
    Modal containers) must pass False, or one would take over the others' live jobs.
    """
    manager = JobManager(settings, mapper, store, recover=recover)
    playlists = playlist_routes.PlaylistManager(settings, manager)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        interrupted = await manager.startup()
        if interrupted:
            log.info("%d interrupted job(s) will resume when asked for", interrupted)
        try:
            yield
        finally:
            await playlists.shutdown()
            await manager.shutdown()
            await mapper.aclose()
            store.close()

    app = FastAPI(
        title="streamscribe",
        summary="Paste a link, watch the Whisper transcript stream in.",
        version="0.1.0",
        lifespan=lifespan,
        # Served by app.auth.add_docs instead: behind the token when one is set.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.manager = manager
    auth = AUTH
    add_docs(app)

    errors.install(app)

    def stream(events: AsyncGenerator[StoredEvent, None], fmt: str, job_id: str,
               extra: dict[str, str] | None = None) -> EventStreamResponse:
        text = TextStream()

        async def body() -> AsyncIterator[str]:
            # ``retry:`` rides on the first event: alone, it would be an event of its own to
            # spec-following clients (httpx-sse reports an empty ``message`` before ``meta``).
            retry: int | None = SSE_RETRY_MS
            async for item in with_heartbeats(events, settings.heartbeat_s):
                if isinstance(item, Heartbeat):
                    if fmt == "sse":
                        yield sse_comment("ping")
                elif fmt == "sse":
                    yield sse_event(item, retry_ms=retry)
                    retry = None
                elif fmt == "ndjson":
                    yield ndjson_event(item)
                elif out := text.feed(item):
                    yield out

        media = FORMATS[fmt] + ("; charset=utf-8" if fmt != "ndjson" else "")
        headers = {**STREAM_HEADERS, "X-Job-Id": job_id, **(extra or {})}
        return EventStreamResponse(body(), media_type=media, headers=headers)

    def pick_format(request: Request, explicit: str | None) -> str:
        fmt = choose_format(request.headers.get("accept"), explicit)
        if fmt is None:
            accept = request.headers.get("accept", "")
            if "application/json" in accept:
                return "ndjson"
            raise ApiError(406, "Ask for text/event-stream, application/x-ndjson or text/plain.")
        return fmt

    @app.post("/transcribe", dependencies=auth, openapi_extra=_BODY_DOC,
              response_class=StreamingResponse, tags=["transcribe"],
              responses={200: {"content": {m: {} for m in FORMATS.values()}}})
    async def transcribe(request: Request, format: Format = None) -> StreamingResponse:
        """Transcribe and stream the events for the life of this request."""
        fmt = pick_format(request, format)
        job_request = await read_job_request(request)
        sub = await manager.submit(job_request, one_shot=True)
        events = await manager.follow(sub.record.id, one_shot=True)
        return stream(events, fmt, sub.record.id, {"X-Cache": _cache_header(sub)})

    @app.post("/jobs", status_code=201, dependencies=auth, openapi_extra=_BODY_DOC, tags=["jobs"])
    async def create_job(request: Request) -> JSONResponse:
        """Start a job (or join the same running one, or get the finished one from the cache).

        A playlist, channel or feed link makes one job per entry: 201 with
        ``{"id", "type": "playlist", "title", "jobs": [...]}`` (see ``/playlists/{id}``)."""
        job_request = await read_job_request(request)
        playlist = await playlists.submit(job_request)
        if playlist is not None:
            return playlist_routes.created_response(await playlists.view(playlist))
        sub = await manager.submit(job_request)
        view = _submitted_view(sub)
        return JSONResponse(
            view, status_code=201, headers={"Location": view["url"], "X-Cache": _cache_header(sub)}
        )

    @app.get("/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """Status, title, segments so far (reading order), progress and result."""
        record = await manager.get(job_id)
        return job_view(record, await manager.events(job_id))

    @app.get("/jobs/{job_id}/events", dependencies=auth, tags=["jobs"],
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(
        request: Request,
        job_id: str,
        last_event_id: Annotated[int | None, Query(ge=0)] = None,
        format: Format = None,
    ) -> StreamingResponse:
        """Replay the job's events after ``Last-Event-ID`` (header or query), then follow live."""
        last_event_id = _last_event_id(request, last_event_id)
        fmt = pick_format(request, format)
        events = await manager.follow(job_id, last_event_id)
        return stream(events, fmt, job_id)

    @app.get("/jobs/{job_id}/transcript.{fmt}", dependencies=auth, tags=["jobs"],
             responses={200: {"content": {t: {} for t in formats.MEDIA_TYPES.values()}}})
    async def transcript(
        job_id: str, fmt: str, shaping: Annotated[dict[str, Any], Depends(subtitle_query)]
    ) -> Response:
        """The transcript so far as a download (complete once the job is done); SRT and VTT are
        shaped as subtitles (the query's options, else the job's, else 42 x 2)."""
        if fmt not in formats.FORMATS:
            raise ApiError(404, f"Unknown transcript format {fmt[:20]!r}; use txt, srt, vtt or json.")
        record = await manager.get(job_id)
        stored = await manager.events(job_id)
        segments = formats.assemble(ev.data for ev in stored)
        metas = [m for ev in stored if ev.type == Meta.type and isinstance(m := from_dict(ev.data), Meta)]
        meta = metas[0] if metas else None
        document = formats.write(fmt, segments, meta, subtitle_options(record, shaping))
        return Response(
            document,
            media_type=formats.MEDIA_TYPES[fmt],
            headers={"Content-Disposition": _attachment(record.title, job_id, fmt)},
        )

    _player_routes(app, manager, auth)

    @app.delete("/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    async def delete_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; finished jobs stay as they are."""
        record = await manager.cancel(job_id)
        return {"id": record.id, "status": record.status}

    playlist_routes.register(
        app, playlists, auth=auth, stream=stream, pick_format=pick_format,
        last_event_id=_last_event_id,
    )  # fmt: skip

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness plus what the job manager did since start, and the worker pool's counters
        (``pool``: segments its workers ran, retried, ...; for mappers that keep them)."""
        stats = manager.stats
        stats.running = manager.running()
        body: dict[str, Any] = {"status": "ok", "jobs": vars(stats).copy()}
        pool_stats = getattr(mapper, "stats", None)
        if callable(pool_stats):
            body["pool"] = pool_stats()
        return body

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _last_event_id(request: Request, query: int | None) -> int | None:
    """Where a stream resumes: ``?last_event_id=``, else the ``Last-Event-ID`` header."""
    header = request.headers.get("last-event-id")
    if query is None and header:
        if not whole_number(header.strip()):
            raise ApiError(400, "Last-Event-ID must be an event id from this stream.", code="bad_event_id")
        return int(header)
    return query
# -- subtitles and the page's player ---------------------------------------------------------------


def subtitle_query(
    max_line_width: Annotated[int | None, Query(ge=0, le=200, description=_SUBTITLE_DOC["max_line_width"])] = None,
    max_line_count: Annotated[int | None, Query(ge=1, le=10, description=_SUBTITLE_DOC["max_line_count"])] = None,
    max_words_per_line: Annotated[
        int | None, Query(ge=1, le=100, description=_SUBTITLE_DOC["max_words_per_line"])
    ] = None,
    highlight_words: Annotated[bool | None, Query(description=_SUBTITLE_DOC["highlight_words"])] = None,
) -> dict[str, Any]:
    """The subtitle options a download's query gives (whisper's CLI names)."""
    given = {
        "max_line_width": max_line_width,
        "max_line_count": max_line_count,
        "max_words_per_line": max_words_per_line,
        "highlight_words": highlight_words,
    }
    return {k: v for k, v in given.items() if v is not None}


def subtitle_options(record: JobRecord, query: dict[str, Any]) -> SubtitleOptions:
    """The query's options over the job's own (request fields), over the defaults."""
    fields = {k: record.request[k] for k in _SUBTITLE_DOC if record.request.get(k) is not None}
    return SubtitleOptions(**{**fields, **query})


def _player_routes(app: FastAPI, manager: JobManager, auth: list[Any]) -> None:
    """``/jobs/{id}/media`` (the uploaded file, with Range) and ``/jobs/{id}/chapters.vtt``."""

    @app.get("/jobs/{job_id}/media", dependencies=auth, tags=["jobs"],
             responses={200: {"content": {"audio/*": {}, "video/*": {}}}, 206: {"description": "A byte range."}})
    async def job_media(job_id: str) -> FileResponse:
        """The job's uploaded file for the page's player; ``Range`` requests get 206. Links
        have none here: the page plays them from their source."""
        record = await manager.get(job_id)
        path = record.request.get("upload")
        if not path or not await asyncio.to_thread(Path(path).is_file):
            raise ApiError(404, "This job has no media on the server (only uploads are kept).",
                        code="no_media")
        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, content_disposition_type="inline",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/jobs/{job_id}/chapters.vtt", dependencies=auth, tags=["jobs"],
             responses={200: {"content": {"text/vtt": {}}}})
    async def chapters_vtt(job_id: str) -> Response:
        """The source's chapters (as yt-dlp reports them) as a WebVTT chapters track."""
        await manager.get(job_id)
        meta = next((ev.data for ev in await manager.events(job_id) if ev.type == Meta.type), None)
        chapters = (meta or {}).get("chapters")
        if not chapters:
            raise ApiError(404, "This job's source has no chapters.", code="no_chapters")
        return Response(formats.write_chapters_vtt(chapters), media_type=formats.MEDIA_TYPES["vtt"])


def _cache_header(sub: Submitted) -> str:
    return "hit" if sub.outcome == "cached" else "miss"
