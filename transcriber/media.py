"""Step 1: resolve a source with yt-dlp and decode it to 16 kHz mono PCM with ffmpeg.

INTERFACE SKELETON — filled in by the foundation work (issue 2). Names below are the contract
the rest of the pipeline codes against.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


class MediaError(Exception):
    """Base of every media failure; ``str(err)`` is a message for people, ``code`` is stable."""

    code = "media_error"


class SourceUnreachable(MediaError):
    code = "unreachable"


class SourceNotFound(MediaError):
    code = "not_found"


class SourceUnavailable(MediaError):
    """Private, age-restricted, geo-blocked, bot-check, removed..."""

    code = "unavailable"


class NoAudioStream(MediaError):
    code = "no_audio"


class UndecodableMedia(MediaError):
    code = "undecodable"


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


def youtube_id(url: str) -> str | None:
    """The 11-character video id for any YouTube URL form, offline; None otherwise."""
    raise NotImplementedError


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


def resolve(source: str, **ydl_options) -> Source:
    """A URL (yt-dlp Python API, noplaylist) or a local path -> :class:`Source`."""
    raise NotImplementedError


def decode(source: Source, *, chunk_seconds: float = 1.0) -> Iterator[np.ndarray]:
    """Yield float32 16 kHz mono chunks as ffmpeg produces them (closing the iterator kills ffmpeg)."""
    raise NotImplementedError
