"""Speech probabilities -> padded, merged speech regions, and what a cut would leave to decode."""

from __future__ import annotations

import numpy as np

from transcriber.vad.options import VadOptions
from transcriber.vad.silero import FRAME_SECONDS
from transcriber.vad.speech_map import JOINT_SECONDS


def speech_regions(
    probs: np.ndarray, duration: float, options: VadOptions, offset: float = 0.0
) -> tuple[tuple[float, float], ...]:
    """Frames -> padded speech regions, gaps under ``min_gap_seconds`` merged, in seconds
    from the start of a stretch of ``duration`` s whose first frame starts at ``offset`` s."""
    probs = np.asarray(probs, dtype=np.float32)
    low = max(options.threshold - options.hysteresis, 0.01)
    # Silero's hysteresis, vectorised (the segmenter asks often): a frame at or above the
    # threshold is speech, one under ``low`` is not, one between is what the frame before was.
    decided = np.where(probs >= options.threshold, 1, np.where(probs < low, 0, -1))
    last = np.maximum.accumulate(np.where(decided >= 0, np.arange(len(probs)), -1)) if len(probs) else decided
    speaking = (last >= 0) & (decided[np.maximum(last, 0)] == 1)
    edges = np.diff(np.concatenate([[0], speaking.astype(np.int8), [0]]))
    runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    regions: list[list[float]] = []
    for first, end in runs:
        a, b = offset + int(first) * FRAME_SECONDS, offset + int(end) * FRAME_SECONDS
        if b - a < options.min_speech_seconds:
            continue
        a, b = max(0.0, a - options.pad_seconds), min(duration, b + options.pad_seconds)
        if regions and a - regions[-1][1] < options.min_gap_seconds:
            regions[-1][1] = max(regions[-1][1], b)
        else:
            regions.append([a, b])
    # Leading and trailing non-speech shorter than the gap stays too (a segment's edges are
    # cut in quiet places, and a word may run up to them).
    if regions and regions[0][0] < options.min_gap_seconds:
        regions[0][0] = 0.0
    if regions and duration - regions[-1][1] < options.min_gap_seconds:
        regions[-1][1] = duration
    return tuple((round(a, 3), round(b, 3)) for a, b in regions)


def decoded_prefix(regions, times: np.ndarray, options: VadOptions) -> np.ndarray:
    """Seconds the engine would decode of a segment cut at each of ``times`` (seconds from its
    start), from the ``regions`` of a longer stretch: what the speech regions up to each time
    and the joints between them add up to. A lower bound (a cut less than
    ``min_gap_seconds`` after a region keeps that bit of non-speech too), so a cut chosen
    with it is checked exactly with :meth:`SpeechMap.decoded_samples`."""
    times = np.asarray(times, dtype=np.float64)
    total = np.zeros(len(times))
    started = np.zeros(len(times), dtype=np.int64)
    for a, b in regions:
        total += np.clip(times - a, 0.0, b - a)
        started += times > a
    return total + JOINT_SECONDS * np.maximum(started - 1, 0)
