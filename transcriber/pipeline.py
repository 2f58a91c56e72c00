"""Glue: source -> decode -> segment -> mapper -> events.

INTERFACE SKELETON — filled in by the engine/pipeline work (issue 3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from transcriber.engine import EngineConfig, TranscribeOptions
from transcriber.events import Event
from transcriber.fanout import Mapper
from transcriber.media import Source
from transcriber.segment import SegmentOptions


@dataclass
class PipelineOptions:
    engine: EngineConfig = field(default_factory=EngineConfig)
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    #: ``parallel`` (fan out) | ``sequential`` (one worker, previous text as prompt).
    mode: str = "parallel"
    #: Reject media longer than this (seconds), from metadata and while decoding; None = no limit.
    max_duration: float | None = None


async def transcribe_stream(
    source: str | Source, options: PipelineOptions, mapper: Mapper
) -> AsyncIterator[Event]:
    """Meta, then SegmentDone/SegmentFailed/Progress as they happen, then Done (or Failed)."""
    raise NotImplementedError
    yield  # pragma: no cover
