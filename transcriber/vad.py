"""The speech gate: no text where nobody speaks (music, noise, hum).

Whisper, given a window of music or noise, likes to invent "Thank you.", "♪" or a repeated
phrase. Its own no-speech test passes such windows often enough (a 25 s music block came back as
"Thank you."), so a voice-activity detector looks at the audio first:

0. A :class:`SpeechTracker`, owned by the pipeline's decode thread, runs Silero VAD (the ONNX
   model faster-whisper ships in its package; no download) once over the stream as audio
   arrives, carrying the model's state on and keeping probabilities only for the audio the
   segmenter still buffers. The segmenter reads it to cut in music or noise rather than in a
   pause of a sentence (a cut there costs words), and to pack speech into full windows (its
   limit is what the engine will decode, see :mod:`transcriber.segment`).
1. Each segment leaves the segmenter with its :class:`SpeechMap` (speech probabilities every
   32 ms and the padded speech regions), taken from those probabilities, not from a second run
   (:func:`detect` still maps a lone clip for a direct caller). The map travels with the job to
   whatever worker decodes it: a local process, a Modal container.
2. A segment with no speech region is marked ``silent``: no engine sees it, as with digital
   silence.
3. :func:`transcribe_gated`, in the shared per-job step (:func:`transcriber.fanout.run_job`),
   decodes only the speech regions of a segment, laid end to end (long music or noise is never
   decoded), and maps every time back exactly. Then the last guard: a piece with little speech
   probability under it whose text is one of Whisper's known non-speech phrases
   (:data:`NON_SPEECH_PHRASES`, the one list of them) is dropped.

Tuned for recall: the threshold is below Silero's customary 0.5, regions are padded by half a
second and gaps under two seconds are left alone, so the gate never takes a word of the speech
fixtures (faster-whisper's batched mode, whose VAD cuts tight, lost 17 words on the same input).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.segment import QUIET_GAP_DB, _db

log = logging.getLogger(__name__)

#: Silero's frame: 512 samples (32 ms) at 16 kHz.
FRAME = 512
FRAME_SECONDS = FRAME / SAMPLE_RATE
#: The last guard drops a known non-speech phrase only where the mean speech probability under
#: the piece is below this (speech scores 0.5-0.9 on average over a clip, noise under 0.02).
PHRASE_MAX_PROB = 0.3


@dataclass(frozen=True)
class VadOptions:
    """The speech gate's knobs (``--vad``, ``--vad_threshold``; request fields ``vad``,
    ``vad_threshold``). Frozen and plain, so it is part of a job's cache key."""

    #: Off: every segment is decoded whole, as before the gate existed.
    enabled: bool = True
    #: A 32 ms frame with a speech probability at or above this starts speech. Silero's own
    #: default is 0.5; on the fixtures every speech clip peaks above 0.96 while chords, pink
    #: noise, hum with clicks and speech-band noise stay under 0.26, so 0.4 keeps a margin on
    #: the side of speech (soft or distant voices score lower).
    threshold: float = 0.4
    #: Speech goes on until the probability falls under ``threshold - 0.15`` (hysteresis, as in
    #: Silero's reference code), so a soft word inside a sentence does not end it.
    hysteresis: float = 0.15
    #: Seconds added on each side of a speech region (word onsets and tails score low).
    pad_seconds: float = 0.5
    #: Non-speech shorter than this between two regions is kept (decoded as it is): pauses
    #: between sentences belong to the speech, and cutting them out would gain nothing.
    min_gap_seconds: float = 2.0
    #: A speech region shorter than this (before padding) is a click, not a word.
    min_speech_seconds: float = 0.1


