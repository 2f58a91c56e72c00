"""Step 1: resolve a source with yt-dlp and decode it to 16 kHz mono PCM with ffmpeg.

``resolve`` turns what a person gave us (a link yt-dlp understands, or a local file) into a
:class:`Source`: a stable id, a title, the duration when known and what ffmpeg must read.
``decode`` runs ffmpeg on that and yields float32 chunks while ffmpeg is still reading, so
transcription starts long before a download would have finished and memory stays flat.

Every failure is a :class:`MediaError` subclass whose ``str()`` is a sentence for people and
whose ``code`` is stable for programs (``not_found``, ``private``, ``no_audio``, ...); the raw
tool output is kept in ``detail`` for logs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import numpy as np

from transcriber import SAMPLE_RATE

if TYPE_CHECKING:  # urlguard imports yt-dlp and requests: loaded when a guard is used
    from transcriber.urlguard import GuardPolicy, MediaDownload, UrlRefused

log = logging.getLogger(__name__)


class MediaError(Exception):
    """Base of every media failure; ``str(err)`` is a message for people, ``code`` is stable."""

    code = "media_error"

    def __init__(self, message: str, *, code: str | None = None, detail: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code  # a finer reason than the class gives (``private``, ``geo_blocked``)
        #: What the underlying tool said (yt-dlp's message, ffmpeg's stderr), for logs.
        self.detail = detail


class SourceUnreachable(MediaError):
    code = "unreachable"


class SourceNotFound(MediaError):
    code = "not_found"


class SourceUnavailable(MediaError):
    """Private, age-restricted, geo-blocked, bot-check, removed...

    ``code`` says which: ``private``, ``age_restricted``, ``geo_blocked``, ``bot_check``,
    ``members_only``, ``not_started``, ``drm``, ``rate_limited``, ``forbidden``, ``removed``,
    ``no_formats`` or plain ``unavailable``.
    """

    code = "unavailable"


class UnsupportedSource(MediaError):
    """Nothing yt-dlp can extract media from (a plain web page, a playlist, a live stream)."""

    code = "unsupported"


class NoAudioStream(MediaError):
    code = "no_audio"


class UndecodableMedia(MediaError):
    code = "undecodable"


class TruncatedMedia(UndecodableMedia):
    """The media ended before its own header said it would (a cut file or a dropped transfer).

    Raised by :func:`decode` *after* every sample that could be decoded was yielded.
    """

    code = "truncated"


class TooLong(MediaError):
    """Decoding passed ``max_seconds``; raised after exactly ``max_seconds`` were yielded."""

    code = "too_long"


class TooLarge(MediaError):
    """The download passed ``Source.max_bytes``; raised after what arrived was decoded."""

    code = "too_large"


class SourceRefused(MediaError):
    """The URL guard refused the link, a redirect or the media URL (SSRF protection).

    ``code`` is the guard's (:class:`transcriber.urlguard.UrlRefused`): ``forbidden_address``,
    ``host_not_allowed``, ``port_not_allowed``, ``bad_scheme``, ``bad_url`` or ``unresolvable``.
    """

    code = "refused"


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
    #: yt-dlp's chapters: ``[{"start_time", "end_time", "title"}]`` (None: the source has none).
    chapters: list[dict] | None = None


# --------------------------------------------------------------------------------------------
# ffmpeg binary and YouTube ids

#: Environment variable naming a Netscape cookies file for yt-dlp (YouTube's bot check).
COOKIES_ENV = "STREAMSCRIBE_COOKIES_FILE"

_YOUTUBE_ID = re.compile(r"^[0-9A-Za-z_-]{11}$")
_YOUTUBE_HOSTS = ("youtube.com", "youtube-nocookie.com", "youtube.googleapis.com")
#: Path prefixes followed by the id: /shorts/ID, /embed/ID, /live/ID, /v/ID, /e/ID, /watch/ID.
_YOUTUBE_ID_PATHS = ("shorts", "embed", "live", "v", "e", "watch")
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_BARE_HOST = re.compile(r"^(?:[a-z0-9-]+\.)+[a-z]{2,}(?::\d+)?(?:[/?#]|$)", re.IGNORECASE)


def ffmpeg_exe() -> str:
    """The ffmpeg binary: the one on PATH first, else imageio-ffmpeg's bundled one."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - imageio-ffmpeg is a runtime dependency
        raise MediaError("ffmpeg is not installed: put it on PATH or pip install imageio-ffmpeg") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


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


