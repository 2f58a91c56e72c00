"""Who may call the API: with ``STREAMSCRIBE_TOKEN`` set, every API route and the OpenAPI docs
need that token.

- Programs send ``Authorization: Bearer <token>`` (curl ``-H``), on any method.
- A browser cannot add headers to an ``EventSource``, a download link or the docs page, so the
  page stores the token in the ``streamscribe_token`` cookie (``SameSite=Strict``), which is
  accepted on GET and HEAD only. Safe methods only: another site's form can make a browser send
  cookies with a POST, never an ``Authorization`` header, so changes still need the header.

Tokens never travel in a URL, where access logs and browser history would keep them.
"""

from __future__ import annotations

import hmac
from urllib.parse import unquote

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app.errors import ApiError

#: The cookie the page sets (web/app.js) for the requests it cannot add a header to.
TOKEN_COOKIE = "streamscribe_token"

#: Methods that may authenticate with the cookie: they change nothing.
SAFE_METHODS = ("GET", "HEAD")


def require_token(request: Request) -> None:
    """A FastAPI dependency: 401 unless the request carries the configured token (if any)."""
    token = request.app.state.settings.token
    if not token:
        return
    given = ""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = credentials.strip()
    elif request.method in SAFE_METHODS:
        # The page percent-encodes the value (a cookie cannot hold ";" or spaces).
        given = unquote(request.cookies.get(TOKEN_COOKIE, ""))
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "A valid access token is needed.", headers={"WWW-Authenticate": "Bearer"})


#: Add to a route's ``dependencies`` to guard it.
AUTH = [Depends(require_token)]


def add_docs(app: FastAPI) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc`` behind the token, like the API they describe.

    The app must be built with ``openapi_url=None, docs_url=None, redoc_url=None`` so FastAPI's
    own, unguarded routes are not there too.
    """
    title = f"{app.title} API"

    @app.get("/openapi.json", dependencies=AUTH, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=AUTH, include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=title)

    @app.get("/redoc", dependencies=AUTH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=title)