#: Whisper's stock answers to non-speech (music, applause, silence), normalised by
#: :func:`_phrase_key`, by language (``None``: any language; a multilingual model may answer
#: in another language than the one asked for). Only ever dropped where the VAD heard no speech.
NON_SPEECH_PHRASES: dict[str | None, frozenset[str]] = {
    None: frozenset({"", "music", "applause", "laughter", "silence", "blank_audio", "inaudible"}),
    "en": frozenset({
        "thank you", "thank you very much", "thank you so much", "thanks", "thanks for watching",
        "thank you for watching", "thanks for watching and see you next time",
        "please subscribe", "subscribe", "like and subscribe", "bye", "bye bye", "you", "oh",
        "so", "okay", "the end", "music playing", "upbeat music", "soft music", "dramatic music",
    }),
    "de": frozenset({"vielen dank", "danke", "untertitel im auftrag des zdf", "tschüss"}),
    "fr": frozenset({"merci", "sous-titrage st' 501", "merci d'avoir regardé"}),
    "es": frozenset({"gracias", "gracias por ver", "subtítulos realizados por la comunidad de amara.org"}),
    "it": frozenset({"grazie", "grazie per la visione"}),
    "pt": frozenset({"obrigado", "obrigada"}),
    "nl": frozenset({"bedankt", "dank je wel"}),
    "ja": frozenset({"ご視聴ありがとうございました", "ありがとうございました"}),
    "zh": frozenset({"谢谢观看", "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目"}),
    "ru": frozenset({"спасибо", "продолжение следует", "спасибо за просмотр"}),
}


def _phrase_key(text: str) -> str:
    """Lower case, without brackets, music notes and end punctuation: "[Music]" -> "music"."""
    text = re.sub(r"[\[\]()*♪♫♬🎵🎶]", " ", text.lower())
    text = re.sub(r"[.!?,;:…。！？、\"]+", " ", text)
    return " ".join(text.split())


def is_non_speech_phrase(text: str, language: str | None = None) -> bool:
    """Is ``text`` one of Whisper's stock non-speech answers (for ``language``; None: any)?"""
    if language is None:  # detected per segment: any language's phrases may come back
        phrases = frozenset().union(*NON_SPEECH_PHRASES.values())
    else:
        phrases = NON_SPEECH_PHRASES[None] | NON_SPEECH_PHRASES.get(language.split("-")[0], frozenset())
    return _phrase_key(text) in phrases


# -- detection (the decode thread) --------------------------------------------------------------


#: The ONNX file faster-whisper ships (its ``faster_whisper/assets``); no download.
SILERO_ASSET = "silero_vad_v6.onnx"
#: Samples of the previous frame Silero v5+ reads in front of each 512-sample frame.
_CONTEXT = 64
#: Frames per call to the model (4 s).
_BATCH_FRAMES = 128


@functools.cache
def _session():
    """Silero VAD from faster-whisper's package assets on onnxruntime, one thread, set up as
    ``faster_whisper.vad`` does. The file is found without importing faster_whisper, which
    would pull CTranslate2 into the process that cuts segments (+36 MB, +0.3 s at start)."""
    import importlib.util
    import os

    import onnxruntime

    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the speech gate needs faster-whisper, whose package ships Silero VAD")
    path = os.path.join(spec.submodule_search_locations[0], "assets", SILERO_ASSET)
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = opts.intra_op_num_threads = 1
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 4
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)


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
        k = max(0, int(np.searchsorted(self.starts, t + (1e-6 if not is_end else -1e-6), side="right")) - 1)
        a, b = self.regions[k]
        original = a + (t - self.starts[k])
        if original > b:  # in the joint after region k: its end, or the next region's start
            return b if is_end or k + 1 == len(self.regions) else self.regions[k + 1][0]
        return max(a, original)

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