# --------------------------------------------------------------------------------------------
# resolve


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
    probe = _probe(media, {})  # a bad local file fails here, before any work is queued
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
        raise _ytdlp_error(err, url) from err
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
            _probe_quietly(media, headers)
            if guard is None
            else _probe_guarded(media, headers, guard, max_bytes)
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
        chapters=[
            {"start_time": c["start_time"], "end_time": c["end_time"], "title": c.get("title") or ""}
            for c in info.get("chapters") or ()
        ] or None,
    )


def refused(err: UrlRefused) -> SourceRefused:
    """The guard's refusal as a media error (same message and ``code``)."""
    return SourceRefused(str(err), code=err.code, detail=str(err))


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


#: Network failure fragments (yt-dlp's and ffmpeg's wording) -> a short reason for people.
_NETWORK = {
    "connection refused": "the connection was refused",
    "timed out": "the connection timed out",
    "failed to resolve": "its name could not be resolved (no network, or a typo in the link?)",
    "name or service not known": "its name could not be resolved (no network, or a typo in the link?)",
    "temporary failure in name": "its name could not be resolved (no network?)",
    "network is unreachable": "the network is unreachable",
    "no route to host": "there is no route to it",
    "connection reset": "the connection was dropped",
    "broken pipe": "the connection was dropped",
    "input/output error": "the transfer failed",
}


def _network_reason(low: str, fallback: str) -> str:
    return next((reason for fragment, reason in _NETWORK.items() if fragment in low), fallback)


_RATE_LIMITED = "The site is rate-limiting this server; try again in a while."

#: (lower-case fragments of yt-dlp's message, error class, code, message for people).
#: First match wins, so the specific "Private video. Sign in..." precedes the sign-in cases.
_YTDLP_REASONS: list[tuple[tuple[str, ...], type[MediaError], str, str]] = [
    (("unsupported url", "is not a valid url"), UnsupportedSource, "unsupported",
     "No video or audio was found at this link: it is not a page or file yt-dlp can read."),
    (("private video", "video is private"), SourceUnavailable, "private",
     "This video is private: only its owner and the people they invite can watch it."),
    (("confirm your age", "age-restricted", "age restricted", "inappropriate for some users"),
     SourceUnavailable, "age_restricted",
     "This video is age-restricted: YouTube only plays it to signed-in adults. Set "
     f"{COOKIES_ENV} to a cookies file of a signed-in account to transcribe it."),
    (("not a bot", "captcha"), SourceUnavailable, "bot_check",
     "YouTube asked to confirm this server is not a bot. Set "
     f"{COOKIES_ENV} to a cookies file exported from a signed-in browser, then try again."),
    (("in your country", "from your location", "geo restrict", "geo-restrict"),
     SourceUnavailable, "geo_blocked", "This video is not available in this server's country."),
    (("members-only", "join this channel", "members only"), SourceUnavailable, "members_only",
     "This video is for the channel's paying members only."),
    (("live event will begin", "premieres in", "will begin in"), SourceUnavailable, "not_started",
     "This live stream or premiere has not started yet."),
    (("drm protected", "drm-protected"), SourceUnavailable, "drm", "This video is DRM-protected and cannot be decoded."),
    (("try again later", "too many requests", "rate-limit", "rate limit"), SourceUnavailable,
     "rate_limited", _RATE_LIMITED),
    (("video unavailable", "has been removed", "no longer available", "account associated",
      "been terminated", "does not exist"), SourceUnavailable, "removed",
     "This video is unavailable: it was removed or never existed."),
    (("requested format is not available", "no video formats found", "no formats"),
     SourceUnavailable, "no_formats", "The site offers no audio or video format for this link."),
    (tuple(_NETWORK), SourceUnreachable, "unreachable", "Could not reach {host}: {reason}."),
]


