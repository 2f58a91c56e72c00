"""``python -m transcriber SOURCE``: transcribe a link or a file, printing text as it arrives.

Output formats (``--format``, or whisper's ``--output_format``):

- ``text`` (default): each segment's text once every segment before it is done, so the output
  reads in order while later segments are still being transcribed; a progress bar goes to
  stderr when stderr is a terminal.
- ``ndjson``: one JSON event per line, the moment it happens (the HTTP API's vocabulary).
- ``srt``, ``vtt``, ``json``, ``txt``: the whole document at the end; SRT and VTT are shaped as
  subtitles (``--max_line_width``, ``--max_line_count``, ``--max_words_per_line``,
  ``--highlight_words``: openai-whisper's names; :mod:`transcriber.subtitles`).

``--output FILE`` writes there instead of stdout. A fatal error prints one line on stderr and
exits 1 (what was transcribed before it is still written); bad arguments exit 2; Ctrl-C 130.

A playlist, channel or podcast feed link (anything yt-dlp lists as a playlist) transcribes
every entry, one after another on the same workers: ``--output DIR`` gets one file per entry
(``NN title.srt``) as each finishes, stderr one line per entry. A failed entry is reported and
the rest go on; the exit status is 1 only if every entry failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from transcriber import clock, formats
from transcriber.engine import (
    DEFAULT_BATCH_SIZE,
    ENGINES,
    EngineConfig,
    EngineError,
    TranscribeOptions,
    resolve_model,
)
from transcriber.events import (
    Done,
    Event,
    Failed,
    Meta,
    Progress,
    SegmentDone,
    SegmentFailed,
    to_dict,
)
from transcriber.fanout import InlineMapper, LocalPoolMapper, Mapper
from transcriber.media import MediaError, youtube_id
from transcriber.pipeline import PipelineOptions, transcribe_stream
from transcriber.playlist import MAX_ITEMS, Playlist, file_name, list_playlist
from transcriber.subtitles import SubtitleOptions
from transcriber.vad import VadOptions
from transcriber.vocab import EngineName, Mode, OutputFormat, Task

#: The transcript documents, plus ``text`` (txt that streams) and ``ndjson`` (the events).
OUTPUT_FORMATS = ("text", *OutputFormat, "ndjson")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m transcriber",
        description="Transcribe a link (anything yt-dlp understands) or a local media file "
        "with Whisper, segments fanned out to local worker processes.",
    )
    add = parser.add_argument
    add("source", help="URL or path of the audio/video to transcribe")
    add("--engine", choices=ENGINES, default=EngineName.FASTER_WHISPER, help="default: %(default)s")
    add("--model", default="tiny.en", help="model name or local path (default: %(default)s)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s")
    add("--compute_type", help="CTranslate2 compute type (default: int8 on CPU, float16 on CUDA)")
    add("--language", help="spoken language (default: detect)")
    add("--task", choices=tuple(Task), default=Task.TRANSCRIBE,
        help="default: %(default)s")  # fmt: skip
    add("--beam_size", "--beam-size", type=_positive_int, default=5,
        help="default: %(default)s; 1 is greedy and fastest")  # fmt: skip
    add("--word_timestamps", type=_boolean, nargs="?", const=True, metavar="BOOL",
        help="word-level times on every piece (default: on for srt and vtt, whose subtitle "
        "shaping breaks cues between words at their real times; off otherwise)")  # fmt: skip
    add("--max_line_width", type=_natural_int, default=42,
        help="srt/vtt: characters per line (default: %(default)s; 0: one cue per Whisper "
        "piece, no shaping)")  # fmt: skip
    add("--max_line_count", type=_positive_int, default=2,
        help="srt/vtt: lines per cue (default: %(default)s)")  # fmt: skip
    add("--max_words_per_line", type=_positive_int, help="srt/vtt: words per line (default: no limit)")
    add("--highlight_words", type=_boolean, nargs="?", const=True, default=False, metavar="BOOL",
        help="srt/vtt: one cue per word, the spoken word underlined")  # fmt: skip
    add("--batch_size", "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
        help="segments one worker decodes in one engine call (default: %(default)s); "
        "1 decodes each alone")  # fmt: skip
    add("--workers", type=_natural_int,
        help="worker processes (0: in this process; default: fill the CPU cores)")  # fmt: skip
    add("--threads", type=_positive_int, help="threads per worker (default: 1 on up to 4 cores)")
    add("--mode", choices=tuple(Mode), default=Mode.PARALLEL,
        help="parallel (default) fans segments out; sequential transcribes one at a time, "
        "each prompted with the text before it")  # fmt: skip
    add("--vad", choices=("on", "off"), default="on",
        help="the speech gate: no text over music, noise or hum (default: %(default)s)")  # fmt: skip
    add("--vad_threshold", "--vad-threshold", type=_probability, default=VadOptions.threshold,
        help="speech probability at which the gate hears speech (default: %(default)s; "
        "lower keeps more)")  # fmt: skip
    add("--format", "--output_format", "-f", dest="format", choices=OUTPUT_FORMATS,
        default="text", metavar="FORMAT",
        help=f"{', '.join(OUTPUT_FORMATS)} (default: %(default)s; text and ndjson stream)")  # fmt: skip
    add("--output", "-o", help="write to this file, not stdout")
    add("--max_duration", type=float, help="refuse media longer than this many seconds")
    add("--quiet", "-q", action="store_true", help="no progress on stderr")
    add("--max_playlist_items", type=_positive_int, default=MAX_ITEMS,
        help="a playlist link: transcribe at most this many entries (default: %(default)s)")  # fmt: skip
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def _natural_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _boolean(text: str) -> bool:
    # whisper's CLI spells these "--word_timestamps True"; a bare flag means True.
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be True or False, not {text!r}")


def subtitle_options(args: argparse.Namespace) -> SubtitleOptions:
    return SubtitleOptions(
        max_line_width=args.max_line_width,
        max_line_count=args.max_line_count,
        max_words_per_line=args.max_words_per_line,
        highlight_words=args.highlight_words,
    )


def word_timestamps(args: argparse.Namespace) -> bool:
    """As asked, else on for the subtitle formats (cues break between words at real times)."""
    if args.word_timestamps is not None:
        return args.word_timestamps
    return args.format in ("srt", "vtt") and args.max_line_width > 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Bar:
    """A one-line progress bar redrawn in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.shown = stream, False

    def draw(self, progress: Progress) -> None:
        total = progress.duration
        share = min(1.0, progress.audio_done / total) if total else 0.0
        filled = int(share * 24)
        eta = "" if progress.eta is None else f"  ETA {clock(progress.eta)}"
        of = f"/{total:.0f}" if total else ""
        self.stream.write(
            f"\r\x1b[K[{'#' * filled}{'.' * (24 - filled)}] {share:4.0%} "
            f"{progress.audio_done:.0f}{of} s  {progress.segments_done}/{progress.segments_total}"
            f" segments{eta}"
        )
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


