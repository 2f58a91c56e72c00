"""The HTTP API and the page: ``create_app(settings, mapper, store) -> FastAPI``.

Routes (OpenAPI at ``/docs``):

- ``POST /transcribe``: JSON ``{"url", "model"?, "engine"?, "language"?, "task"?, "mode"?,
  "beam_size"?}`` or multipart with a ``file`` field (plus the same options as form fields);
  streams the job's events as SSE (default), NDJSON or plain text (``Accept`` or ``?format=``).
  The client going away stops the work.
- ``POST /jobs`` (same body) -> 201 ``{"id", "events_url", ...}``; ``GET /jobs/{id}``;
  ``GET /jobs/{id}/events`` (SSE; ``Last-Event-ID`` or ``?last_event_id=``);
  ``GET /jobs/{id}/transcript.{txt,srt,vtt,json}``; ``DELETE /jobs/{id}``.
- ``GET /healthz``; the page at ``/`` and its files under ``/static``.

Every error is JSON ``{"detail": "...", "code": "..."}`` with a 4xx status: ``detail`` is a
sentence for people, ``code`` is stable for programs (:data:`ERROR_CODES`; a link the URL guard
refuses carries the guard's code, e.g. ``forbidden_address``). 429 carries ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.jobs import JobError, JobManager, JobRequest, Submitted, remove_upload
from app.settings import Settings
from app.sse import (
    FORMATS,
    HEARTBEAT,
    STREAM_HEADERS,
    TextStream,
    choose_format,
    ndjson_event,
    sse_comment,
    sse_event,
    with_heartbeats,
)
from app.store import JobRecord, Store, StoredEvent
from transcriber import formats
from transcriber.engine import ENGINES
from transcriber.events import Meta, from_dict, to_dict
from transcriber.fanout import Mapper
from transcriber.urlguard import UrlRefused

log = logging.getLogger("streamscribe.api")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

#: Milliseconds a browser's EventSource waits before reconnecting (sent as ``retry:``).
SSE_RETRY_MS = 2000


class TranscribeBody(BaseModel):
    """The JSON body of ``POST /transcribe`` and ``POST /jobs``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="An http(s) link yt-dlp understands.")
    model: str | None = Field(None, max_length=64, description="Whisper model name; default: the server's.")
    engine: Literal[ENGINES] | None = Field(None, description="Default: the server's engine.")  # type: ignore[valid-type]
    language: str | None = Field(None, max_length=16, description="Spoken language code; default: detect.")
    task: Literal["transcribe", "translate"] = "transcribe"
    mode: Literal["parallel", "sequential"] = Field(
        "parallel",
        description="parallel: segments fan out to every worker (fast); sequential: one worker in "
        "order, each segment's text prompting the next (more consistent, slower).",
    )
    beam_size: int | None = Field(None, ge=1, le=10)
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


def _plain(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one line for people: ``url: Field required; beam_size: ...``."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header"))
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts) or "Invalid request."


#: The ``code`` of an error response when nothing finer applies, by status.
ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "busy",
    500: "internal",
}