def _ytdlp_error(err: Exception, url: str) -> MediaError:
    """yt-dlp's DownloadError -> the typed error a person can act on."""
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import GeoRestrictedError

    raw = str(err)
    reason = re.sub(r"^ERROR:\s*", "", raw)
    reason = re.sub(r"^\[[^\]]+\]\s*(?:[^\s:]+:\s+)?", "", reason)  # "[youtube] ID: "
    reason = re.sub(r"\s*\(caused by .*$", "", reason, flags=re.DOTALL).strip()
    low = raw.lower()
    chain = _causes(getattr(err, "exc_info", None) and err.exc_info[1])
    if any(isinstance(e, GeoRestrictedError) for e in chain):
        low += " geo restrict"
    status = next((e.status for e in chain if isinstance(e, HTTPError)), None)
    if status in (404, 410):
        return SourceNotFound(f"Nothing at this link (HTTP {status}): {url}", detail=raw)
    if status in (401, 403):
        return SourceUnavailable(
            f"The site refused access to this link (HTTP {status}).", code="forbidden", detail=raw
        )
    if status == 429:
        return SourceUnavailable(_RATE_LIMITED, code="rate_limited", detail=raw)
    if status is not None and status >= 500:
        return SourceUnreachable(f"The site failed to answer (HTTP {status}); try again later.", detail=raw)
    host = urlsplit(url).hostname or url
    reason = _network_reason(low, reason)
    for fragments, cls, code, message in _YTDLP_REASONS:
        if any(f in low for f in fragments):
            return cls(message.format(reason=reason, host=host), code=code, detail=raw)
    if any(isinstance(e, TransportError) for e in chain):
        return SourceUnreachable(f"Could not reach {host}: {reason}.", detail=raw)
    return SourceUnavailable(f"Could not get media from this link: {reason}", detail=raw)


