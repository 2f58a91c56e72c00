"""Every error the API answers with, and how it becomes JSON ``{"detail", "code"}``.

One way to raise (:class:`ApiError`) and one table (:data:`JOB_ERROR_STATUS`) from the job
manager's errors to HTTP statuses, as Starlette maps exceptions to handlers and httpx keeps its
exceptions in one module. ``detail`` is a sentence for people; ``code`` is stable for programs
(:data:`ERROR_CODES` when nothing finer applies; a link the URL guard refuses carries the
guard's code, e.g. ``forbidden_address``). 429 carries ``Retry-After``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.jobs import (
    JobError,
    JobNotFound,
    ModelNotServed,
    NotResumable,
    RunningElsewhere,
    TooManyJobs,
)
from app.playlists import EmptyPlaylist

log = logging.getLogger("streamscribe.api")

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

#: The HTTP status of each of the job manager's errors (their ``code`` is their own).
JOB_ERROR_STATUS: dict[type[JobError], int] = {
    JobNotFound: 404,
    NotResumable: 409,
    RunningElsewhere: 409,
    ModelNotServed: 400,
    TooManyJobs: 429,
    EmptyPlaylist: 422,
}


class ApiError(HTTPException):
    """An HTTP error with a stable ``code`` beside its ``detail``: the one way routes raise."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code or ERROR_CODES.get(status, "error")


def plain(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic errors as one line for people: ``url: Field required; beam_size: ...``."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header"))
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts) or "Invalid request."


def _response(
    status: int, detail: str, code: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"detail": detail, "code": code or ERROR_CODES.get(status, "error")}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as JSON ``{"detail", "code"}``."""

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Ours (ApiError) and Starlette's own (unknown path 404, wrong method 405).
        return _response(exc.status_code, str(exc.detail), getattr(exc, "code", None), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _response(422, plain(list(exc.errors())))

    @app.exception_handler(JobError)
    async def _job_error(request: Request, exc: JobError) -> JSONResponse:
        status = JOB_ERROR_STATUS.get(type(exc), 400)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyJobs) else None
        return _response(status, str(exc), exc.code, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _response(500, "Internal server error; see the server log.")
