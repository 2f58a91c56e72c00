"""ffmpeg as resolve and decode both run it: the binary, its input arguments, its log, and
probing an input's header for its duration and streams (imageio-ffmpeg ships no ffprobe, so
``ffmpeg -i`` is read instead).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transcriber.media.errors import MediaError, ffmpeg_error, is_http, refused

if TYPE_CHECKING:
    from transcriber.urlguard import GuardPolicy


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


def input_args(media: str, headers: dict[str, str], timeout: float) -> tuple[str, dict]:
    """ffmpeg's input name and options: headers and reconnects for HTTP, ``file:`` for paths."""
    if not is_http(media):
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


GLOBAL_ARGS = ["-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info"]


@dataclass
class Probe:
    duration: float | None = None
    has_audio: bool = False
    has_video: bool = False
    estimated: bool = False  # duration guessed from the bit rate (VBR mp3 without a header)


class FfmpegLog:
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
        self.probe = Probe()
        self.errors: deque[str] = deque(maxlen=20)
        self.truncated = False
        self._in_input = True
        self._thread: threading.Thread | None = None

    def follow(self, stream) -> FfmpegLog:
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


def probe_header(media: str, headers: dict[str, str], timeout: float = 20.0) -> Probe:
    """What ffmpeg says about the input's header (``ffmpeg -i``; imageio-ffmpeg has no ffprobe)."""
    name, options = input_args(media, headers, timeout)
    flags = [arg for key, value in options.items() for arg in (f"-{key}", str(value))]
    args = [ffmpeg_exe(), *GLOBAL_ARGS, *flags, "-i", name]
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 10)
    info = FfmpegLog()
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        info.feed(line)
    # "At least one output file must be specified" is the only error of a readable input.
    info.errors = deque(e for e in info.errors if "output file" not in e.lower())
    if info.errors or not (info.probe.has_audio or info.probe.has_video):
        raise ffmpeg_error(info.text(), media)
    if not info.probe.has_audio:
        raise ffmpeg_error("matches no streams", media)
    return info.probe


def probe_quietly(media: str, headers: dict[str, str]) -> float | None:
    """The duration of a direct link, or None: decode will report any real problem itself."""
    try:
        probe = probe_header(media, headers, timeout=10.0)
    except (MediaError, subprocess.TimeoutExpired, OSError):
        return None
    return None if probe.estimated else probe.duration


#: Bytes looked at first (a WAV's header here; an MP4's leading boxes in a guarded decode).
HEAD_BYTES = 64 * 1024

#: Bytes a guarded probe may download: enough for any header that states the duration.
_PROBE_BYTES = 2 << 20


def probe_guarded(
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
        head = download.peek(HEAD_BYTES)
    except urlguard.UrlRefused as err:
        raise refused(err) from err
    except Exception:  # noqa: BLE001 - decode reports a media that cannot be fetched
        download.close()
        return None
    if (seconds := _wav_duration(head)) is not None:
        download.close()
        return seconds
    flags = [arg for key, value in options.items() for arg in (f"-{key}", str(value))]
    args = [ffmpeg_exe(), *GLOBAL_ARGS, *flags, "-i", name]
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    info = FfmpegLog().follow(proc.stderr)
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
