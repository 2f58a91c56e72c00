"""Transcript documents (txt, srt, vtt, json) from the segments of a stream.

Segments may arrive in any order; every writer first puts them in reading order
(:func:`assemble`) and turns them into :class:`Cue` s: one per Whisper piece when the segment has
pieces (finer captions), else one per segment. Cue times are made monotonic across segment
boundaries, so a player never sees a caption that starts before the previous one.

SRT and VTT are subtitle-ready by default: :mod:`transcriber.subtitles` regroups the words into
cues of at most two 42-character lines and 7 s (:class:`~transcriber.subtitles.SubtitleOptions`;
``max_line_width=0`` gives the one-cue-per-piece captions of :func:`cues`).

``parse_srt`` / ``parse_vtt`` read the two caption formats back (tests use them for the round
trip; they accept what common tools write, hours of any width included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from transcriber import subtitles
from transcriber.events import Event, Meta, SegmentDone, from_dict, to_dict
from transcriber.subtitles import SubtitleOptions
from transcriber.vocab import OutputFormat

FORMATS = tuple(OutputFormat)
"""Names accepted by :func:`write`; ``text`` is an alias of ``txt``."""

_ALIASES = {"text": "txt"}


@dataclass
class Cue:
    """One caption: absolute seconds and its text (stripped; lines joined by ``\\n``)."""

    start: float
    end: float
    text: str


def assemble(events: Iterable[Event | Mapping[str, Any]]) -> list[SegmentDone]:
    """The finished segments of an event stream, in index (reading) order.

    Accepts event objects or their ``to_dict`` form (what a store or an NDJSON log holds);
    everything but ``segment`` events is ignored, and a repeated index keeps the last one.
    """
    by_index: dict[int, SegmentDone] = {}
    for event in events:
        if isinstance(event, Mapping):
            if event.get("type") != SegmentDone.type:
                continue
            event = from_dict(event)
        if isinstance(event, SegmentDone):
            by_index[event.index] = event
    return [by_index[i] for i in sorted(by_index)]


def cues(segments: Iterable[SegmentDone]) -> list[Cue]:
    """Captions in reading order with non-decreasing, non-overlapping times."""
    out: list[Cue] = []
    last_end = 0.0
    for seg in assemble(segments):
        if seg.silent:
            continue
        spans = [(p["start"], p["end"], p["text"]) for p in seg.pieces] or [
            (seg.start, seg.end, seg.text)
        ]
        for start, end, text in spans:
            text = " ".join(text.split())
            if not text:
                continue
            # Clamp into the segment (an engine may overshoot the padded window) and after the
            # previous cue, so times stay monotonic across segment boundaries.
            start = max(min(max(start, seg.start), seg.end), last_end)
            end = max(min(end, seg.end), start)
            out.append(Cue(start, end, text))
            last_end = end
    return out


def words(segments: Iterable[SegmentDone]) -> list[subtitles.TimedWord]:
    """Every word of the transcript in reading order, times clamped into its segment and made
    non-decreasing (the same clamping as :func:`cues`)."""
    out: list[subtitles.TimedWord] = []
    last = 0.0
    for seg in assemble(segments):
        if seg.silent:
            continue
        pieces = seg.pieces or [{"start": seg.start, "end": seg.end, "text": seg.text}]
        for piece in pieces:
            for word in subtitles.piece_words(piece, seg.start, seg.end):
                word.start = max(word.start, last)
                word.end = max(word.end, word.start)
                last = word.start
                out.append(word)
    return out


def subtitle_cues(segments: Iterable[SegmentDone], options: SubtitleOptions | None = None) -> list[Cue]:
    """The cues of SRT/VTT: shaped by ``options`` (default: the broadcast rules), or one per
    piece when ``max_line_width`` is 0."""
    options = options or SubtitleOptions()
    if not options.enabled:
        return cues(segments)
    shaped = subtitles.shape(words(segments), options)
    if options.highlight_words:
        shaped = subtitles.highlighted(shaped)
    return [Cue(c.start, c.end, c.text) for c in shaped]


def timestamp(seconds: float, sep: str = ".") -> str:
    """``HH:MM:SS.mmm`` (``sep=","`` for SRT); hours grow past two digits when needed."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _caption_text(text: str) -> str:
    # "-->" would end a cue's timing line early; whisper's writers make the same substitution.
    return text.replace("-->", "->")


