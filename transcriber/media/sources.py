"""Step 1a: resolve what a person gave us (a link yt-dlp understands, or a local file) into a
:class:`Source`: a stable id, a title, the duration when known and what ffmpeg must read.

yt-dlp runs here and nowhere else in ``media``; a guarded service runs it through
:func:`transcriber.urlguard.youtube_dl`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from transcriber.media.errors import (
    COOKIES_ENV,
    SourceNotFound,
    SourceUnavailable,
    UndecodableMedia,
    UnsupportedSource,
    refused,
    ytdlp_error,
)
from transcriber.media.probe import probe_guarded, probe_header, probe_quietly

if TYPE_CHECKING:  # urlguard imports yt-dlp and requests: loaded when a guard is used
    from transcriber.urlguard import GuardPolicy

log = logging.getLogger(__name__)


@dataclass
class Source:
    """What the decoder needs, plus what a person wants to see."""

    #: Stable id: the YouTube video id for YouTube URLs, else a hash of the URL / file content.
    id: str
    title: str
    #: Seconds, when known before decoding.
    duration: float | None
    #: What ffmpeg reads: a direct media URL or a local file path.
    media: str
    #: HTTP headers ffmpeg must send for ``media`` (from yt-dlp's ``http_headers``).
    headers: dict[str, str] = field(default_factory=dict)
    #: The URL the user gave (None for local files / uploads).
    url: str | None = None
    #: Canonical page URL (e.g. ``https://www.youtube.com/watch?v=ID``) for timestamp links.
    webpage_url: str | None = None
    is_youtube: bool = False
    extractor: str | None = None
    #: The URL guard that every request for ``media`` obeys (None: ffmpeg fetches it itself).
    #: With a guard the media is downloaded by :class:`transcriber.urlguard.MediaDownload` and
    #: piped to ffmpeg, which then opens nothing on the network.
    guard: GuardPolicy | None = None
    #: Fetch ``media`` in ``Range`` requests of this many bytes (yt-dlp's ``http_chunk_size``:
    #: YouTube's CDN throttles long single transfers). Only used with a guard.
    chunk_size: int | None = None
    #: Stop the download past this many bytes (:class:`TooLarge`). Only used with a guard.
    max_bytes: int | None = None


# -- YouTube ids ----------------------------------------------------------------------------

_YOUTUBE_ID = re.compile(r"^[0-9A-Za-z_-]{11}$")
_YOUTUBE_HOSTS = ("youtube.com", "youtube-nocookie.com", "youtube.googleapis.com")
#: Path prefixes followed by the id: /shorts/ID, /embed/ID, /live/ID, /v/ID, /e/ID, /watch/ID.
_YOUTUBE_ID_PATHS = ("shorts", "embed", "live", "v", "e", "watch")
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_BARE_HOST = re.compile(r"^(?:[a-z0-9-]+\.)+[a-z]{2,}(?::\d+)?(?:[/?#]|$)", re.IGNORECASE)


def youtube_id(url: str) -> str | None:
    """The 11-character video id for any YouTube URL form, offline; None otherwise.

    Handles watch (any query order, ``&t=``, ``&list=``, ``&si=``), youtu.be, shorts, embed,
    live, /v/, music., m., gaming., youtube-nocookie.com, attribution links and URLs typed
    without a scheme. A bare id is not a URL and gives None.
    """
    text = url.strip()
    if not _URL_SCHEME.match(text):
        text = "https://" + text
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
    except ValueError:
        return None
    query = parse_qs(parts.query)
    segments = [s for s in parts.path.split("/") if s]
    found: str | None = None
    if host == "youtu.be" or host.endswith(".youtu.be"):
        found = segments[0] if segments else None
    elif any(host == h or host.endswith("." + h) for h in _YOUTUBE_HOSTS):
        if segments[:1] == ["watch"] and "v" in query:
            found = query["v"][0]
        elif len(segments) >= 2 and segments[0] in _YOUTUBE_ID_PATHS:
            found = segments[1]
        elif segments[:1] == ["attribution_link"] and "u" in query:
            return youtube_id("https://www.youtube.com" + query["u"][0])
        else:
            found = _youtube_ie_id(url)  # the rarer forms yt-dlp knows (/watch_popup, #!v=...)
    if found and _YOUTUBE_ID.match(found):
        return found
    return None


def _youtube_ie_id(url: str) -> str | None:
    from yt_dlp.extractor.youtube import YoutubeIE

    if YoutubeIE.suitable(url):
        return YoutubeIE.extract_id(url)
    return None


# -- resolve --------------------------------------------------------------------------------


def resolve(
    source: str | os.PathLike,
    *,
    allow_local: bool = True,
    guard: GuardPolicy | None = None,
    max_bytes: int | None = None,
    **ydl_options,
) -> Source:
    """A URL (yt-dlp Python API, noplaylist) or a local path -> :class:`Source`.

    ``ydl_options`` are passed to :class:`yt_dlp.YoutubeDL` over these defaults: quiet, no
    download, ``noplaylist``, format ``bestaudio/best``, playlists not expanded, deno as the
    JavaScript runtime (from the ``deno`` package) and ``cookiefile`` from
    ``$STREAMSCRIBE_COOKIES_FILE`` when that is set. ``allow_local=False`` refuses anything
    but a URL (a web server must not read its own disk for a user).

    ``guard`` (a service fetching links for others): yt-dlp runs guarded
    (:func:`transcriber.urlguard.youtube_dl`: the link on the allow-list, only the extractors it
    needs, every connection to a public address), formats served over plain HTTP(S) are
    preferred (a manifest cannot be piped), and the :class:`Source` carries the guard so that
    :func:`decode` downloads through it too, at most ``max_bytes``. A refusal anywhere raises
    :class:`SourceRefused` before any request reaches the refused address.

    Ids: the YouTube video id; for other sites ``sha1("extractor:video id")``; for direct links
    (yt-dlp's generic extractor) ``sha1(url)``; for files ``sha1(content)``, where files above
    64 MiB hash their size plus their first and last 8 MiB (fast, and still changes when the
    file does). Hashes are cut to 16 hex digits.
    """
    text = os.fspath(source).strip()
    if not text:
        raise SourceNotFound("No source given: paste a link or choose a file.")
    if not _URL_SCHEME.match(text):
        path = Path(text).expanduser()
        if allow_local and _exists(path):
            return _resolve_file(path)
        if _BARE_HOST.match(text):
            text = "https://" + text  # "youtu.be/ID", "example.com/a.mp3": a link typed bare
        elif allow_local:
            raise SourceNotFound(f"No such file or link: {text}", detail=text)
        else:
            raise UnsupportedSource(f"Not a link: {text}. Paste an http(s) URL.", detail=text)
    if text.lower().startswith("file:"):
        # Never let yt-dlp or ffmpeg read local files behind a URL; paths go the explicit way.
        raise UnsupportedSource("file: URLs are not accepted; give the path itself.", detail=text)
    return _resolve_url(text, ydl_options, guard, max_bytes)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a pasted paragraph: name too long, NUL byte...
        return False


def _resolve_file(path: Path) -> Source:
    if path.is_dir():
        raise UnsupportedSource(f"{path} is a folder, not a media file.")
    try:
        size = path.stat().st_size
        digest = _file_digest(path, size)
    except OSError as err:
        raise SourceUnavailable(f"Cannot read {path}: {err.strerror}.", detail=str(err)) from err
    if size == 0:
        raise UndecodableMedia(f"The file {path.name} is empty (0 bytes).", code="empty")
    media = str(path.resolve())
    probe = probe_header(media, {})  # a bad local file fails here, before any work is queued
    return Source(id=digest, title=path.stem, duration=probe.duration, media=media)


def _file_digest(path: Path, size: int) -> str:
    limit, piece = 64 << 20, 8 << 20
    sha = hashlib.sha1()
    with path.open("rb") as handle:
        if size <= limit:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        else:
            sha.update(str(size).encode())
            sha.update(handle.read(piece))
            handle.seek(size - piece)
            sha.update(handle.read(piece))
    return sha.hexdigest()[:16]


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class _YdlLogger:
    """yt-dlp reports through ``logging`` instead of printing; errors become typed exceptions."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)


def ydl_defaults() -> dict:
    """The yt-dlp options :func:`resolve` starts from (``ydl_options`` override them)."""
    options: dict = {
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "skip_download": True,
        "noplaylist": True,
        # A playlist link must not make yt-dlp resolve every entry; we refuse those anyway.
        "extract_flat": "in_playlist",
        "format": "bestaudio/best",
        "socket_timeout": 20,
        "logger": _YdlLogger(),
    }
    try:  # YouTube needs a JavaScript runtime; the deno package ships one outside PATH.
        import deno

        options["js_runtimes"] = {"deno": {"path": deno.find_deno_bin()}}
    except Exception:  # noqa: BLE001 - without deno yt-dlp falls back to its own search
        pass
    cookies = os.environ.get(COOKIES_ENV)
    if cookies:
        options["cookiefile"] = cookies
    return options


#: yt-dlp's format choice under the guard: a single file over HTTP(S), never a manifest (HLS,
#: DASH segments) that ffmpeg would have to fetch piece by piece on its own.
GUARDED_FORMAT = (
    "bestaudio[protocol^=http][protocol!*=dash]/best[protocol^=http][protocol!*=dash]"
)


def _resolve_url(
    url: str, ydl_options: dict, guard: GuardPolicy | None, max_bytes: int | None
) -> Source:
    import yt_dlp

    from transcriber import urlguard

    options = {**ydl_defaults(), **({"format": GUARDED_FORMAT} if guard else {}), **ydl_options}
    try:
        with urlguard.youtube_dl(options, guard) as ydl:
            info = ydl.extract_info(url, download=False)
            if info.get("_type") == "playlist":
                entries = [e for e in info.get("entries") or [] if e]
                if len(entries) != 1:
                    raise UnsupportedSource(
                        f"This link is a playlist ({len(entries)} items); paste the link of one video.",
                        code="playlist",
                    )
                info = ydl.extract_info(entries[0].get("url") or entries[0]["webpage_url"], download=False)
            media, headers, chunk_size = _media_of(info)
            cookie = ydl.cookiejar.get_cookie_header(media)
        if guard is not None:
            # The media URL is a hop like any other: public address, allowed scheme and port.
            urlguard.vet_media_url(media, guard)
    except urlguard.UrlRefused as err:
        raise refused(err) from err
    except (yt_dlp.utils.DownloadError, yt_dlp.networking.exceptions.RequestError) as err:
        # (A request error that escaped yt-dlp's own wrapping is reported the same way.)
        refusal = urlguard.refusal_in(err)
        if refusal is not None:
            raise refused(refusal) from err
        raise ytdlp_error(err, url) from err
    if cookie:
        headers["Cookie"] = cookie
    live = info.get("live_status")
    if live == "is_upcoming":
        raise SourceUnavailable("This live stream or premiere has not started yet.", code="not_started")
    if info.get("is_live") or live == "is_live":
        raise UnsupportedSource(
            "Live streams cannot be transcribed yet; try again when the stream has ended.", code="live"
        )
    extractor = info.get("extractor_key") or info.get("ie_key")
    yid = youtube_id(url) or (info.get("id") if extractor == "Youtube" else None)
    if yid:
        sid, page = yid, f"https://www.youtube.com/watch?v={yid}"
    elif extractor == "Generic":
        sid, page = _short_hash(url), info.get("webpage_url") or url
    else:
        sid, page = _short_hash(f"{extractor}:{info.get('id')}"), info.get("webpage_url") or url
    duration = info.get("duration")
    if duration is None and extractor == "Generic":
        # A direct file link: ask the file itself (through the guard: only its first bytes).
        duration = (
            probe_quietly(media, headers)
            if guard is None
            else probe_guarded(media, headers, guard, max_bytes)
        )
    return Source(
        id=sid,
        title=info.get("title") or info.get("id") or url,
        duration=float(duration) if duration else None,
        media=media,
        headers=headers,
        url=url,
        webpage_url=page,
        is_youtube=bool(yid),
        extractor=extractor,
        guard=guard,
        chunk_size=chunk_size if guard is not None else None,
        max_bytes=max_bytes if guard is not None else None,
    )


def _media_of(info: dict) -> tuple[str, dict[str, str], int | None]:
    """The one URL ffmpeg reads, its headers and the download's range size (yt-dlp's
    ``http_chunk_size``): the audio part when formats were merged."""
    chosen = info
    if not info.get("url"):
        parts = info.get("requested_formats") or []
        audio = [f for f in parts if f.get("acodec") not in (None, "none")]
        chosen = (audio or parts or [{}])[0]
    if not chosen.get("url"):
        raise UnsupportedSource("No playable media was found at this link.", code="no_media")
    headers = dict(chosen.get("http_headers") or info.get("http_headers") or {})
    chunk = (chosen.get("downloader_options") or {}).get("http_chunk_size")
    return chosen["url"], headers, int(chunk) if chunk else None
