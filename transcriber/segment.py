"""Step 2: cut the PCM stream into segments at silences, as audio arrives.

INTERFACE SKELETON — filled in by the foundation work (issue 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from transcriber import SAMPLE_RATE


@dataclass
class SegmentOptions:
    #: Hard maximum: one Whisper window. Shorter segments each pay a full padded encoder pass.
    max_seconds: float = 30.0
    #: Below this a cut is not made at a silence (silence-rich audio must not explode into tiny pieces).
    min_seconds: float = 5.0


@dataclass
class Segment:
    index: int
    #: Sample offsets into the source (exact; seconds derive from them).
    start_sample: int
    end_sample: int
    samples: np.ndarray  # float32, len == end_sample - start_sample
    #: True when the segment is pure silence and the engine may skip it.
    silent: bool = False

    @property
    def start(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.end_sample / SAMPLE_RATE


def segment_stream(chunks: Iterable[np.ndarray], options: SegmentOptions | None = None) -> Iterator[Segment]:
    """Yield segments as soon as each is complete; together they cover the input exactly."""
    raise NotImplementedError