class ApiError(HTTPException):
    """An HTTP error with a stable ``code`` beside its ``detail``."""

    def __init__(
        self, status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code or ERROR_CODES.get(status, "error")


def _whole_number(text: str | None) -> bool:
    """ASCII digits that fit an int64 (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return bool(text) and len(text) <= 18 and text.isascii() and text.isdigit()


def _http(
    status: int, detail: str, headers: dict[str, str] | None = None, *, code: str | None = None
) -> ApiError:
    return ApiError(status, detail, code, headers)


def error_response(
    status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"detail": detail, "code": code or ERROR_CODES.get(status, "error")}
    return JSONResponse(body, status_code=status, headers=headers)


# -- request bodies ------------------------------------------------------------------------------


class _UploadSink:
    """Streams one multipart body to disk: the ``file`` part into ``dest``, small fields in memory.

    The size limit is enforced as bytes arrive, so an oversized upload is refused after at most
    one chunk past the limit and never sits in memory or in a temporary file.
    """

    #: Bytes of all form fields together (the options are a few short words).
    MAX_FIELD_BYTES = 4096

    def __init__(self, dest: Path, max_bytes: int):
        self.dest = dest
        self.max_bytes = max_bytes
        self.field_bytes = 0
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._file = None
        self._header_name = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self.error: HTTPException | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        key = self._header_name.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def _header_end(self) -> None:
        self._header_name = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name != "file" and self._name not in _OPTION_FIELDS:
            raise _http(
                422,
                f"Unknown form field {self._name[:40]!r}: send the media as 'file', options as "
                f"{', '.join(_OPTION_FIELDS)}.",
                code="unknown_field",
            )
        if self._name == "file":
            if self._file is not None:
                raise _http(400, "Send one file only.", code="bad_multipart")
            self.filename = params.get(b"filename", b"upload").decode("utf-8", "replace")
            self._file = open(self.dest, "wb")  # noqa: SIM115 - closed in close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._name == "file":
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise _http(
                    413,
                    f"The file is larger than the {self.max_bytes / 2**20:g} MB limit.",
                    code="upload_too_large",
                )
            self.sha256.update(chunk)
            self._file.write(chunk)
        else:
            self._value += chunk
            self.field_bytes += len(chunk)
            if self.field_bytes > self.MAX_FIELD_BYTES:
                raise _http(413, f"The form field {self._name!r} is too long.", code="field_too_long")

    def _end(self) -> None:
        if self._name and self._name != "file":
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def _read_upload(request: Request, settings: Settings, content_type: str) -> JobRequest:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _http(400, "The multipart body has no boundary.", code="bad_multipart")
    max_bytes = int(settings.max_upload_mb * 2**20)
    # The file, the option fields and the part headers: anything beyond is not an upload.
    max_body = max_bytes + 64 * 1024
    too_big = f"The file is larger than the {settings.max_upload_mb:g} MB limit."
    declared = request.headers.get("content-length")
    if _whole_number(declared) and int(declared) > max_body:
        raise _http(413, too_big, code="upload_too_large")
    # uploads/<random>/<the file's own name>: the name becomes the job's title.
    folder = settings.upload_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    dest = folder / "upload"
    sink = _UploadSink(dest, max_bytes)
    parser = MultipartParser(boundary, sink.callbacks())
    received = 0
    try:
        # Disk writes of one network chunk are short; the parser and file stay on this thread.
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise _http(413, too_big, code="upload_too_large")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        sink.close()
        remove_upload(str(dest))
        raise _http(400, f"The multipart body is malformed ({err}).", code="bad_multipart") from None
    except BaseException:
        sink.close()
        remove_upload(str(dest))
        raise
    sink.close()
    try:
        if sink.filename is None:
            raise _http(422, "file: a multipart upload needs a 'file' field.", code="no_file")
        if sink.size == 0:
            raise _http(422, "file: the uploaded file is empty.", code="empty_upload")
        options = TranscribeBody.model_validate({"url": "-", **_form_options(sink.fields)})
    except ValidationError as err:
        remove_upload(str(dest))
        raise _http(422, _plain(err.errors())) from None
    except HTTPException:
        remove_upload(str(dest))
        raise
    # Keep the file's own name (its extension helps ffmpeg guess odd containers).
    name = re.sub(r"[^\w.\- ]+", "_", Path(sink.filename).name).strip(" .")[:120] or "upload"
    final = dest.rename(folder / name)
    return JobRequest(
        upload=str(final),
        upload_sha256=sink.sha256.hexdigest(),
        filename=Path(sink.filename).name[:200],
        **options.model_dump(exclude={"url"}),
    )


def _form_options(fields: dict[str, str]) -> dict[str, Any]:
    # Unknown fields were refused as they arrived (_UploadSink).
    return {k: v for k, v in fields.items() if v != ""}


async def _read_json(request: Request, settings: Settings) -> JobRequest:
    limit = settings.max_body_kb * 1024
    too_big = f"The request body is larger than {settings.max_body_kb} KB."
    declared = request.headers.get("content-length", "")
    if _whole_number(declared) and int(declared) > limit:
        raise _http(413, too_big, code="body_too_large")  # refused before reading a byte of it
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _http(413, too_big, code="body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:
        # ValueError: bad syntax or UTF-8, or an integer over Python's digit limit;
        # RecursionError: nesting deeper than the parser's stack.
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise _http(400, f"The body is not valid JSON ({reason}).", code="invalid_json") from None
    try:
        parsed = TranscribeBody.model_validate(data)
    except ValidationError as err:
        raise _http(422, _plain(err.errors())) from None
    return JobRequest(**parsed.model_dump())


async def read_job_request(request: Request) -> JobRequest:
    """The body of ``POST /transcribe`` / ``POST /jobs``, validated, defaults filled in."""
    settings: Settings = request.app.state.settings
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        job_request = await _read_json(request, settings)
    elif media == "multipart/form-data":
        job_request = await _read_upload(request, settings, content_type)
    else:
        raise _http(415, "Send JSON (application/json) or a file upload (multipart/form-data).")
    try:
        # The URL guard resolves the link's host (DNS): off the event loop.
        return await asyncio.to_thread(job_request.resolved, settings)
    except UrlRefused as err:
        remove_upload(job_request.upload)
        if err.address:
            log.warning("refused %s: %s resolves to %s", err.code, err.url, err.address)
        raise _http(400, str(err), code=err.code) from None
    except ValueError as err:
        remove_upload(job_request.upload)
        raise _http(422, str(err)) from None


# -- auth -----------------------------------------------------------------------------------------


def require_token(request: Request) -> None:
    """With ``STREAMSCRIBE_TOKEN`` set, API calls need ``Authorization: Bearer <token>``.

    ``?token=`` is accepted on GET requests too: a browser's EventSource and download links
    cannot send headers.
    """
    token = request.app.state.settings.token
    if not token:
        return
    given = ""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = credentials.strip()
    elif request.method == "GET":
        given = request.query_params.get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise _http(401, "A valid access token is needed.", {"WWW-Authenticate": "Bearer"})


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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        interrupted = await manager.startup()
        if interrupted:
            log.info("%d interrupted job(s) will resume when asked for", interrupted)
        try:
            yield
        finally:
            await manager.shutdown()
            await mapper.aclose()
            store.close()

    app = FastAPI(
        title="streamscribe",
        summary="Paste a link, watch the Whisper transcript stream in.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    auth = [Depends(require_token)]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Ours (ApiError) and Starlette's own (unknown path 404, wrong method 405).
        return error_response(
            exc.status_code, str(exc.detail), getattr(exc, "code", None), exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _plain(list(exc.errors())))

    @app.exception_handler(JobError)
    async def _job_error(request: Request, exc: JobError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else None
        return error_response(exc.status, str(exc), exc.code, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error; see the server log.")

    def stream(request: Request, events: AsyncIterator[StoredEvent], fmt: str, job_id: str,
               extra: dict[str, str] | None = None) -> StreamingResponse:
        spec = request.scope.get("asgi", {}).get("spec_version", "2.0")
        # Servers on ASGI spec >= 2.4 no longer cancel a response whose client left; poll then.
        poll = request.is_disconnected if tuple(map(int, spec.split("."))) >= (2, 4) else None
        text = TextStream()

        async def body() -> AsyncIterator[str]:
            if fmt == "sse":
                yield f"retry: {SSE_RETRY_MS}\n\n"
            async for item in with_heartbeats(events, settings.heartbeat_s, disconnected=poll):
                if item is HEARTBEAT:
                    if fmt == "sse":
                        yield sse_comment("ping")
                elif fmt == "sse":
                    yield sse_event(item)
                elif fmt == "ndjson":
                    yield ndjson_event(item)
                elif out := text.feed(item):
                    yield out

        media = FORMATS[fmt] + ("; charset=utf-8" if fmt != "ndjson" else "")
        headers = {**STREAM_HEADERS, "X-Job-Id": job_id, **(extra or {})}
        return StreamingResponse(body(), media_type=media, headers=headers)

    def pick_format(request: Request, explicit: str | None) -> str:
        fmt = choose_format(request.headers.get("accept"), explicit)
        if fmt is None:
            accept = request.headers.get("accept", "")
            if "application/json" in accept:
                return "ndjson"
            raise _http(406, "Ask for text/event-stream, application/x-ndjson or text/plain.")
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
        return stream(request, events, fmt, sub.record.id, {"X-Cache": _cache_header(sub)})

    @app.post("/jobs", status_code=201, dependencies=auth, openapi_extra=_BODY_DOC, tags=["jobs"])
    async def create_job(request: Request) -> JSONResponse:
        """Start a job (or join the same running one, or get the finished one from the cache)."""
        job_request = await read_job_request(request)
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
        header = request.headers.get("last-event-id")
        if last_event_id is None and header:
            if not _whole_number(header.strip()):
                raise _http(
                    400, "Last-Event-ID must be an event id from this stream.", code="bad_event_id"
                )
            last_event_id = int(header)
        fmt = pick_format(request, format)
        events = await manager.follow(job_id, last_event_id)
        return stream(request, events, fmt, job_id)

    @app.get("/jobs/{job_id}/transcript.{fmt}", dependencies=auth, tags=["jobs"],
             responses={200: {"content": {t: {} for t in formats.MEDIA_TYPES.values()}}})
    async def transcript(job_id: str, fmt: str) -> Response:
        """The transcript so far as a download (complete once the job is done)."""
        if fmt not in formats.FORMATS:
            raise _http(404, f"Unknown transcript format {fmt[:20]!r}; use txt, srt, vtt or json.")
        record = await manager.get(job_id)
        stored = await manager.events(job_id)
        segments = formats.assemble(ev.data for ev in stored)
        meta = next((from_dict(ev.data) for ev in stored if ev.type == Meta.type), None)
        document = formats.write(fmt, segments, meta)
        return Response(
            document,
            media_type=formats.MEDIA_TYPES[fmt],
            headers={"Content-Disposition": _attachment(record.title, job_id, fmt)},
        )

    @app.delete("/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    async def delete_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; finished jobs stay as they are."""
        record = await manager.cancel(job_id)
        return {"id": record.id, "status": record.status}

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


def _cache_header(sub: Submitted) -> str:
    return "hit" if sub.outcome == "cached" else "miss"