def speech_probs(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability for every 32 ms frame of ``audio`` (16 kHz float32)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return np.zeros(0, dtype=np.float32)
    probs, _ = _silero(np.pad(audio, (0, -len(audio) % FRAME)), _fresh_state())
    return probs


def _fresh_state() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Silero's state before any audio: its LSTM's ``h`` and ``c``, and a silent context."""
    zeros = np.zeros((1, 1, 128), dtype=np.float32)
    return zeros, zeros, np.zeros(_CONTEXT, dtype=np.float32)


def _silero(audio: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
    """Probabilities of whole frames of ``audio`` after ``state``, and the state after them.

    Each frame is given with the last 64 samples of the one before (of the previous call for
    the first), as faster_whisper.vad does; frames go in batches that carry the model's state
    on, as there, but of 4 s rather than 10000 frames: the same probabilities, and a call no
    longer holds 26 MB of intermediate tensors.
    """
    h, c, context = state
    frames = audio.reshape(-1, FRAME)
    before = np.empty((len(frames), _CONTEXT), dtype=np.float32)
    before[0] = context
    before[1:] = frames[:-1, -_CONTEXT:]
    batch = np.concatenate([before, frames], axis=1)
    probs = []
    for i in range(0, len(batch), _BATCH_FRAMES):
        out, h, c = _session().run(None, {"input": batch[i : i + _BATCH_FRAMES], "h": h, "c": c})
        probs.append(out)
    return np.concatenate(probs).astype(np.float32).reshape(-1), (h, c, frames[-1, -_CONTEXT:].copy())


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


def detect(audio: np.ndarray, options: VadOptions) -> SpeechMap:
    """The :class:`SpeechMap` of one clip's samples (a direct caller's; the pipeline's segments
    get theirs from the :class:`SpeechTracker` that ran over the whole stream)."""
    probs = speech_probs(audio)
    regions = speech_regions(probs, len(audio) / SAMPLE_RATE, options)
    return SpeechMap(_quantised(probs), regions)


def _quantised(probs: np.ndarray) -> np.ndarray:
    return np.round(np.clip(probs, 0, 1) * 255).astype(np.uint8)


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
        self._state = _fresh_state()
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
        return SpeechMap(_quantised(probs), regions, offset)

    def decoded_prefix(self, speech: SpeechMap, times: np.ndarray) -> np.ndarray:
        """:func:`decoded_prefix` of ``speech``'s regions under these options."""
        return decoded_prefix(speech.regions, times, self.options)

    def _run(self, audio: np.ndarray) -> None:
        try:
            probs, self._state = _silero(audio, self._state)
        except Exception:  # no onnxruntime, a broken model file: cut and decode without the gate
            log.warning("the speech gate failed; the rest of this stream goes ungated", exc_info=True)
            self.failed = True
            return
        self._probs = np.concatenate([self._probs, probs])


def speech_tracker(options: VadOptions) -> SpeechTracker | None:
    """The tracker for one stream, None when the gate is off."""
    return SpeechTracker(options) if options.enabled else None


# -- gating (the shared per-job step) -----------------------------------------------------------


@dataclass
class Gated:
    pieces: list
    #: Pieces the gate dropped (counted in the ``done`` event's ``dropped_pieces``).
    dropped: int = 0


@dataclass
class GatePlan:
    """What the engine decodes for one segment under the gate, and how its pieces come back.

    The two halves of :func:`transcribe_gated`, split so a batched engine call
    (:func:`transcriber.fanout.run_batch`) gates each of its segments the same way.
    """

    #: The samples to decode: the segment itself, or its speech regions laid end to end.
    audio: np.ndarray
    speech: SpeechMap | None = None
    #: Maps times in ``audio`` back to the segment (None: they are the segment's already).
    to_segment: Any = None




def _across_quiet_gaps(regions, audio: np.ndarray) -> tuple[tuple[float, float], ...]:
    """``regions`` merged over the quiet non-speech between them (and at the segment's edges)."""
    duration = len(audio) / SAMPLE_RATE

    def quiet(a: float, b: float) -> bool:
        part = audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]
        return not part.size or float(_db(np.mean(np.square(part, dtype=np.float64)))) < QUIET_GAP_DB

    merged = [list(regions[0])]
    for a, b in regions[1:]:
        if quiet(merged[-1][1], a):
            merged[-1][1] = b
        else:
            merged.append([a, b])
    if quiet(0.0, merged[0][0]):
        merged[0][0] = 0.0
    if quiet(merged[-1][1], duration):
        merged[-1][1] = round(duration, 3)
    return tuple((a, b) for a, b in merged)


