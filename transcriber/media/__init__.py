"""Step 1: resolve a source with yt-dlp and decode it to 16 kHz mono PCM with ffmpeg.

``resolve`` turns what a person gave us (a link yt-dlp understands, or a local file) into a
:class:`Source`: a stable id, a title, the duration when known and what ffmpeg must read.
``decode`` runs ffmpeg on that and yields float32 chunks while ffmpeg is still reading, so
transcription starts long before a download would have finished and memory stays flat.

Every failure is a :class:`MediaError` subclass whose ``str()`` is a sentence for people and
whose ``code`` is stable for programs (``not_found``, ``private``, ``no_audio``, ...); the raw
tool output is kept in ``detail`` for logs.

The modules, in data-flow order:

- :mod:`~transcriber.media.errors`: the error classes and the tables mapping yt-dlp's, ffmpeg's
  and a guarded download's failures onto them;
- :mod:`~transcriber.media.probe`: the ffmpeg binary, its arguments and log, header probing;
- :mod:`~transcriber.media.sources`: :func:`resolve` (yt-dlp, local files) and :class:`Source`;
- :mod:`~transcriber.media.decoder`: :func:`decode` (ffmpeg, guarded download, spooling).
"""

from transcriber.media.decoder import decode
from transcriber.media.errors import (
    COOKIES_ENV,
    MediaError,
    NoAudioStream,
    SourceNotFound,
    SourceRefused,
    SourceUnavailable,
    SourceUnreachable,
    TooLarge,
    TooLong,
    TruncatedMedia,
    UndecodableMedia,
    UnsupportedSource,
    refused,
)
from transcriber.media.probe import ffmpeg_exe
from transcriber.media.sources import GUARDED_FORMAT, Source, resolve, ydl_defaults, youtube_id

__all__ = [
    "COOKIES_ENV",
    "GUARDED_FORMAT",
    "MediaError",
    "NoAudioStream",
    "Source",
    "SourceNotFound",
    "SourceRefused",
    "SourceUnavailable",
    "SourceUnreachable",
    "TooLarge",
    "TooLong",
    "TruncatedMedia",
    "UndecodableMedia",
    "UnsupportedSource",
    "decode",
    "ffmpeg_exe",
    "refused",
    "resolve",
    "ydl_defaults",
    "youtube_id",
]