def write_txt(segments: Iterable[SegmentDone]) -> str:
    return "".join(f"{cue.text}\n" for cue in cues(segments))


def write_srt(segments: Iterable[SegmentDone], options: SubtitleOptions | None = None) -> str:
    blocks = [
        f"{n}\n{timestamp(c.start, ',')} --> {timestamp(c.end, ',')}\n{_caption_text(c.text)}\n"
        for n, c in enumerate(subtitle_cues(segments, options), start=1)
    ]
    return "\n".join(blocks)


def _vtt_text(text: str) -> str:
    escaped = _caption_text(text).replace("&", "&amp;").replace("<", "&lt;")
    # highlight_words' underline is the one tag we write ourselves.
    return escaped.replace("&lt;u>", "<u>").replace("&lt;/u>", "</u>")


def write_vtt(segments: Iterable[SegmentDone], options: SubtitleOptions | None = None) -> str:
    blocks = [
        f"{timestamp(c.start)} --> {timestamp(c.end)}\n{_vtt_text(c.text)}\n"
        for c in subtitle_cues(segments, options)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def write_chapters_vtt(chapters: Iterable[Mapping[str, Any]]) -> str:
    """A WebVTT chapters track (``<track kind="chapters">``) from yt-dlp's chapters
    (``start_time``, ``end_time``, ``title``)."""
    blocks = [
        f"{n}\n{timestamp(c['start_time'])} --> {timestamp(c['end_time'])}\n"
        f"{_vtt_text(' '.join(str(c.get('title') or f'Chapter {n}').split()))}\n"
        for n, c in enumerate(chapters, start=1)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def write_json(segments: Iterable[SegmentDone], meta: Meta | None = None) -> str:
    """``{"text", "segments": [segment events], "meta"?}``; segments in reading order."""
    ordered = assemble(segments)
    doc: dict[str, Any] = {
        "text": " ".join(s.text.strip() for s in ordered if s.text.strip()),
        "segments": [to_dict(s) for s in ordered],
    }
    if meta is not None:
        doc["meta"] = to_dict(meta)
        if meta.chapters:
            doc["chapters"] = meta.chapters
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def write(
    fmt: str,
    segments: Iterable[SegmentDone],
    meta: Meta | None = None,
    subtitle_options: SubtitleOptions | None = None,
) -> str:
    """Dispatch on a format name (:data:`FORMATS`, or ``text``); ``subtitle_options`` shape
    SRT and VTT (default: the broadcast rules)."""
    name = _ALIASES.get(fmt, fmt)
    if name == "json":
        return write_json(segments, meta)
    if name == "srt":
        return write_srt(segments, subtitle_options)
    if name == "vtt":
        return write_vtt(segments, subtitle_options)
    if name != "txt":
        raise ValueError(f"unknown transcript format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return write_txt(segments)


MEDIA_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json",
}
"""Content types for downloads, by format name."""


_TIMING = re.compile(
    r"^\s*(\d+):(\d{2}):(\d{2})[,.](\d{3})\s*-->\s*(\d+):(\d{2}):(\d{2})[,.](\d{3})"
)


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _parse_blocks(document: str) -> list[Cue]:
    out: list[Cue] = []
    for block in re.split(r"\n\s*\n", document.replace("\r\n", "\n").strip()):
        lines = block.split("\n")
        for i, line in enumerate(lines):
            match = _TIMING.match(line)
            if match:
                g = match.groups()
                text = " ".join(x.strip() for x in lines[i + 1 :] if x.strip())
                out.append(Cue(_seconds(*g[:4]), _seconds(*g[4:]), text))
                break
    return out


def parse_srt(document: str) -> list[Cue]:
    """SRT -> cues (numbers ignored)."""
    return _parse_blocks(document)


def parse_vtt(document: str) -> list[Cue]:
    """WebVTT -> cues (header, NOTE and cue ids ignored; ``&amp;``/``&lt;`` unescaped)."""
    if not document.lstrip("\ufeff").startswith("WEBVTT"):
        raise ValueError("not a WebVTT document: it must start with 'WEBVTT'")
    found = _parse_blocks(document)
    for cue in found:
        cue.text = cue.text.replace("&lt;", "<").replace("&amp;", "&")
    return found
