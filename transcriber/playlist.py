"""Playlists, channels and podcast feeds: one link, many sources.

:func:`list_playlist` asks yt-dlp what a link is without downloading any media (flat
extraction: the entries' links and titles only). A link that is one video answers None and goes
the ordinary way (:func:`transcriber.media.resolve`); a playlist, a channel's uploads or an
RSS/Atom feed answers a :class:`Playlist` whose entries each become an ordinary job.

Under a URL guard the listing runs guarded like any resolve (the feed's link on the allow-list,
every connection to an allowed address), and every entry's link is vetted with the same
:func:`~transcriber.urlguard.check_url` a submitted link passes: an entry the guard refuses is
kept with its reason (``Entry.error``), so it is reported on its own while the rest go on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from transcriber import media
from transcriber.media.errors import ytdlp_error

#: Entries listed by default; ``STREAMSCRIBE_MAX_PLAYLIST_ITEMS`` sets the service's.
MAX_ITEMS = 50


@dataclass(frozen=True)
class Entry:
    """One item of a playlist, as the flat listing names it."""

    #: 0-based position in the playlist.
    index: int
    #: The entry's own link (what a job for it resolves); None when the listing gave none.
    url: str | None
    title: str
    duration: float | None = None
    #: Why this entry cannot be transcribed (refused by the guard, no link), else None.
    error: str | None = None
    #: Stable code of ``error`` (the guard's code, ``no_link``).
    code: str | None = None


@dataclass(frozen=True)
class Playlist:
    id: str
    title: str
    url: str
    #: At most ``max_items`` entries, in playlist order.
    entries: list[Entry]
    #: Entries the listing found (more than ``len(entries)`` when the playlist was cut); None
    #: when the site does not say and the cut was reached.
    total: int | None
    #: A sentence for people when the playlist was cut at ``max_items``, else None.
    notice: str | None = None

    @property
    def truncated(self) -> bool:
        return self.notice is not None


def list_playlist(
    url: str,
    *,
    guard=None,
    max_items: int = MAX_ITEMS,
    **ydl_options,
) -> Playlist | None:
    """The entries of the playlist at ``url``, or None if ``url`` is a single video.

    No media is downloaded: yt-dlp reads the page or feed only (``extract_flat``), and stops
    listing after ``max_items + 1`` entries, so a channel of thousands costs a page or two.
    Raises :class:`~transcriber.media.MediaError` like :func:`~transcriber.media.resolve`
    (``SourceRefused`` for a link the guard refuses).
    """
    import yt_dlp

    from transcriber import urlguard

    url = channel_uploads(url)
    options = {
        **media.ydl_defaults(),
        "extract_flat": "in_playlist",
        # One more than the cap: enough to tell that the playlist is longer.
        "playlistend": max_items + 1,
        **ydl_options,
    }
    try:
        with urlguard.youtube_dl(options, guard) as ydl:
            info = ydl.extract_info(url, download=False, process=True)
    except urlguard.UrlRefused as err:
        raise media.refused(err) from err
    except (yt_dlp.utils.DownloadError, yt_dlp.networking.exceptions.RequestError) as err:
        refusal = urlguard.refusal_in(err)
        if refusal is not None:
            raise media.refused(refusal) from err
        raise ytdlp_error(err, url) from err
    if info.get("_type") != "playlist":
        return None
    found = [e for e in info.get("entries") or [] if e]
    entries = [_entry(i, e, guard) for i, e in enumerate(found[:max_items])]
    total = info.get("playlist_count")
    if total is None and len(found) <= max_items:
        total = len(found)
    notice = None
    if len(found) > max_items:
        many = f"{total} items" if total else f"more than {max_items} items"
        notice = (
            f"This playlist has {many}; only the first {max_items} are transcribed "
            f"(the limit is {max_items} per link)."
        )
    return Playlist(
        id=str(info.get("id") or url),
        title=info.get("title") or info.get("id") or url,
        url=info.get("webpage_url") or url,
        entries=entries,
        total=total,
        notice=notice,
    )


#: A YouTube channel's own page: ``/@name``, ``/channel/UC...``, ``/c/name``, ``/user/name``.
_CHANNEL_PATH = re.compile(r"^/(@[^/]+|channel/[^/]+|c/[^/]+|user/[^/]+)/?$")


def channel_uploads(url: str) -> str:
    """A YouTube channel's page as its uploads (``.../videos``); any other link unchanged.

    yt-dlp lists a bare channel page as a playlist of its tabs (videos, shorts, live), each a
    playlist again; the uploads are what "transcribe this channel" means.
    """
    from transcriber.urlguard import YOUTUBE_HOSTS

    parts = urlsplit(url)
    if (parts.hostname or "").lower() in YOUTUBE_HOSTS and _CHANNEL_PATH.match(parts.path):
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/videos"))
    return url


def _entry(index: int, info: dict, guard) -> Entry:
    from yt_dlp.utils import unsmuggle_url

    from transcriber import urlguard

    raw = info.get("url") or info.get("webpage_url")
    # The generic extractor smuggles hints into a fragment (#__youtubedl_smuggle=...): drop them,
    # the entry's link must be the one a person would paste.
    link = unsmuggle_url(raw)[0] if raw else None
    title = info.get("title") or (os.path.basename(link.split("?")[0]) if link else "") or f"Item {index + 1}"
    duration = info.get("duration")
    entry = Entry(index, link, title, float(duration) if duration else None)
    if link is None:
        return _failed(entry, "The playlist gives no link for this item.", "no_link")
    if guard is not None:
        try:
            checked = urlguard.check_url(link, guard)
        except urlguard.UrlRefused as err:
            return _failed(entry, str(err), err.code)
        entry = Entry(index, checked.url, title, entry.duration)
    return entry


def _failed(entry: Entry, message: str, code: str) -> Entry:
    return Entry(entry.index, entry.url, entry.title, entry.duration, message, code)


def file_name(index: int | None, title: str, ext: str) -> str:
    """``NN title.ext`` for the entry at ``index`` (None: no number): its place first, so names
    sort in playlist order and two entries never clash; the title reduced to what every file
    system and unzip accepts."""
    safe = re.sub(r"[^\w.\- ]+", "_", title).strip(" ._")[:80] or "transcript"
    return f"{safe}.{ext}" if index is None else f"{index + 1:02d} {safe}.{ext}"