def plan_gate(audio: np.ndarray, speech: SpeechMap | None) -> GatePlan | None:
    """The audio the engine should decode for a segment; None when nothing is speech."""
    if speech is None:
        return GatePlan(audio)
    if not speech.regions:  # a silent job: run_job does not get here, but a direct caller may
        return None
    cut = speech
    if speech.keep_pauses:  # cut out only the loud non-speech; the drop rules keep every region
        cut = replace(speech, regions=_across_quiet_gaps(speech.regions, audio))
    if cut.is_whole(len(audio)):  # speech all through: nothing to cut
        return GatePlan(audio, speech)
    compact, to_segment = cut.compacted(audio)
    return GatePlan(compact, speech, to_segment)


def finish_gate(plan: GatePlan | None, pieces: list, language: str | None) -> Gated:
    """The engine's pieces for ``plan`` on the segment's timeline, non-speech dropped."""
    if plan is None:
        return Gated([])
    if plan.to_segment is not None:
        pieces = [plan.to_segment.piece(p) for p in pieces]
    if plan.speech is None:
        return Gated(pieces)
    kept, dropped = [], 0
    for piece in pieces:
        reason = drop_reason(piece, plan.speech, language)
        if reason is None:
            kept.append(piece)
        else:
            dropped += 1
            log.debug("speech gate dropped %r at %.2f-%.2f s: %s", piece.text, piece.start, piece.end, reason)
    return Gated(kept, dropped)


def transcribe_gated(engine, audio: np.ndarray, options, speech: SpeechMap | None) -> Gated:
    """``engine.transcribe`` with the gate: only the speech regions are decoded (laid end to
    end, times mapped back exactly), and what still looks like non-speech is dropped.

    Without a speech map (the gate is off) this is ``engine.transcribe`` itself.
    """
    plan = plan_gate(audio, speech)
    pieces = engine.transcribe(plan.audio, options) if plan is not None else []
    return finish_gate(plan, pieces, options.language)


def drop_reason(piece, speech: SpeechMap, language: str | None) -> str | None:
    """Why the gate drops ``piece`` (times relative to its segment), or None to keep it."""
    if speech.overlap(piece.start, piece.end) <= 0.0:
        return "no speech under it"
    prob = speech.mean_prob(piece.start, piece.end)
    if prob < PHRASE_MAX_PROB and is_non_speech_phrase(piece.text, language):
        return f"a known non-speech phrase over speech probability {prob:.2f}"
    return None


def gate_segment(segment, options: VadOptions, keep_pauses: bool = False):
    """The pipeline's step: ``segment`` with its speech map, ``silent`` where there is no speech.

    The map is the one the segmenter attached (from the stream's :class:`SpeechTracker`);
    only a segment without one (cut without a tracker) is run through :func:`detect`.

    ``keep_pauses`` (the sequential mode) cuts only loud non-speech out of a segment and decodes
    quiet pauses as they are: there the previous text is the prompt, and one unsure word of a
    window with its pauses cut out ("ill-disposed" heard as "old-sposed") was copied into every
    later segment (four 10-min inputs: WER 0.072 with every pause cut, 0.055 ungated), while a
    window decoded whole through music lost its timestamps and words (mixed input: 0.041
    against 0.021 with the music cut out).
    """
    if not options.enabled or segment.silent:
        return segment
    speech = segment.speech
    if speech is None:
        try:
            speech = detect(segment.samples, options)
        except Exception:  # no onnxruntime, a broken model file: decode ungated rather than lose text
            log.warning("the speech gate failed on segment %d; decoding it whole", segment.index, exc_info=True)
            return segment
    if not speech.has_speech:
        log.debug("segment %d (%.1f-%.1f s): no speech, skipped", segment.index, segment.start, segment.end)
    return replace(segment, speech=replace(speech, keep_pauses=keep_pauses), silent=not speech.has_speech)


__all__ = [
    "NON_SPEECH_PHRASES",
    "SpeechMap",
    "SpeechTracker",
    "VadOptions",
    "detect",
    "gate_segment",
    "is_non_speech_phrase",
    "speech_tracker",
    "transcribe_gated",
]
