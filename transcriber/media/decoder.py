"""Step 1b: decode a :class:`~transcriber.media.Source` to 16 kHz mono PCM with ffmpeg, as a
stream of float32 chunks yielded while ffmpeg is still reading, so transcription starts long
before a download would have finished and memory stays flat.

With a URL guard the media is downloaded through it and piped to ffmpeg (which then opens
nothing on the network); an MP4 whose index comes last is spooled to a temporary file first.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transcriber import SAMPLE_RATE, clock
from transcriber.media.errors import (
    MediaError,
    TooLong,
    TruncatedMedia,
    UndecodableMedia,
    download_error,
    ffmpeg_error,
    is_http,
    refused,
    where_of,
)
from transcriber.media.probe import (
    GLOBAL_ARGS,
    HEAD_BYTES,
    FfmpegLog,
    ffmpeg_exe,
    input_args,
)
from transcriber.media.sources import Source

if TYPE_CHECKING:  # urlguard imports yt-dlp and requests: loaded when a guard is used
    from transcriber.urlguard import MediaDownload


def _ffmpeg():
    import ffmpeg  # ffmpeg-python builds the command; we run it with ffmpeg_exe() ourselves

    return ffmpeg


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
    if source.guard is not None and is_http(source.media):
        yield from _decode_guarded(source, run, timeout, stop)
        return
    name, options = input_args(source.media, source.headers, timeout)
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
    args = [ffmpeg_exe(), *GLOBAL_ARGS, *output.get_args()]
    stdin = subprocess.DEVNULL if download is None else subprocess.PIPE
    try:
        proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as err:
        raise MediaError(f"Cannot run ffmpeg ({args[0]}): {err.strerror}") from err
    stderr = FfmpegLog().follow(proc.stderr)
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
                    f"The media is longer than the {clock(max_seconds)} limit; "
                    f"the first {clock(max_seconds)} were kept.",
                )
            total += len(chunk)
            yield chunk
        code = proc.wait()
        stderr.join()
        if stop is not None and stop.is_set():
            return  # killed on purpose: the consumer asked to stop
        if download is not None and download.error is not None:
            # ffmpeg only saw its input end early; the download knows why.
            raise download_error(download.error, media, total / SAMPLE_RATE)
        if code < 0:  # a signal, not the input: someone killed ffmpeg, or the OOM killer did
            raise MediaError(
                f"The audio decoder (ffmpeg) was stopped unexpectedly ({_signal_name(-code)}) "
                f"after {total / SAMPLE_RATE:.1f} s of audio; try again.",
                code="decoder_died",
                detail=stderr.text(),
            )
        if code != 0:
            raise ffmpeg_error(stderr.text() or f"ffmpeg exited with status {code}", media)
        if total == 0:
            if not stderr.probe.has_audio and stderr.errors:
                raise ffmpeg_error(stderr.text(), media)
            raise UndecodableMedia(
                f"No audio could be decoded from {where_of(media)}.", code="empty",
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
            head = download.peek(HEAD_BYTES)
            if _mp4_index_at_end(head):
                spooled = _spool(download, stop)
        except Exception as err:
            raise download_error(err, source.media, 0.0) from err
        if spooled is not None:
            name, options = input_args(str(spooled), {}, timeout)
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


def _check_complete(stderr: FfmpegLog, total: int, media: str) -> None:
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
            f"{where_of(media)[0].upper()}{where_of(media)[1:]} ends early: only {decoded:.1f} s{of} "
            "could be decoded (the file is truncated or the transfer was cut off).",
            detail=stderr.text(),
        )
