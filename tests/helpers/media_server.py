"""A loopback HTTP server that serves media files the way real hosts do, for tests.

ffmpeg and yt-dlp talk to it like to any web server: it answers ``GET``/``HEAD`` with the right
``Content-Type`` and ``Content-Length``, honours ``Range: bytes=...`` (206 + ``Content-Range``;
ffmpeg seeks with ranges, yt-dlp downloads in ranges), follows a redirect table and can misbehave
on purpose (send slowly, die half-way, answer with an error status).

Usage::

    from tests.helpers.media_server import MediaServer

    with MediaServer(files={"/jfk.m4a": path}, throttle_bytes_per_s=64_000) as srv:
        url = srv.url("/jfk.m4a")
        ...                                   # ffmpeg / yt-dlp read from url
        srv.paths                             # ["/jfk.m4a", ...] in request order
        srv.bytes_sent("/jfk.m4a")            # body bytes written so far for that path
        srv.completed("/jfk.m4a")             # True once one response body was sent in full
        mark = srv.mark(); ...; srv.bytes_sent("/jfk.m4a", since=mark)   # only later requests

Options (constructor keywords; all but ``files``/``directory`` may be changed on a running
server by assigning the attribute):

- ``files``: ``{"/path": Path | str | bytes}``; a ``str`` is a file path.
- ``directory``: serve every file below it too (``/name`` -> ``directory/name``).
- ``throttle_bytes_per_s``: send each response body at about this rate (None = full speed).
- ``truncate_at``: never send file bytes at offset >= N: the body stops there and the
  connection is dropped, although ``Content-Length`` promised more (a dying transfer).
- ``redirects``: ``{"/from": "/to" or "http://..."}`` answered with 302.
- ``statuses``: ``{"/path": 403}`` answered with that status and a small text body.
- ``content_types``: ``{"/path": "video/mp4"}`` overrides the type guessed from the extension.
"""

from __future__ import annotations