class _Printer:
    """Turns events into output: streamed text, NDJSON lines, or a document at the end."""

    def __init__(
        self,
        fmt: str,
        out: TextIO,
        err: TextIO,
        bar: _Bar | None,
        subtitles: SubtitleOptions | None = None,
    ) -> None:
        self.fmt, self.out, self.err, self.bar = fmt, out, err, bar
        self.subtitles = subtitles
        self.meta: Meta | None = None
        self.finished: dict[int, SegmentDone | SegmentFailed] = {}
        self.printed = 0  # text mode: segments [0, printed) are on the output
        self.failure: Failed | None = None
        self.done: Done | None = None

    def _emit(self, line: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        self.out.write(line + "\n")
        self.out.flush()

    def handle(self, event: Event) -> None:
        if self.fmt == "ndjson":
            self._emit(json.dumps(to_dict(event), ensure_ascii=False))
        if isinstance(event, Meta):
            self.meta = event
        elif isinstance(event, SegmentDone | SegmentFailed):
            self.finished[event.index] = event
            if isinstance(event, SegmentFailed):
                self._warn(f"segment {event.index} ({event.start:.1f}-{event.end:.1f} s) "
                           f"failed: {_one_line(event.message)}")
        elif isinstance(event, Progress):
            if self.fmt == "text":
                self._print_committed(event.committed)
            if self.bar is not None:
                self.bar.draw(event)
        elif isinstance(event, Done):
            self.done = event
        elif isinstance(event, Failed):
            self.failure = event

    def _print_committed(self, committed: int) -> None:
        while self.printed < committed:
            event = self.finished.get(self.printed)
            if isinstance(event, SegmentDone) and event.text.strip():
                self._emit(event.text.strip())
            self.printed += 1

    def _warn(self, message: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        self.err.write(f"warning: {message}\n")

    def segments(self) -> list[SegmentDone]:
        return [e for e in self.finished.values() if isinstance(e, SegmentDone)]

    def finish(self) -> int:
        """Write what the format writes at the end; the exit status."""
        if self.bar is not None:
            self.bar.clear()
        if self.fmt == "text":
            self._print_committed(max(self.finished, default=-1) + 1)
        elif self.fmt != "ndjson" and (self.done is not None or self.segments()):
            self.out.write(formats.write(self.fmt, self.segments(), self.meta, self.subtitles))
            self.out.flush()
        if self.failure is not None:
            self.err.write(f"error: {_one_line(self.failure.message)}\n")
            return 1
        if self.done is None:
            self.err.write("error: the transcription ended without finishing\n")
            return 1
        if self.done.segments and len(self.done.failed_segments) == self.done.segments:
            self.err.write("error: no segment could be transcribed\n")
            return 1
        if self.bar is not None:
            done = self.done
            first = "" if done.first_segment_s is None else f", first text after {done.first_segment_s:.1f} s"
            self.err.write(f"transcribed {done.audio_s:.1f} s of audio in {done.wall_s:.1f} s{first}\n")
        return 0


def _mapper(args: argparse.Namespace, engine: EngineConfig) -> Mapper:
    if args.workers == 0:
        return InlineMapper()
    return LocalPoolMapper(workers=args.workers, threads=args.threads, preload=engine)


async def _run(args: argparse.Namespace, printer: _Printer) -> None:
    options = await _options(args)
    mapper = _mapper(args, options.engine)
    try:
        async for event in transcribe_stream(args.source, options, mapper):
            printer.handle(event)
    finally:
        await mapper.aclose()


async def _options(args: argparse.Namespace) -> PipelineOptions:
    engine = EngineConfig(
        engine=args.engine, model=args.model, device=args.device, compute_type=args.compute_type
    )
    # Check the model before any worker starts: a typo is one clear line, not N segment errors.
    await asyncio.to_thread(resolve_model, engine)
    return PipelineOptions(
        engine=engine,
        transcribe=TranscribeOptions(
            language=args.language,
            task=args.task,
            beam_size=args.beam_size,
            word_timestamps=word_timestamps(args),
            batch_size=args.batch_size,
        ),
        mode=args.mode,
        max_duration=args.max_duration,
        vad=VadOptions(enabled=args.vad == "on", threshold=args.vad_threshold),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        playlist = _playlist_of(args)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    if playlist is not None:
        return main_playlist(args, playlist)
    fmt = args.format
    try:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    except OSError as err:
        sys.stderr.write(f"error: cannot write {args.output}: {err.strerror}\n")
        return 1
    bar = _Bar(sys.stderr) if sys.stderr.isatty() and not args.quiet else None
    printer = _Printer(fmt, out, sys.stderr, bar, subtitle_options(args))
    try:
        try:
            asyncio.run(_run(args, printer))
        except EngineError as err:
            printer.failure = Failed(str(err), err.code)
        except KeyboardInterrupt:
            printer.finish()  # keep what was transcribed
            sys.stderr.write("interrupted\n")
            return 130
        return printer.finish()
    finally:
        if out is not sys.stdout:
            out.close()


# -- playlists ---------------------------------------------------------------------------------

#: A playlist's files: the document formats (``text`` writes ``.txt``).
PLAYLIST_FORMATS = {"text": "txt", "txt": "txt", "srt": "srt", "vtt": "vtt", "json": "json"}


def _playlist_of(args: argparse.Namespace) -> Playlist | None:
    """The playlist behind a link, or None: a file, one video, or a link that cannot be listed
    (then the single-source path reports why)."""
    source = args.source
    if os.path.exists(source) or "://" not in source or youtube_id(source):
        return None
    try:
        return list_playlist(source, max_items=args.max_playlist_items)
    except MediaError:
        return None


def main_playlist(args: argparse.Namespace, playlist: Playlist) -> int:
    """Every entry into ``--output DIR``, one file each as it finishes; 1 only if all failed."""
    err = sys.stderr
    ext = PLAYLIST_FORMATS.get(args.format)
    if ext is None or not args.output:
        err.write(
            "error: a playlist is written as one file per entry: give --output DIR and "
            f"--format {', '.join(PLAYLIST_FORMATS)}\n"
        )
        return 2
    folder = Path(args.output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        err.write(f"error: cannot write {folder}: {error.strerror}\n")
        return 1
    err.write(f"{playlist.title}: {len(playlist.entries)} entries\n")
    if playlist.notice:
        err.write(f"warning: {playlist.notice}\n")
    fmt = "txt" if args.format == "text" else args.format
    try:
        done = asyncio.run(_run_playlist(args, playlist, folder, fmt, ext))
    except EngineError as error:
        err.write(f"error: {_one_line(str(error))}\n")
        return 1
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    err.write(f"{done} of {len(playlist.entries)} entries transcribed into {folder}\n")
    return 0 if done else 1


async def _run_playlist(
    args: argparse.Namespace, playlist: Playlist, folder: Path, fmt: str, ext: str
) -> int:
    """The entries one after another on one set of workers; how many succeeded."""
    options = await _options(args)
    mapper = _mapper(args, options.engine)
    err = sys.stderr
    bar = _Bar(err) if err.isatty() and not args.quiet else None
    done, count = 0, len(playlist.entries)
    try:
        for entry in playlist.entries:
            tag = f"[{entry.index + 1}/{count}] {entry.title}"
            if entry.error is not None or entry.url is None:  # an entry without a link has an error
                err.write(f"{tag}: failed: {_one_line(entry.error or 'no link')}\n")
                continue
            err.write(f"{tag}: transcribing\n")
            path = folder / file_name(entry.index, entry.title, ext)
            with path.open("w", encoding="utf-8") as out:
                printer = _Printer(fmt, out, err, bar)
                async for event in transcribe_stream(entry.url, options, mapper):
                    printer.handle(event)
                status = printer.finish()
            if status == 0:
                done += 1
                took = printer.done.wall_s if printer.done is not None else 0.0
                err.write(f"{tag}: done in {took:.1f} s -> {path}\n")
            else:
                if path.stat().st_size == 0:
                    path.unlink()
                why = printer.failure.message if printer.failure else "nothing was transcribed"
                err.write(f"{tag}: failed: {_one_line(why)}\n")
            err.flush()
    finally:
        await mapper.aclose()
    return done
