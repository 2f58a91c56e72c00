"""What the VAD heard in one segment (:class:`SpeechMap`), and the map from times in its speech
regions laid end to end back to times in the segment."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.vad.silero import FRAME_SECONDS


@dataclass
class SpeechMap:
    """What the VAD heard in one segment, in seconds relative to the segment's start."""

    #: Speech probability of each 32 ms frame (uint8: probability × 255, small to ship).
    probs: np.ndarray
    #: Padded, merged speech regions ``(start, end)``; empty: nothing in it is speech.
    regions: tuple[tuple[float, float], ...] = field(default_factory=tuple)
    #: Where the first probability's frame starts, seconds from the segment's start (<= 0): a
    #: stream's frames (:class:`SpeechTracker`) need not start where a segment does.
    offset: float = 0.0
    #: Non-speech quieter than :data:`QUIET_GAP_DB` (a pause) is decoded as it is, only louder non-speech
    #: (music, noise, hum) is cut out (the sequential mode, see :func:`gate_segment`).
    keep_pauses: bool = False

    @property
    def has_speech(self) -> bool:
        return bool(self.regions)

    def mean_prob(self, start: float, end: float) -> float:
        lo = max(0, int((start - self.offset) / FRAME_SECONDS))
        hi = max(lo + 1, int(np.ceil((end - self.offset) / FRAME_SECONDS)))
        frames = self.probs[lo:hi]
        return float(frames.mean()) / 255 if frames.size else 0.0

    def overlap(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` inside a speech region."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.regions)

    def is_whole(self, samples: int) -> bool:
        """Speech all through a segment of ``samples``: nothing to cut out of it."""
        return self.regions == ((0.0, round(samples / SAMPLE_RATE, 3)),)

    def _spans(self, samples: int) -> list[tuple[int, int]]:
        """The regions as sample spans of a segment of ``samples``."""
        return [(min(round(a * SAMPLE_RATE), samples), min(round(b * SAMPLE_RATE), samples)) for a, b in self.regions]

    def decoded_samples(self, samples: int) -> int:
        """How many samples the engine decodes for a segment of ``samples`` (:func:`plan_gate`):
        none without speech, the segment itself when it is speech all through, else its
        regions laid end to end with a joint between two (never more than ``samples``)."""
        if not self.regions:
            return 0
        if self.is_whole(samples):
            return samples
        return sum(hi - lo for lo, hi in self._spans(samples)) + _JOINT * (len(self.regions) - 1)

    def compacted(self, audio: np.ndarray) -> tuple[np.ndarray, _TimeMap]:
        """The speech regions of ``audio`` laid end to end, :data:`JOINT_SECONDS` of silence
        between two, and the map from times in that audio back to times in ``audio``."""
        parts, starts = [], []
        position = 0
        joint = np.zeros(_JOINT, dtype=np.float32)
        for k, (lo, hi) in enumerate(self._spans(len(audio))):
            if k:
                parts.append(joint)
                position += len(joint)
            parts.append(audio[lo:hi])
            starts.append(position / SAMPLE_RATE)
            position += hi - lo
        return np.concatenate(parts), _TimeMap(self.regions, tuple(starts))

    def to_payload(self) -> dict[str, Any]:
        """Plain data for a transport that does not pickle (the Modal payload)."""
        return {
            "probs": self.probs.astype(np.uint8).tobytes(),
            "regions": [list(r) for r in self.regions],
            "offset": self.offset,
            "keep_pauses": self.keep_pauses,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> SpeechMap:
        probs = np.frombuffer(data["probs"], dtype=np.uint8)
        regions = tuple((float(a), float(b)) for a, b in data["regions"])
        return cls(probs, regions, float(data.get("offset", 0.0)), bool(data.get("keep_pauses", False)))


#: Silence put between two speech regions laid end to end: the decoder hears a pause (and ends a
#: sentence there) rather than two voices glued together, and a time that falls in it is
#: plainly the end of one region or the start of the next.
JOINT_SECONDS = 0.3
_JOINT = int(JOINT_SECONDS * SAMPLE_RATE)
#: A piece edge less than this far over a joint is pulled back to it (see :meth:`_TimeMap.piece`).
SNAP_SECONDS = 1.0


@dataclass(frozen=True)
class _TimeMap:
    """Times in compacted audio -> times in the segment (see :meth:`SpeechMap.compacted`)."""

    regions: tuple[tuple[float, float], ...]
    #: Where each region starts in the compacted audio.
    starts: tuple[float, ...]

    def region(self, t: float) -> int:
        """Index of the region a segment time falls in (or the last one before it)."""
        return max(0, int(np.searchsorted([a for a, _ in self.regions], t, side="right")) - 1)

    def __call__(self, t: float, is_end: bool) -> float:
        return float(self.map_times(np.array([t], dtype=np.float64), is_end)[0])

    def map_times(self, times: np.ndarray, is_end: bool) -> np.ndarray:
        """Times in compacted audio -> times in the segment, many at once: a time in the joint
        after region k maps to region k's end if it ``is_end``, else to the next region's start."""
        k = np.maximum(0, np.searchsorted(self.starts, times + (-1e-6 if is_end else 1e-6), side="right") - 1)
        a, b = np.array(self.regions).T
        original = a[k] + (times - np.asarray(self.starts)[k])
        after = b if is_end else np.append(a[1:], b[-1])  # the last region has no next: its end
        return np.where(original > b[k], after[k], np.maximum(a[k], original))

    def piece(self, piece):
        start, end = self(piece.start, False), self(piece.end, True)
        # Whisper ends a piece where the next one starts, so an end lands a little into the
        # region after a joint, and a start a little before one: pull such an edge back over
        # the joint (at most SNAP_SECONDS of padded region is given up; no text is).
        first, last = self.region(start), self.region(end)
        while last > first and end - self.regions[last][0] < SNAP_SECONDS:
            last -= 1
            end = self.regions[last][1]
        while first < last and self.regions[first][1] - start < SNAP_SECONDS:
            first += 1
            start = self.regions[first][0]
        end = max(start, end)
        words = piece.words and [
            replace(w, start=min(max(self(w.start, False), start), end), end=min(max(self(w.end, True), start), end))
            for w in piece.words
        ]
        return replace(piece, start=start, end=end, words=words)


def quantised(probs: np.ndarray) -> np.ndarray:
    """Probabilities as :attr:`SpeechMap.probs` holds them (uint8: probability × 255)."""
    return np.round(np.clip(probs, 0, 1) * 255).astype(np.uint8)