import mimetypes
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Python's table lacks or misnames some media types; these are what real hosts send.
_MEDIA_TYPES = {
    ".m4a": "audio/mp4",
    ".mp4": "video/mp4",
    ".webm": "audio/webm",
    ".weba": "audio/webm",
    ".mkv": "video/x-matroska",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".aac": "audio/aac",
}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Request:
    """One request as the server saw it (appended to ``MediaServer.log`` on arrival)."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    #: ``(first, last)`` byte offsets of the body sent, inclusive; None for no body.
    span: tuple[int, int] | None = None
    #: Body bytes actually written (less than the span when throttled/truncated/aborted).
    sent: int = 0
    #: True once the whole promised body went out.
    complete: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None


class MediaServer:
    """Threaded HTTP server on 127.0.0.1, on a free port; a context manager."""

    def __init__(
        self,
        files: dict[str, Path | str | bytes] | None = None,
        *,
        directory: Path | str | None = None,
        throttle_bytes_per_s: float | None = None,
        truncate_at: int | None = None,
        redirects: dict[str, str] | None = None,
        statuses: dict[str, int] | None = None,
        content_types: dict[str, str] | None = None,
    ) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.files: dict[str, Path | bytes] = {}
        for path, body in (files or {}).items():
            self.add(path, body)
        self.directory = Path(directory) if directory is not None else None
        self.throttle_bytes_per_s = throttle_bytes_per_s
        self.truncate_at = truncate_at
        self.redirects = dict(redirects or {})
        self.statuses = dict(statuses or {})
        self.content_types = dict(content_types or {})
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- set-up -----------------------------------------------------------------------------

    def add(self, path: str, body: Path | str | bytes) -> str:
        """Serve ``body`` at ``path``; returns its URL once started (the path before)."""
        if not path.startswith("/"):
            path = "/" + path
        self.files[path] = body if isinstance(body, bytes) else Path(body)
        return self.url(path) if self._httpd else path

    def start(self) -> MediaServer:
        handler = type("Handler", (_Handler,), {"media": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # throttled bodies notice this and end early
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read --------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def paths(self) -> list[str]:
        """Paths requested, in arrival order (the query string is kept)."""
        with self._lock:
            return [r.path for r in self.log]

    def mark(self) -> int:
        """A position in the log: pass it as ``since`` to count only later requests."""
        with self._lock:
            return len(self.log)

    def requests(self, path: str | None = None, since: int = 0) -> list[Request]:
        """Requests (for one path, query ignored), from log position ``since`` on."""
        with self._lock:
            return [r for r in self.log[since:] if path is None or r.path.split("?")[0] == path]

    def bytes_sent(self, path: str | None = None, since: int = 0) -> int:
        """Body bytes written so far (for one path, or in total)."""
        return sum(r.sent for r in self.requests(path, since))

    def completed(self, path: str, since: int = 0) -> bool:
        """Whether any response for ``path`` has sent its whole body."""
        return any(r.complete for r in self.requests(path, since))

    def size(self, path: str) -> int:
        body = self._lookup(path)
        if body is None:
            raise KeyError(path)
        return len(body) if isinstance(body, bytes) else body.stat().st_size

    # -- internals ----------------------------------------------------------------------------

    def _lookup(self, path: str) -> Path | bytes | None:
        if path in self.files:
            return self.files[path]
        if self.directory is not None:
            candidate = (self.directory / path.lstrip("/")).resolve()
            if candidate.is_file() and self.directory.resolve() in candidate.parents:
                return candidate
        return None

    def _content_type(self, path: str) -> str:
        if path in self.content_types:
            return self.content_types[path]
        suffix = Path(path).suffix.lower()
        return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up between requests (ffmpeg killed, yt-dlp done) is normal in
        # tests; anything else is a bug in this helper and is printed as usual.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    media: MediaServer  # set on the subclass made by MediaServer.start
    protocol_version = "HTTP/1.1"
    server_version = "MediaServer/1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # tests read MediaServer.log instead of stderr noise

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        media = self.media
        record = Request(self.command, self.path, dict(self.headers.items()))
        with media._lock:
            media.log.append(record)
        path = self.path.split("?")[0]
        try:
            if path in media.redirects:
                return self._simple(record, HTTPStatus.FOUND, {"Location": media.redirects[path]})
            if path in media.statuses:
                return self._simple(record, media.statuses[path])
            data = media._lookup(path)
            if data is None:
                return self._simple(record, HTTPStatus.NOT_FOUND)
            self._send_file(record, path, data, body)
        except (ConnectionError, TimeoutError):
            pass  # the client went away (ffmpeg killed, yt-dlp done): normal in tests
        finally:
            record.finished = time.monotonic()

    def _simple(self, record: Request, status: int, headers: dict[str, str] | None = None) -> None:
        text = f"{int(status)} {HTTPStatus(status).phrase}\n".encode()
        record.status = int(status)
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)

    def _send_file(self, record: Request, path: str, data: Path | bytes, body: bool) -> None:
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        first, last = 0, size - 1
        status = HTTPStatus.OK
        wanted = self.headers.get("Range")
        if wanted:
            match = _RANGE.match(wanted.strip())
            if match and match.group(1):
                first = int(match.group(1))
                last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            elif match and match.group(2):  # suffix range: the last N bytes
                first = max(0, size - int(match.group(2)))
            if match is None or first >= size or first > last:
                record.status = 416
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        length = last - first + 1
        record.status = int(status)
        self.send_response(status)
        self.send_header("Content-Type", self.media._content_type(path))
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not body or length == 0:
            record.complete = True
            return
        record.span = (first, last)
        self._write_body(record, data, first, last)

    def _write_body(self, record: Request, data: Path | bytes, first: int, last: int) -> None:
        media = self.media
        rate = media.throttle_bytes_per_s
        # Small pieces when throttled so the rate is smooth; big ones otherwise.
        piece = max(512, int(rate / 20)) if rate else 256 * 1024
        stop = last + 1
        if media.truncate_at is not None:
            stop = min(stop, max(first, media.truncate_at))
        handle = open(data, "rb") if isinstance(data, Path) else None  # noqa: SIM115
        try:
            if handle is not None:
                handle.seek(first)
            offset, began = first, time.monotonic()
            while offset < stop:
                if media._stopping.is_set():
                    break
                n = min(piece, stop - offset)
                chunk = handle.read(n) if handle is not None else data[offset : offset + n]
                self.wfile.write(chunk)
                self.wfile.flush()
                offset += len(chunk)
                record.sent += len(chunk)
                if rate:
                    ahead = (offset - first) / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
            if offset > last:
                record.complete = True
            else:
                self.close_connection = True  # promised more than sent: drop the connection
        finally:
            if handle is not None:
                handle.close()
