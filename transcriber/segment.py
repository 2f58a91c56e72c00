"""Step 2: cut the PCM stream into segments at silences, as audio arrives.

Whisper reads 30 s windows; a shorter segment still costs a full padded pass and gives the
model less context, so segments are made as long as allowed and cut where nobody is speaking:

1. Audio is buffered until ``max_seconds`` are waiting (or the stream ends). With the speech
   gate (a :class:`SpeechGuide`: the stream's VAD, :class:`transcriber.vad.SpeechTracker`),
   ``max_seconds`` bounds what the engine will *decode* (the speech regions laid end to end,
   long non-speech left out) rather than the source: audio is buffered until that much
   speech is waiting, or ``max_span_seconds`` of source, so speech is packed into full windows
   (from the second segment on: the first one stays short, for a fast first text).
2. Energy is measured on 20 ms frames (mean square, in dBFS) and smoothed over 100 ms.
3. A frame is *quiet* when it is below a threshold that adapts to the buffered audio: the
   noise floor (10th percentile) plus a quarter of the floor-to-speech range (90th percentile),
   at least 6 dB; audio with under 10 dB of range has no pauses to find, except frames under
   -60 dBFS which are silence in any recording.
4. The cut goes in the middle of the best *real silence* (a quiet run of at least
   ``silence_min_seconds``) between ``min_seconds`` and ``max_seconds`` into the segment: the
   longest one (runs of 1 s and more count as equal), and of equals the latest, so segments stay
   long; a silence still going on at ``max_seconds`` is cut there. A packed window is cut at
   the latest loud non-speech break (music, noise), else at the latest real silence: the
   fullest window. Without a real silence the cut goes at the quietest 100 ms in the last
   ``search_seconds`` before ``max_seconds``.
   With a guide, frames outside its speech regions count as quiet too (so a window that ends
   in music is cut in the music, not in a pause of the sentence before it), and these
   seconds are seconds of decoded audio; the decoded length of the chosen cut is then checked
   exactly, and the cut moved earlier until it fits ``max_seconds``.

Segments cover the input exactly (no gap, no overlap, sample-exact offsets); the tail is always
emitted, however short; at most ``max_seconds`` of samples are ever buffered (with a guide,
``max_span_seconds``).

A segment is ``silent`` (the engine may skip it) when its loudest 100 ms stays below
``silent_db`` dBFS, or ``silent_relative_db`` below the loudest 20 ms frame heard so far in the
stream (a hum between loud speech). Both are RMS levels; a single click does not make a silent
segment loud, a spoken word does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

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
    #: With a :class:`SpeechGuide` the limits above count decoded audio (speech and joints), so
    #: a segment spans more source than that where there are pauses or music; this caps its
    #: source span. A segment travels to Modal as int16 PCM of its whole span, so 60 s (1.9 MB)
    #: stays under a Modal input's 2 MiB (``app.modal_mapper.MAX_PCM_BYTES``: 63.5 s). Not
    #: used without a guide; None: no packing, the limits count source seconds with a guide too
    #: (the pipeline's sequential mode, see ``transcriber.pipeline``).
    max_span_seconds: float | None = 60.0


@dataclass
class Segment:
    index: int
    #: Sample offsets into the source (exact; seconds derive from them).
    start_sample: int
    end_sample: int
    samples: np.ndarray  # float32, len == end_sample - start_sample
    #: True when the segment is pure silence and the engine may skip it.
    silent: bool = False
    #: What the speech gate heard in it (a :class:`transcriber.vad.SpeechMap`), set at the cut
    #: from the segmenter's :class:`SpeechGuide`; None when the gate is off.
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
#: Non-speech quieter than this (RMS, dBFS) is a pause; louder is music, noise or hum. Pauses in
#: the bench's read speech sit near -60 dBFS; the mixed input's non-speech at -20 to -29 dBFS.
QUIET_GAP_DB = -45.0
#: Loud non-speech at least this long is a break between two stretches of speech.
_BREAK_SECONDS = 1.0
_EPS = 1e-12


def _db(power: np.ndarray | float) -> np.ndarray:
    return 10.0 * np.log10(np.asarray(power, dtype=np.float64) + _EPS)


def level_db(samples: np.ndarray) -> float:
    """The RMS level of ``samples`` in dBFS, the scale of :data:`QUIET_GAP_DB` (no samples: silence)."""
    if not samples.size:
        return -np.inf
    return float(_db(np.mean(np.square(samples, dtype=np.float64))))


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


class SpeechGuide(Protocol):
    """The speech gate's view of the stream (:class:`transcriber.vad.SpeechTracker`): fed every
    sample the segmenter buffers, asked for the speech map of stream samples ``[start, end)``."""

    def feed(self, samples: np.ndarray) -> None: ...

    def finish(self) -> None: ...

    #: The stream was cut at sample ``at``; ``rest`` is the audio after it still buffered.
    def restart(self, at: int, rest: np.ndarray) -> None: ...

    #: A :class:`transcriber.vad.SpeechMap` (``regions``, ``decoded_samples(n)``), or None when
    #: the VAD failed (then segments are cut as without a guide).
    def speech_map(self, start: int, end: int) -> Any: ...

    #: Seconds decoded of a segment cut at each of ``times`` (a lower bound), from the map.
    def decoded_prefix(self, speech: Any, times: np.ndarray) -> np.ndarray: ...


#: With a guide and ``max_seconds`` of source buffered, whether the buffer holds ``max_seconds``
#: of speech is asked every this many seconds of source, on a grid that does not depend on the
#: chunks fed (so the cuts do not either).
_PACK_STEP_S = 0.1


class Segmenter:
    """Streaming segmenter: ``feed(chunk)`` returns the segments that chunk completed,
    ``finish()`` the rest. Holds at most ``max_seconds`` of samples (``max_span_seconds``
    with a ``guide``)."""

    def __init__(self, options: SegmentOptions | None = None, guide: SpeechGuide | None = None) -> None:
        self.guide = guide
        self.options = opts = options or SegmentOptions()
        if not 0 < opts.frame_seconds <= opts.max_seconds:
            raise ValueError("need 0 < frame_seconds <= max_seconds")
        if not 0 <= opts.min_seconds <= opts.max_seconds:
            raise ValueError("need 0 <= min_seconds <= max_seconds")
        if opts.max_span_seconds is not None and opts.max_span_seconds < opts.max_seconds:
            raise ValueError("need max_span_seconds >= max_seconds")
        self.frame = max(1, round(opts.frame_seconds * SAMPLE_RATE))
        self.max_samples = max(self.frame, int(opts.max_seconds * SAMPLE_RATE))
        first = self.max_samples if opts.first_max_seconds is None else int(opts.first_max_seconds * SAMPLE_RATE)
        self.first_max_samples = min(self.max_samples, max(self.frame, first))
        #: Speech is packed: the limits count decoded samples (step 1); not in the first
        #: segment, which is short for a fast first text and would be cut inside its speech.
        span_seconds = opts.max_span_seconds if guide is not None else None
        self.packs = span_seconds is not None
        span = int(span_seconds * SAMPLE_RATE) if span_seconds is not None else 0
        self.span_samples = max(self.max_samples, span)
        self._step = max(1, round(_PACK_STEP_S * SAMPLE_RATE))
        self._buf = np.empty(self.span_samples, dtype=np.float32)
        self._power = np.empty(self.span_samples // self.frame + 1, dtype=np.float64)
        self._n = 0  # samples buffered
        self._frames = 0  # whole frames of the buffer whose power is known
        self._start = 0  # absolute sample offset of the buffer's first sample
        self._index = 0
        self._peak_db = -np.inf  # loudest frame heard so far, for the relative silence test
        self._finished = False

    @property
    def buffered(self) -> int:
        """Samples held, waiting for a cut (never more than ``span_samples``)."""
        return self._n

    def feed(self, chunk: np.ndarray) -> list[Segment]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        out: list[Segment] = []
        pos = 0
        while pos < len(chunk):
            take = min(len(chunk) - pos, self._room())
            self._buf[self._n : self._n + take] = chunk[pos : pos + take]
            if self.guide is not None:
                self.guide.feed(chunk[pos : pos + take])
            self._n += take
            pos += take
            self._measure()
            while self._full():
                out.append(self._cut(self._choose_cut()))
        return out

    def finish(self) -> list[Segment]:
        """The tail (any length) as the last segment; nothing more may be fed."""
        self._finished = True
        out: list[Segment] = []
        if self.guide is not None:
            self.guide.finish()
        if self._packing:
            # Up to one step of speech may have come in over the limit since the last check.
            while self._n and self._decoded(self._n) > self._limit():
                out.append(self._cut(self._choose_cut()))
        if self._n:
            out.append(self._cut(self._n))
        return out

    # -- internals ---------------------------------------------------------------------------

    @property
    def _packing(self) -> bool:
        return self.packs and self._index > 0

    def _limit(self) -> int:
        """The most samples the segment that starts the buffer may have (decoded ones, with a guide)."""
        return self.first_max_samples if self._index == 0 else self.max_samples

    def _decoded(self, samples: int) -> int:
        """Samples the engine will decode of the first ``samples`` of the buffer."""
        if not self._packing or self.guide is None:
            return samples
        speech = self.guide.speech_map(self._start, self._start + samples)
        return samples if speech is None else speech.decoded_samples(samples)

    def _room(self) -> int:
        """Samples that may be buffered before the next check for a cut."""
        limit = self._limit()
        if not self._packing or self._n < limit:  # nothing decodes longer than its source
            return limit - self._n
        return min(self.span_samples - self._n, self._step - (self._n - limit) % self._step)

    def _full(self) -> bool:
        """Whether the segment that starts the buffer must be cut now."""
        limit = self._limit()
        if not self._packing or self._n < limit:
            return self._n >= limit
        if self._n >= self.span_samples:
            return True
        return (self._n - limit) % self._step == 0 and self._decoded(self._n) >= limit

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
        speech = None if self.guide is None else self.guide.speech_map(self._start, self._start + self._n)
        if speech is None:
            # Seconds of source: the buffer holds the limit (or more, after the VAD failed).
            lo = min(int(np.ceil(opts.min_seconds * SAMPLE_RATE / frame)), self._frames)
            hi = min(self._frames, self._limit() // frame)
            return self._silence_cut(lo, hi, None, None)
        # Seconds of decoded audio, at each frame boundary j (a cut there).
        times = np.arange(self._frames + 1) * frame / SAMPLE_RATE
        decoded = self.guide.decoded_prefix(speech, times) if self._packing and self.guide is not None else times
        limit = self._limit() / SAMPLE_RATE
        hi = max(1, int(np.searchsorted(decoded, limit + 1e-9, side="right")) - 1)
        lo = min(int(np.searchsorted(decoded, opts.min_seconds - 1e-9)), hi)
        middles = times[:-1] + frame / SAMPLE_RATE / 2
        outside = np.ones(self._frames, dtype=bool)
        for a, b in speech.regions:
            outside &= (middles < a) | (middles >= b)
        # The estimate leaves out a little non-speech after a region: check the cut exactly,
        # and choose again before it while it would decode too much.
        while True:
            cut = self._silence_cut(lo, hi, outside, decoded)
            if self._decoded(cut) <= self._limit():
                return cut
            hi = min(hi, cut // frame) - 1
            if hi <= max(lo, 1):
                return min(self._n, self._limit()) // frame * frame  # never decodes more than its source

    def _silence_cut(self, lo: int, hi: int, outside: np.ndarray | None, decoded: np.ndarray | None) -> int:
        """The cut of step 4 between frame boundaries ``lo`` and ``hi`` (``hi``: the limit),
        with the guide's non-speech frames and decoded seconds at each boundary where given."""
        opts, frame = self.options, self.frame
        if lo >= hi:
            return hi * frame
        level = _db(_smooth(self._power[: self._frames]))
        floor, loud = np.percentile(level, [10, 90])
        if loud - floor >= 10.0:
            threshold = max(floor + max(6.0, 0.25 * (loud - floor)), _DIGITAL_SILENCE_DB)
        else:
            threshold = _DIGITAL_SILENCE_DB
        quiet = np.zeros(hi - lo + 2, dtype=np.int8)
        quiet[1:-1] = level[lo:hi] < threshold
        if outside is not None:
            quiet[1:-1] |= outside[lo:hi]
        edges = np.diff(quiet)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        lengths = ends - starts
        need = max(1, round(opts.silence_min_seconds * SAMPLE_RATE / frame))
        real = lengths >= need
        if real.any():
            if self._packing and outside is not None:
                score = self._packed_score(lo, starts, ends, lengths, outside, hi)
            else:
                cap = max(need, round(_LONG_SILENCE_S * SAMPLE_RATE / frame))
                score = np.minimum(lengths, cap) * (hi + 1) + ends  # longest (capped), then latest
            best = np.flatnonzero(real)[np.argmax(score[real])]
            if lo + ends[best] == hi:
                # The silence lasts past the limit: keep it whole, so long silences make long
                # (silent, skippable) segments instead of a series of minimum-length ones.
                return hi * frame
            return (lo + (starts[best] + ends[best]) // 2) * frame
        search = round(opts.search_seconds * SAMPLE_RATE / frame)
        if decoded is not None:  # the last search_seconds of decoded audio
            search = hi - int(np.searchsorted(decoded, decoded[hi] - opts.search_seconds))
        search_lo = max(lo, hi - search)
        window = level[search_lo:hi]
        quietest = len(window) - 1 - int(np.argmin(window[::-1]))  # the latest of equals
        return max(search_lo + quietest, 1) * frame

    def _packed_score(
        self, lo: int, starts: np.ndarray, ends: np.ndarray, lengths: np.ndarray, outside: np.ndarray, hi: int
    ) -> np.ndarray:
        """Step 4 for a packed window: the latest loud non-speech break wins, else the latest
        real silence.

        A packed window costs one encoder pass whatever it holds, so any real silence is a good
        cut and the latest fills the window (four 10-min inputs: 81 windows instead of 89, WER
        0.061 instead of 0.069: fuller windows give more context). But speech on both sides of
        music or noise is better decoded apart: laid end to end in one window, the second part
        was heard through the first ("ill-disposed" as "old-sposed"; mixed input WER 0.062, cut
        at the break 0.048). A break is mostly outside the speech regions, at least
        ``_BREAK_SECONDS`` long and louder than a pause (:data:`QUIET_GAP_DB`).
        """
        score = ends.astype(np.int64)
        need = round(_BREAK_SECONDS * SAMPLE_RATE / self.frame)
        for k in np.flatnonzero(lengths >= need):
            a, b = lo + starts[k], lo + ends[k]
            away = outside[a:b]
            if away.mean() > 0.5 and float(_db(np.mean(self._power[a:b][away]))) >= QUIET_GAP_DB:
                score[k] += hi + 1
        return score

    def _cut(self, cut: int) -> Segment:
        cut = int(cut)  # a plain int, whatever numpy computed it with
        samples = self._buf[:cut].copy()
        level = _smooth(_frame_power(samples, self.frame))
        loudest = float(_db(level.max()))
        opts = self.options
        silent = loudest < opts.silent_db or loudest < self._peak_db - opts.silent_relative_db
        segment = Segment(self._index, self._start, self._start + cut, samples, silent=silent)
        if self.guide is not None:
            segment.speech = self.guide.speech_map(self._start, self._start + cut)
            self.guide.restart(self._start + cut, self._buf[cut : self._n])
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
    chunks: Iterable[np.ndarray], options: SegmentOptions | None = None, guide: SpeechGuide | None = None
) -> Iterator[Segment]:
    """Yield segments as soon as each is complete; together they cover the input exactly.

    When ``chunks`` raises (a transfer cut off, :class:`~transcriber.media.TooLong`), the audio
    that did arrive is still yielded as segments before the error propagates. Closing this
    generator closes ``chunks`` (which stops ffmpeg in :func:`~transcriber.media.decode`).
    """
    segmenter = Segmenter(options, guide)
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
