"""Step 2: cut the PCM stream into segments at silences, as audio arrives.

Whisper reads 30 s windows; a shorter segment still costs a full padded pass and gives the
model less context, so segments are made as long as allowed and cut where nobody is speaking:

1. Audio is buffered until ``max_seconds`` are waiting (or the stream ends).
2. Energy is measured on 20 ms frames (mean square, in dBFS) and smoothed over 100 ms.
3. A frame is *quiet* when it is below a threshold that adapts to the buffered audio: the
   noise floor (10th percentile) plus a quarter of the floor-to-speech range (90th percentile),
   at least 6 dB; audio with under 10 dB of range has no pauses to find, except frames under
   -60 dBFS which are silence in any recording.
4. The cut goes in the middle of the best *real silence* (a quiet run of at least
   ``silence_min_seconds``) between ``min_seconds`` and ``max_seconds`` into the segment: the
   longest one (runs of 1 s and more count as equal), and of equals the latest, so segments stay
   long; a silence still going on at ``max_seconds`` is cut there. Without a real silence the
   cut goes at the quietest 100 ms in the last ``search_seconds`` before ``max_seconds``.
   Frames a ``quiet_hint`` marks as non-speech (the speech gate's VAD) count as quiet too, so
   a window that ends in music is cut in the music, not in a pause of the sentence before it.

Segments cover the input exactly (no gap, no overlap, sample-exact offsets); the tail is always
emitted, however short; at most ``max_seconds`` of samples are ever buffered.

A segment is ``silent`` (the engine may skip it) when its loudest 100 ms stays below
``silent_db`` dBFS, or ``silent_relative_db`` below the loudest 20 ms frame heard so far in the
stream (a hum between loud speech). Both are RMS levels; a single click does not make a silent
segment loud, a spoken word does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from transcriber import SAMPLE_RATE


@dataclass
class SegmentOptions:
    #: Hard maximum: one Whisper window. Shorter segments each pay a full padded encoder pass.
    max_seconds: float = 30.0
    #: Below this a cut is not made at a silence (silence-rich audio must not explode into tiny pieces).
    min_seconds: float = 5.0
    #: With no real silence in reach, cut at the quietest point of this many seconds before the max.
    search_seconds: float = 5.0
    #: A quiet run at least this long is a real silence (a pause between phrases, not a stop consonant).
    silence_min_seconds: float = 0.3
    #: A segment whose loudest 100 ms is under this level (dBFS RMS) is silent.
    silent_db: float = -50.0
    #: ...or whose loudest 100 ms is this many dB under the loudest frame heard so far.
    silent_relative_db: float = 40.0
    #: Energy frame length; cuts fall on frame boundaries counted from the segment start.
    frame_seconds: float = 0.02
    #: A lower maximum for the first segment only (None: ``max_seconds``), so the first text
    #: comes after a short decode instead of a full window's (the pipeline sets it).
    first_max_seconds: float | None = None


@dataclass
class Segment:
    index: int
    #: Sample offsets into the source (exact; seconds derive from them).
    start_sample: int
    end_sample: int
    samples: np.ndarray  # float32, len == end_sample - start_sample
    #: True when the segment is pure silence and the engine may skip it.
    silent: bool = False
    #: What the speech gate heard in it (a :class:`transcriber.vad.SpeechMap`), set by the
    #: pipeline after the cut; None when the gate is off.
    speech: Any = None

    @property
    def start(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.end_sample / SAMPLE_RATE


_SMOOTH_FRAMES = 5  # 100 ms at 20 ms frames: a level a person hears, not a click
_LONG_SILENCE_S = 1.0  # silences at least this long are all equally good places to cut
_DIGITAL_SILENCE_DB = -60.0
_EPS = 1e-12


def _db(power: np.ndarray | float) -> np.ndarray:
    return 10.0 * np.log10(np.asarray(power, dtype=np.float64) + _EPS)


def _smooth(power: np.ndarray) -> np.ndarray:
    if len(power) < _SMOOTH_FRAMES:
        return power
    kernel = np.ones(_SMOOTH_FRAMES)
    # Divide by the frames actually summed, so the buffer's edges do not look falsely quiet.
    count = np.convolve(np.ones(len(power)), kernel, mode="same")
    return np.convolve(power, kernel, mode="same") / count


def _frame_power(samples: np.ndarray, frame: int) -> np.ndarray:
    """Mean square of each whole frame (a trailing partial frame counts as one frame)."""
    whole = len(samples) // frame * frame
    blocks = samples[:whole].reshape(-1, frame)
    power = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64) / frame
    if whole < len(samples):
        rest = samples[whole:].astype(np.float64)
        power = np.append(power, np.dot(rest, rest) / len(rest))
    return power


#: ``quiet_hint(samples, frame)``: one bool per ``frame`` samples, True where another detector
#: (the speech gate's VAD) knows nobody speaks. Such frames count as quiet however loud they
#: are, so a cut lands in music or noise rather than in a short pause of the speech before it.
QuietHint = Callable[[np.ndarray, int], np.ndarray]


class Segmenter:
    """Streaming segmenter: ``feed(chunk)`` returns the segments that chunk completed,
    ``finish()`` the rest. Holds at most ``max_seconds`` of samples."""

    def __init__(self, options: SegmentOptions | None = None, quiet_hint: QuietHint | None = None) -> None:
        self.quiet_hint = quiet_hint
        self.options = opts = options or SegmentOptions()
        if not 0 < opts.frame_seconds <= opts.max_seconds:
            raise ValueError("need 0 < frame_seconds <= max_seconds")
        if not 0 <= opts.min_seconds <= opts.max_seconds:
            raise ValueError("need 0 <= min_seconds <= max_seconds")
        self.frame = max(1, round(opts.frame_seconds * SAMPLE_RATE))
        self.max_samples = max(self.frame, int(opts.max_seconds * SAMPLE_RATE))
        first = self.max_samples if opts.first_max_seconds is None else int(opts.first_max_seconds * SAMPLE_RATE)
        self.first_max_samples = min(self.max_samples, max(self.frame, first))
        self._buf = np.empty(self.max_samples, dtype=np.float32)
        self._power = np.empty(self.max_samples // self.frame + 1, dtype=np.float64)
        self._n = 0  # samples buffered
        self._frames = 0  # whole frames of the buffer whose power is known
        self._start = 0  # absolute sample offset of the buffer's first sample
        self._index = 0
        self._peak_db = -np.inf  # loudest frame heard so far, for the relative silence test
        self._finished = False

    @property
    def buffered(self) -> int:
        """Samples held, waiting for a cut (never more than ``max_samples``)."""
        return self._n

    def feed(self, chunk: np.ndarray) -> list[Segment]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        out: list[Segment] = []
        pos = 0
        while pos < len(chunk):
            limit = self.first_max_samples if self._index == 0 else self.max_samples
            take = min(len(chunk) - pos, limit - self._n)
            self._buf[self._n : self._n + take] = chunk[pos : pos + take]
            self._n += take
            pos += take
            self._measure()
            if self._n == limit:
                out.append(self._cut(self._choose_cut()))
        return out

    def finish(self) -> list[Segment]:
        """The tail (any length) as the last segment; nothing more may be fed."""
        self._finished = True
        if self._n == 0:
            return []
        return [self._cut(self._n)]

    # -- internals ---------------------------------------------------------------------------

    def _measure(self) -> None:
        """Power of the frames completed since the last call (vectorised, each sample once)."""
        whole = self._n // self.frame
        if whole > self._frames:
            fresh = _frame_power(self._buf[self._frames * self.frame : whole * self.frame], self.frame)
            self._power[self._frames : whole] = fresh
            self._frames = whole
            self._peak_db = max(self._peak_db, float(_db(fresh.max())))

    def _choose_cut(self) -> int:
        """Where to end the segment that starts the buffer, in samples (a frame boundary)."""
        opts, frame = self.options, self.frame
        level = _db(_smooth(self._power[: self._frames]))
        lo = min(int(np.ceil(opts.min_seconds * SAMPLE_RATE / frame)), self._frames)
        hi = self._frames  # the buffer is full: a cut here ends the segment at max_seconds
        if lo >= hi:
            return hi * frame
        floor, loud = np.percentile(level, [10, 90])
        if loud - floor >= 10.0:
            threshold = max(floor + max(6.0, 0.25 * (loud - floor)), _DIGITAL_SILENCE_DB)
        else:
            threshold = _DIGITAL_SILENCE_DB
        quiet = np.zeros(hi - lo + 2, dtype=np.int8)
        quiet[1:-1] = level[lo:hi] < threshold
        if self.quiet_hint is not None:
            quiet[1:-1] |= self.quiet_hint(self._buf[: hi * frame], frame)[lo:hi]
        edges = np.diff(quiet)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        lengths = ends - starts
        need = max(1, round(opts.silence_min_seconds * SAMPLE_RATE / frame))
        real = lengths >= need
        if real.any():
            cap = max(need, round(_LONG_SILENCE_S * SAMPLE_RATE / frame))
            score = np.minimum(lengths, cap) * (hi + 1) + ends  # longest (capped), then latest
            best = np.flatnonzero(real)[np.argmax(score[real])]
            if lo + ends[best] == hi:
                # The silence lasts past the buffer: keep it whole, so long silences make long
                # (silent, skippable) segments instead of a series of minimum-length ones.
                return hi * frame
            return (lo + (starts[best] + ends[best]) // 2) * frame
        search_lo = max(lo, hi - round(opts.search_seconds * SAMPLE_RATE / frame))
        window = level[search_lo:hi]
        quietest = len(window) - 1 - int(np.argmin(window[::-1]))  # the latest of equals
        return max(search_lo + quietest, 1) * frame

    def _cut(self, cut: int) -> Segment:
        samples = self._buf[:cut].copy()
        level = _smooth(_frame_power(samples, self.frame))
        loudest = float(_db(level.max()))
        opts = self.options
        silent = loudest < opts.silent_db or loudest < self._peak_db - opts.silent_relative_db
        segment = Segment(self._index, self._start, self._start + cut, samples, silent=silent)
        rest = self._n - cut
        self._buf[:rest] = self._buf[cut : self._n]  # numpy copies overlapping slices safely
        cut_frames = cut // self.frame
        kept = max(0, self._frames - cut_frames)
        self._power[:kept] = self._power[cut_frames : cut_frames + kept]
        self._n, self._frames = rest, kept
        self._start += cut
        self._index += 1
        return segment


def segment_stream(
    chunks: Iterable[np.ndarray], options: SegmentOptions | None = None, quiet_hint: QuietHint | None = None
) -> Iterator[Segment]:
    """Yield segments as soon as each is complete; together they cover the input exactly.

    When ``chunks`` raises (a transfer cut off, :class:`~transcriber.media.TooLong`), the audio
    that did arrive is still yielded as segments before the error propagates. Closing this
    generator closes ``chunks`` (which stops ffmpeg in :func:`~transcriber.media.decode`).
    """
    segmenter = Segmenter(options, quiet_hint)
    source = iter(chunks)
    try:
        try:
            for chunk in source:
                yield from segmenter.feed(chunk)
        except Exception:
            yield from segmenter.finish()
            raise
        yield from segmenter.finish()
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
