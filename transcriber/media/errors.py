"""Every media failure, and the tables that turn a tool's failure into one of them.

Each error is a :class:`MediaError` subclass whose ``str()`` is a sentence for people and whose
``code`` is stable for programs (``not_found``, ``private``, ``no_audio``, ...); the raw tool
output is kept in ``detail`` for logs. :func:`ytdlp_error`, :func:`ffmpeg_error` and
:func:`download_error` map yt-dlp's exceptions, ffmpeg's log and a guarded download's failure
onto them (as httpx keeps its ``_exceptions.py``: one place to read what can go wrong).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # urlguard imports yt-dlp and requests: loaded when a guard is used
    from transcriber.urlguard import UrlRefused

#: Environment variable naming a Netscape cookies file for yt-dlp (YouTube's bot check); the
#: messages below name it, and :func:`transcriber.media.ydl_defaults` reads it.
COOKIES_ENV = "STREAMSCRIBE_COOKIES_FILE"


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


def refused(err: UrlRefused) -> SourceRefused:
    """The guard's refusal as a media error (same message and ``code``)."""
    return SourceRefused(str(err), code=err.code, detail=str(err))


def is_http(media: str) -> bool:
    """Whether ffmpeg would fetch ``media`` over the network (else it is a file path)."""
    return media.lower().startswith(("http://", "https://"))


def where_of(media: str) -> str:
    """How a message names ``media``: the host of a URL, the name of a file (never a full URL,
    which may carry signed tokens)."""
    if is_http(media):
        parts = urlsplit(media)
        return f"the media URL on {parts.hostname}"
    return f"the file {Path(media).name}"


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


def ytdlp_error(err: Exception, url: str) -> MediaError:
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


def ffmpeg_error(stderr: str, media: str) -> MediaError:
    low = stderr.lower()
    where = where_of(media)
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


def download_error(err: BaseException, media: str, decoded: float) -> MediaError:
    """A guarded download's failure as the media error a person can act on."""
    from transcriber import urlguard

    where = where_of(media)
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
