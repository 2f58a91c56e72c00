"""Fan segment jobs out to Whisper workers; results come back as they complete (out of order).

INTERFACE SKELETON — filled in by the engine/pipeline work (issue 3). The Modal mappers live
in ``app/`` and implement the same :class:`Mapper` protocol with the same :func:`run_job`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from transcriber.engine import EngineConfig, Piece, TranscribeOptions


@dataclass
class SegmentJob:
    """Everything a worker needs for one segment, and nothing of the rest of the file."""

    index: int
    #: Absolute offset of ``audio`` in the source, seconds.
    start: float
    end: float
    audio: np.ndarray  # 16 kHz mono float32
    engine: EngineConfig
    options: TranscribeOptions
    silent: bool = False


@dataclass
class SegmentResult:
    index: int
    start: float
    end: float
    #: Pieces with absolute timestamps (offset by ``start``).
    pieces: list[Piece] = field(default_factory=list)
    #: Set when the segment failed; the job goes on.
    error: str | None = None
    silent: bool = False
    #: Seconds the worker spent on it.
    elapsed: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(p.text.strip() for p in self.pieces if p.text.strip())


def run_job(job: SegmentJob) -> SegmentResult:
    """Transcribe one job with the (cached, once-per-process) engine for ``job.engine``.

    Shared by every mapper, local and Modal: skips silent segments, makes timestamps absolute,
    turns an engine exception into ``SegmentResult.error``.
    """
    raise NotImplementedError


class Mapper(Protocol):
    def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        """Consume jobs as they arrive, yield results as they complete; bounded in-flight work.

        Closing the returned async generator (or cancelling its consumer) stops queued work.
        """
        ...

    async def aclose(self) -> None:
        """Release workers (processes, containers)."""
        ...