def _causes(exc: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain and len(chain) < 10:
        chain.append(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return chain


# --------------------------------------------------------------------------------------------
# ffmpeg: probe and decode


def _is_http(media: str) -> bool:
    return media.lower().startswith(("http://", "https://"))


def _input_args(media: str, headers: dict[str, str], timeout: float) -> tuple[str, dict]:
    """ffmpeg's input name and options: headers and reconnects for HTTP, ``file:`` for paths."""
    if not _is_http(media):
        # "file:" stops ffmpeg reading "a:b.mp3" as protocol "a" or "-x.mp3" as an option.
        return "file:" + media, {}
    options: dict = {
        # A long transfer may drop; ffmpeg resumes it with a Range request at the same offset.
        "reconnect": 1,
        "reconnect_streamed": 1,
        "reconnect_on_network_error": 1,
        "reconnect_delay_max": 5,
        "rw_timeout": int(timeout * 1_000_000),  # a silent server must not hang us forever
    }
    rest = dict(headers)
    agent = next((k for k in rest if k.lower() == "user-agent"), None)
    if agent:
        options["user_agent"] = rest.pop(agent)  # else ffmpeg sends its own Lavf agent too
    if rest:
        options["headers"] = "".join(f"{k}: {v}\r\n" for k, v in rest.items())
    return media, options


_GLOBAL_ARGS = ["-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info"]


@dataclass
class _Probe:
    duration: float | None = None
    has_audio: bool = False
    has_video: bool = False
    estimated: bool = False  # duration guessed from the bit rate (VBR mp3 without a header)


class _FfmpegLog:
    """What matters in ffmpeg's ``level+info`` log: the input's duration and streams, the
    error lines, and whether any line said the input ended early."""

    _TRUNCATED = (
        "partial file",
        "ends prematurely",
        "ended prematurely",
        "filesize and duration do not match",
        "error during demuxing",
        "truncat",
    )

    def __init__(self) -> None:
        self.probe = _Probe()
        self.errors: deque[str] = deque(maxlen=20)
        self.truncated = False
        self._in_input = True
        self._thread: threading.Thread | None = None

    def follow(self, stream) -> _FfmpegLog:
        """Read ``stream`` on a thread so a chatty ffmpeg never blocks on a full stderr pipe."""

        def read() -> None:
            for raw in iter(stream.readline, b""):
                self.feed(raw.decode("utf-8", "replace").rstrip())

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def feed(self, line: str) -> None:
        low = line.lower()
        if self._in_input:
            if line.startswith("[info] Stream mapping") or line.startswith("[info] Output #"):
                self._in_input = False
            elif match := re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", line):
                h, m, s = match.groups()
                self.probe.duration = int(h) * 3600 + int(m) * 60 + float(s)
            elif re.search(r"Stream #\d+:\d+.*: Audio:", line):
                self.probe.has_audio = True
            elif re.search(r"Stream #\d+:\d+.*: Video:", line) and "attached pic" not in low:
                self.probe.has_video = True
        if "estimating duration from bitrate" in low:
            self.probe.estimated = True
        if any(marker in low for marker in self._TRUNCATED):
            self.truncated = True
        if "[error]" in line or "[fatal]" in line or "[panic]" in line:
            self.errors.append(re.sub(r"^(\[[^\]]*\]\s*)+", "", line))

    def text(self) -> str:
        return "\n".join(self.errors)


def _probe(media: str, headers: dict[str, str], timeout: float = 20.0) -> _Probe:
    """What ffmpeg says about the input's header (``ffmpeg -i``; imageio-ffmpeg has no ffprobe)."""
    name, options = _input_args(media, headers, timeout)
    flags = [arg for key, value in options.items() for arg in (f"-{key}", str(value))]
    args = [ffmpeg_exe(), *_GLOBAL_ARGS, *flags, "-i", name]
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 10)
    info = _FfmpegLog()
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        info.feed(line)
    # "At least one output file must be specified" is the only error of a readable input.
    info.errors = deque(e for e in info.errors if "output file" not in e.lower())
    if info.errors or not (info.probe.has_audio or info.probe.has_video):
        raise _ffmpeg_error(info.text(), media)
    if not info.probe.has_audio:
        raise _ffmpeg_error("matches no streams", media)
    return info.probe


def _probe_quietly(media: str, headers: dict[str, str]) -> float | None:
    """The duration of a direct link, or None: decode will report any real problem itself."""
    try:
        probe = _probe(media, headers, timeout=10.0)
    except (MediaError, subprocess.TimeoutExpired, OSError):
        return None
    return None if probe.estimated else probe.duration


#: Bytes a guarded probe may download: enough for any header that states the duration.
_PROBE_BYTES = 2 << 20


def _probe_guarded(
    media: str, headers: dict[str, str], guard: GuardPolicy, max_bytes: int | None
) -> float | None:
    """The duration a direct link's header states, read through the guard from the first bytes
    (ffmpeg on a pipe, which cannot seek to a duration kept at the end, nor learn a WAV's from
    the file size: :func:`_wav_duration` reads that header itself); None when unknown. A
    refusal raises :class:`SourceRefused`; other failures are left to decode."""
    from transcriber import urlguard

    limit = min(_PROBE_BYTES, max_bytes or _PROBE_BYTES)
    try:
        name, options, download = urlguard.ffmpeg_input(
            media, headers, guard, max_bytes=limit, timeout=10.0
        )
    except urlguard.UrlRefused as err:
        raise refused(err) from err
    try:
        head = download.peek(_HEAD_BYTES)
    except urlguard.UrlRefused as err:
        raise refused(err) from err
    except Exception:  # noqa: BLE001 - decode reports a media that cannot be fetched
        download.close()
        return None
    if (seconds := _wav_duration(head)) is not None:
        download.close()
        return seconds
    flags = [arg for key, value in options.items() for arg in (f"-{key}", str(value))]
    args = [ffmpeg_exe(), *_GLOBAL_ARGS, *flags, "-i", name]
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    info = _FfmpegLog().follow(proc.stderr)
    download.start_feeding(proc.stdin)
    try:
        proc.wait(timeout=20.0)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        download.close()
        info.join(1.0)
        proc.stderr.close()
    if isinstance(download.error, urlguard.UrlRefused):
        raise refused(download.error)
    probe = info.probe
    return None if probe.estimated or not probe.has_audio else probe.duration


def _wav_duration(head: bytes) -> float | None:
    """A RIFF/WAVE header's duration (data size / byte rate), from the file's first bytes."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        kind, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if kind == b"fmt " and pos + 20 <= len(head):
            byte_rate = int.from_bytes(head[pos + 16 : pos + 20], "little")
        elif kind == b"data":
            # 0 and 0xFFFFFFFF mean "unknown" (a WAV written while streaming).
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / byte_rate
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def _ffmpeg():
    import ffmpeg  # ffmpeg-python builds the command; we run it with ffmpeg_exe() ourselves

    return ffmpeg


#: (lower-case fragments of ffmpeg's errors, error class, code or None, message for people).
_FFMPEG_REASONS: list[tuple[tuple[str, ...], type[MediaError], str | None, str]] = [
    (("matches no streams", "does not contain any stream", "no audio"), NoAudioStream, None,
     "This media has no audio track, so there is nothing to transcribe."),
    (("server returned 404", "server returned 410", "no such file or directory"), SourceNotFound,
     None, "Nothing at {where}: the link is wrong or the file was removed."),
    (("server returned 401", "server returned 403"), SourceUnavailable, "forbidden",
     "The server refused access to {where}."),
    (("server returned 5",), SourceUnreachable, None,
     "The server failed to answer for {where}; try again later."),
    (("server returned 4",), SourceUnavailable, None, "The server rejected the request for {where}."),
    (tuple(_NETWORK), SourceUnreachable, None, "Could not read {where}: {reason}."),
    (("permission denied",), SourceUnavailable, "forbidden", "Permission denied reading {where}."),
    (("moov atom not found",), UndecodableMedia, None,
     "This MP4/M4A file is incomplete (its index, the moov atom, is missing): it was probably "
     "cut off while downloading or recording."),
]


def _ffmpeg_error(stderr: str, media: str) -> MediaError:
    low = stderr.lower()
    where = _where(media)
    lines = [line for line in stderr.splitlines() if line.strip()]
    reason = re.sub(r"^.*?:\s*(?=[A-Z])", "", lines[-1]) if lines else "unknown error"
    reason = _network_reason(low, reason)
    for fragments, cls, code, message in _FFMPEG_REASONS:
        if any(f in low for f in fragments):
            return cls(message.format(where=where, reason=reason), code=code, detail=stderr)
    return UndecodableMedia(
        f"{where[0].upper()}{where[1:]} is not audio or video that ffmpeg can decode ({reason}).",
        detail=stderr,
    )


def _where(media: str) -> str:
    if _is_http(media):
        parts = urlsplit(media)
        return f"the media URL on {parts.hostname}"
    return f"the file {Path(media).name}"


def decode(
    source: Source | str,
    *,
    chunk_seconds: float = 1.0,
    max_seconds: float | None = None,
    timeout: float = 30.0,
    stop: threading.Event | None = None,
) -> Iterator[np.ndarray]:
    """Yield float32 16 kHz mono chunks as ffmpeg produces them (closing the iterator kills ffmpeg).

    ``source`` is a :class:`Source` or directly a path / media URL. Chunks are
    ``chunk_seconds`` long except the last. ffmpeg reads the input itself (HTTP with the
    source's headers, resuming dropped transfers), so nothing is downloaded first and memory
    stays flat: ffmpeg blocks on the pipe while the consumer is busy.

    Raises (typed :class:`MediaError`): ``NoAudioStream``, ``UndecodableMedia``,
    ``SourceNotFound``/``SourceUnreachable``/``SourceUnavailable`` for HTTP failures,
    ``TruncatedMedia`` after the last decodable sample of a cut file or transfer, and
    ``TooLong`` once more than ``max_seconds`` (None: no limit) were decoded (after yielding
    exactly ``max_seconds``). ``timeout`` bounds each network read, in seconds.

    ``stop``: setting it (from any thread) kills ffmpeg at once, so a consumer blocked in a
    read of a stalled network input returns now rather than after ``timeout``; the iterator
    then ends without an error. (Closing the iterator cannot do that from another thread.)

    With ``source.guard`` set, a media URL is downloaded through the guard and piped to ffmpeg
    (see :func:`_decode_guarded`); the download's failures map to the same errors, plus
    :class:`TooLarge` past ``source.max_bytes`` and :class:`SourceRefused` for a redirect the
    guard refuses.
    """
    if isinstance(source, str):
        source = Source(id="", title="", duration=None, media=source)
    run = functools.partial(
        _run_ffmpeg, chunk_seconds=chunk_seconds, max_seconds=max_seconds, stop=stop
    )
    if source.guard is not None and _is_http(source.media):
        yield from _decode_guarded(source, run, timeout, stop)
        return
    name, options = _input_args(source.media, source.headers, timeout)
    yield from run(name, options, source.media)


def _run_ffmpeg(
    name: str,
    options: dict,
    media: str,
    *,
    chunk_seconds: float,
    max_seconds: float | None,
    stop: threading.Event | None,
    download: MediaDownload | None = None,
) -> Iterator[np.ndarray]:
    """ffmpeg on ``name`` to PCM chunks; ``media`` names the source in errors. A ``download``
    is fed to ffmpeg's stdin and its failure, if any, is the error reported."""
    chunk_bytes = max(1, int(chunk_seconds * SAMPLE_RATE)) * 2
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    output = _ffmpeg().input(name, **options).output(
        "pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, map="0:a:0"
    )
    args = [ffmpeg_exe(), *_GLOBAL_ARGS, *output.get_args()]
    stdin = subprocess.DEVNULL if download is None else subprocess.PIPE
    try:
        proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as err:
        raise MediaError(f"Cannot run ffmpeg ({args[0]}): {err.strerror}") from err
    stderr = _FfmpegLog().follow(proc.stderr)
    if download is not None:
        download.start_feeding(proc.stdin)
    if stop is not None:
        _kill_when_set(stop, proc)
    total = 0
    try:
        while True:
            data = proc.stdout.read(chunk_bytes)
            if not data:
                break
            chunk = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32)
            chunk *= 1.0 / 32768.0
            if limit is not None and total + len(chunk) > limit:
                if limit > total:
                    yield chunk[: limit - total]
                raise TooLong(
                    f"The media is longer than the {_clock(max_seconds)} limit; "
                    f"the first {_clock(max_seconds)} were kept.",
                )
            total += len(chunk)
            yield chunk
        code = proc.wait()
        stderr.join()
        if stop is not None and stop.is_set():
            return  # killed on purpose: the consumer asked to stop
        if download is not None and download.error is not None:
            # ffmpeg only saw its input end early; the download knows why.
            raise _download_error(download.error, media, total / SAMPLE_RATE)
        if code < 0:  # a signal, not the input: someone killed ffmpeg, or the OOM killer did
            raise MediaError(
                f"The audio decoder (ffmpeg) was stopped unexpectedly ({_signal_name(-code)}) "
                f"after {total / SAMPLE_RATE:.1f} s of audio; try again.",
                code="decoder_died",
                detail=stderr.text(),
            )
        if code != 0:
            raise _ffmpeg_error(stderr.text() or f"ffmpeg exited with status {code}", media)
        if total == 0:
            if not stderr.probe.has_audio and stderr.errors:
                raise _ffmpeg_error(stderr.text(), media)
            raise UndecodableMedia(
                f"No audio could be decoded from {_where(media)}.", code="empty",
                detail=stderr.text(),
            )
        _check_complete(stderr, total, media)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if download is not None:
            download.close()  # a feeder still waiting on the network stops too
        proc.stdout.close()
        stderr.join(1.0)
        proc.stderr.close()


#: Bytes looked at before a guarded decode starts: an MP4's leading boxes.
_HEAD_BYTES = 64 * 1024


def _decode_guarded(
    source: Source, run, timeout: float, stop: threading.Event | None
) -> Iterator[np.ndarray]:
    """Download ``source.media`` through its guard and decode it (ffmpeg opens no URL itself).

    The bytes are piped to ffmpeg as they arrive, except for an MP4 whose index (``moov``)
    comes after its media data: ffmpeg cannot decode that from a pipe, so it is downloaded
    to a temporary file first (at most ``source.max_bytes``) and decoded from there.
    """
    from transcriber import urlguard

    try:
        name, options, download = urlguard.ffmpeg_input(
            source.media,
            source.headers,
            source.guard,
            max_bytes=source.max_bytes,
            range_chunk=source.chunk_size,
            timeout=timeout,
        )
    except urlguard.UrlRefused as err:
        raise refused(err) from err
    spooled: Path | None = None
    try:
        try:
            head = download.peek(_HEAD_BYTES)
            if _mp4_index_at_end(head):
                spooled = _spool(download, stop)
        except Exception as err:
            raise _download_error(err, source.media, 0.0) from err
        if spooled is not None:
            name, options = _input_args(str(spooled), {}, timeout)
            yield from run(name, options, source.media)
        else:
            yield from run(name, options, source.media, download=download)
    finally:
        download.close()
        if spooled is not None:
            spooled.unlink(missing_ok=True)


def _mp4_index_at_end(head: bytes) -> bool:
    """True for an ISO media file (MP4, M4A, MOV) whose ``mdat`` precedes its ``moov``."""
    pos = 0
    while pos + 8 <= len(head):
        size, kind = int.from_bytes(head[pos : pos + 4], "big"), head[pos + 4 : pos + 8]
        if pos == 0 and kind != b"ftyp":
            return False
        if kind in (b"moov", b"mdat"):
            return kind == b"mdat"
        if size == 1 and pos + 16 <= len(head):  # a 64-bit size follows the type
            size = int.from_bytes(head[pos + 8 : pos + 16], "big")
        if size < 8:
            return False
        pos += size
    return False


def _spool(download: MediaDownload, stop: threading.Event | None) -> Path:
    """The whole download in a temporary file (the caller deletes it)."""
    handle = tempfile.NamedTemporaryFile(prefix="streamscribe-", suffix=".mp4", delete=False)
    path = Path(handle.name)
    try:
        with handle:
            for chunk in download:
                if stop is not None and stop.is_set():
                    break
                handle.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _download_error(err: BaseException, media: str, decoded: float) -> MediaError:
    """A guarded download's failure as the media error a person can act on."""
    from transcriber import urlguard

    where = _where(media)
    if isinstance(err, urlguard.UrlRefused):
        return refused(err)
    if isinstance(err, MediaError):
        return err
    if not isinstance(err, urlguard.DownloadFailed):
        return SourceUnreachable(f"Could not read {where}: {err}.", detail=repr(err))
    detail = str(err)
    if err.code == "too_large":
        return TooLarge(
            f"{err} Only the first {decoded:.1f} s were decoded." if decoded else str(err),
            detail=detail,
        )
    if err.code == "interrupted":
        return TruncatedMedia(
            f"The transfer of {where} broke off after {decoded:.1f} s of audio; what arrived "
            "was kept.",
            detail=detail,
        )
    if err.code == "http_error":
        status = err.status or 0
        if status in (404, 410):
            return SourceNotFound(
                f"Nothing at {where} (HTTP {status}): the link is wrong or the file was removed.",
                detail=detail,
            )
        if status in (401, 403, 451):
            return SourceUnavailable(
                f"The server refused access to {where} (HTTP {status}).",
                code="forbidden",
                detail=detail,
            )
        if status == 429:
            return SourceUnavailable(_RATE_LIMITED, code="rate_limited", detail=detail)
        if status >= 500:
            return SourceUnreachable(
                f"The server failed to answer for {where} (HTTP {status}); try again later.",
                detail=detail,
            )
        return SourceUnavailable(
            f"The server rejected the request for {where} (HTTP {status}).", detail=detail
        )
    if err.code == "too_many_redirects":
        return SourceUnreachable(f"{where[0].upper()}{where[1:]} redirects too many times.",
                                 detail=detail)
    return SourceUnreachable(str(err), detail=detail)


def _kill_when_set(stop: threading.Event, proc: subprocess.Popen) -> None:
    """Kill ``proc`` from a watcher thread once ``stop`` is set, unless it ended first."""

    def watch() -> None:
        while proc.poll() is None:
            if stop.wait(0.1):
                proc.kill()  # its stdout closes: the read blocked in decode() returns now
                return

    threading.Thread(target=watch, name="ffmpeg-stop", daemon=True).start()


def _signal_name(number: int) -> str:
    try:
        return f"killed by {signal.Signals(number).name}"
    except ValueError:
        return f"killed by signal {number}"


def _check_complete(stderr: _FfmpegLog, total: int, media: str) -> None:
    """Raise TruncatedMedia when ffmpeg said the input ended early, or decoding fell far short
    of the duration in an audio-only header (video files may carry a shorter audio track)."""
    decoded = total / SAMPLE_RATE
    expected = stderr.probe.duration
    short = (
        expected is not None
        and not stderr.probe.estimated
        and not stderr.probe.has_video
        and decoded < 0.9 * expected - 1.0
    )
    if stderr.truncated or short:
        of = f" of {expected:.1f} s" if expected else ""
        raise TruncatedMedia(
            f"{_where(media)[0].upper()}{_where(media)[1:]} ends early: only {decoded:.1f} s{of} "
            "could be decoded (the file is truncated or the transfer was cut off).",
            detail=stderr.text(),
        )


def _clock(seconds: float | None) -> str:
    seconds = int(seconds or 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
