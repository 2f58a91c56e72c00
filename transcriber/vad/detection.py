"""Detection (the decode thread): the :class:`SpeechMap` of one clip (:func:`detect`), or of
each segment of a stream as it arrives (:class:`SpeechTracker`)."""

from __future__ import annotations

import logging

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.vad.options import VadOptions
from transcriber.vad.regions import decoded_prefix, speech_regions
from transcriber.vad.silero import FRAME, fresh_state, run_silero, speech_probs
from transcriber.vad.speech_map import SpeechMap, quantised

log = logging.getLogger(__name__)


def detect(audio: np.ndarray, options: VadOptions) -> SpeechMap:
    """The :class:`SpeechMap` of one clip's samples (a direct caller's; the pipeline's segments
    get theirs from the :class:`SpeechTracker` that ran over the whole stream)."""
    probs = speech_probs(audio)
    regions = speech_regions(probs, len(audio) / SAMPLE_RATE, options)
    return SpeechMap(quantised(probs), regions)


class SpeechTracker:
    """Silero VAD over a stream, once, as audio arrives: the segmenter's
    :class:`~transcriber.segment.SpeechGuide` (owned by the pipeline's decode thread).

    The model's state carries on from one :meth:`feed` to the next, so the probabilities are
    those of one run, whatever the chunks; but each segment gets a run of its own: at a cut
    (:meth:`restart`) the state starts afresh and the audio the segmenter still holds is run
    again (a few seconds, usually). Carried over a whole stream, the state made Silero deaf
    after music: 15 s of chords, then JFK's "ask not" scored under the threshold, and the gate
    cut the words out; from a fresh state at the segment's start (as :func:`detect` runs) it
    scores as speech. Only the frames of audio not yet cut are kept.
    """

    def __init__(self, options: VadOptions) -> None:
        self.options = options
        self.failed = False
        self._start(0)

    def _start(self, origin: int) -> None:
        self._state = fresh_state()
        self._pending = np.zeros(0, dtype=np.float32)  # the start of a frame not yet whole
        self._probs = np.zeros(0, dtype=np.float32)
        self._origin = origin  # the stream sample where _probs[0]'s frame starts

    def feed(self, samples: np.ndarray) -> None:
        """The stream's next samples."""
        if self.failed:
            return
        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        whole = len(audio) // FRAME * FRAME
        self._pending = audio[whole:].copy()
        if whole:
            self._run(audio[:whole])

    def finish(self) -> None:
        """The stream ended: its last, partial frame is padded with silence (as :func:`detect` does)."""
        if len(self._pending) and not self.failed:
            self._run(np.pad(self._pending, (0, FRAME - len(self._pending))))
        self._pending = np.zeros(0, dtype=np.float32)

    def restart(self, at: int, rest: np.ndarray) -> None:
        """The stream was cut at sample ``at``: a fresh run for the next segment, over ``rest``
        (the samples from ``at`` on that the segmenter holds)."""
        self._start(int(at))
        self.feed(rest)

    def speech_map(self, start: int, end: int) -> SpeechMap | None:
        """The map of stream samples ``[start, end)`` from the probabilities so far (frames
        not yet whole are left out: at most 32 ms, inside a region's padding); None when the
        VAD failed (then the stream is cut and decoded as without the gate). A segment's
        frames start where it does (``offset`` 0), as in :func:`detect`."""
        if self.failed:
            return None
        start, end = int(start) - self._origin, int(end) - self._origin
        if start < 0:
            raise ValueError(f"samples before {self._origin} were cut already")
        first = start // FRAME
        probs = self._probs[first : -(-end // FRAME)]
        offset = (first * FRAME - start) / SAMPLE_RATE
        regions = speech_regions(probs, (end - start) / SAMPLE_RATE, self.options, offset)
        return SpeechMap(quantised(probs), regions, offset)

    def decoded_prefix(self, speech: SpeechMap, times: np.ndarray) -> np.ndarray:
        """:func:`decoded_prefix` of ``speech``'s regions under these options."""
        return decoded_prefix(speech.regions, times, self.options)

    def _run(self, audio: np.ndarray) -> None:
        try:
            probs, self._state = run_silero(audio, self._state)
        except Exception:  # no onnxruntime, a broken model file: cut and decode without the gate
            log.warning("the speech gate failed; the rest of this stream goes ungated", exc_info=True)
            self.failed = True
            return
        self._probs = np.concatenate([self._probs, probs])


def speech_tracker(options: VadOptions) -> SpeechTracker | None:
    """The tracker for one stream, None when the gate is off."""
    return SpeechTracker(options) if options.enabled else None
