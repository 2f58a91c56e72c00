"""Transcript documents (txt, srt, vtt, json) from the segments of a stream.

Segments may arrive in any order; every writer first puts them in reading order
(:func:`assemble`) and turns them into :class:`Cue` s: one per Whisper piece when the segment has
pieces (finer captions), else one per segment. Cue times are made monotonic across segment
boundaries, so a player never sees a caption that starts before the previous one.

``parse_srt`` / ``parse_vtt`` read the two caption formats back (tests use them for the round
trip; they accept what common tools write, hours of any width included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from transcriber.events import Event, Meta, SegmentDone, from_dict, to_dict
from transcriber.vocab import OutputFormat

FORMATS = tuple(OutputFormat)
"""Names accepted by :func:`write`; ``text`` is an alias of ``txt``."""

_ALIASES = {"text": "txt"}


@dataclass
class Cue:
    """One caption: absolute seconds and its text (one line, stripped)."""

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


def write_srt(segments: Iterable[SegmentDone]) -> str:
    blocks = [
        f"{n}\n{timestamp(c.start, ',')} --> {timestamp(c.end, ',')}\n{_caption_text(c.text)}\n"
        for n, c in enumerate(cues(segments), start=1)
    ]
    return "\n".join(blocks)


def write_vtt(segments: Iterable[SegmentDone]) -> str:
    blocks = [
        f"{timestamp(c.start)} --> {timestamp(c.end)}\n"
        + _caption_text(c.text).replace("&", "&amp;").replace("<", "&lt;")
        + "\n"
        for c in cues(segments)
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
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def write(fmt: str, segments: Iterable[SegmentDone], meta: Meta | None = None) -> str:
    """Dispatch on a format name (:data:`FORMATS`, or ``text``)."""
    name = _ALIASES.get(fmt, fmt)
    if name == "json":
        return write_json(segments, meta)
    writers = {"txt": write_txt, "srt": write_srt, "vtt": write_vtt}
    if name not in writers:
        raise ValueError(f"unknown transcript format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return writers[name](segments)


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
