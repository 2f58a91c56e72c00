"""The one event vocabulary shared by every transport (SSE, NDJSON, text, CLI, page).

Each event is a small dataclass with a ``type`` tag; ``to_dict`` gives the JSON form that
every transport sends, and ``from_dict`` reads it back (the store and tests use it).
Timestamps are absolute seconds from the start of the source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from transcriber.vocab import Mode, Task


@dataclass
class Meta:
    """What is being transcribed, sent once before any segment."""

    type: ClassVar[str] = "meta"
    source_id: str
    title: str
    duration: float | None
    engine: str
    model: str
    url: str | None = None
    #: For YouTube sources, the canonical watch URL so a page can link timestamps (``&t=``).
    webpage_url: str | None = None
    is_youtube: bool = False
    language: str | None = None
    task: str = Task.TRANSCRIBE
    mode: str = Mode.PARALLEL
    #: yt-dlp's chapters (``start_time``, ``end_time``, ``title``), when the source has them.
    chapters: list[dict[str, Any]] | None = None


@dataclass
class SegmentDone:
    """One segment's transcript. ``pieces`` are Whisper's sub-segments with absolute times."""

    type: ClassVar[str] = "segment"
    index: int
    start: float
    end: float
    text: str
    pieces: list[dict[str, Any]] = field(default_factory=list)
    #: True when the segment was skipped as pure silence (text is "").
    silent: bool = False


@dataclass
class Progress:
    """Sent after every finished (or failed) segment."""

    type: ClassVar[str] = "progress"
    segments_done: int
    #: Segments cut so far; grows while decoding continues, final once ``decoding_done``.
    segments_total: int
    audio_done: float
    duration: float | None
    #: Seconds until the job should end, ``None`` until it can be estimated.
    eta: float | None
    #: Length of the in-order committed prefix: segments [0, committed) are all finished.
    committed: int
    decoding_done: bool = False


@dataclass
class SegmentFailed:
    """A segment whose transcription failed (after retries); the job goes on."""

    type: ClassVar[str] = "segment_error"
    index: int
    start: float
    end: float
    message: str


@dataclass
class Done:
    """The job finished; nothing follows."""

    type: ClassVar[str] = "done"
    wall_s: float
    first_segment_s: float | None
    audio_s: float
    #: wall seconds per audio second (lower is faster).
    rtf: float | None
    segments: int
    failed_segments: list[int] = field(default_factory=list)
    #: Segments a resumed run took from the earlier run's store instead of transcribing again.
    reused_segments: int = 0
    #: Pieces the speech gate dropped as non-speech (text over music or noise, or one of
    #: Whisper's stock phrases where the VAD heard no speech); logged at debug level.
    dropped_pieces: int = 0
    #: Segments whose batched decode failed whisper's thresholds and were decoded again alone.
    redecoded_segments: int = 0
    #: Segments transcribed per engine-call batch size (``{1: 3, 4: 20}``: 3 alone, 20 in
    #: batches of 4).
    batch_sizes: dict[int, int] = field(default_factory=dict)


@dataclass
class Failed:
    """A fatal error with a message for people; finished segments already sent stay valid."""

    type: ClassVar[str] = "error"
    message: str
    #: A stable machine-readable code, e.g. ``not_found``, ``undecodable``, ``forbidden_url``.
    code: str = "error"


Event = Meta | SegmentDone | Progress | SegmentFailed | Done | Failed

EVENT_TYPES: dict[str, type] = {
    cls.type: cls for cls in (Meta, SegmentDone, Progress, SegmentFailed, Done, Failed)
}


def to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready form: ``{"type": ..., **fields}``."""
    return {"type": event.type, **asdict(event)}


def from_dict(data: Mapping[str, Any]) -> Event:
    """Inverse of :func:`to_dict`."""
    data = dict(data)
    cls = EVENT_TYPES[data.pop("type")]
    return cls(**data)
