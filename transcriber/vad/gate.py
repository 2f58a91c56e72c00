"""Gating (the shared per-job step): decode only a segment's speech regions, map the times
back, and drop what still looks like non-speech."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.engine.base import shifted
from transcriber.segment import QUIET_GAP_DB, level_db
from transcriber.vad.detection import detect
from transcriber.vad.options import VadOptions
from transcriber.vad.phrases import is_non_speech_phrase
from transcriber.vad.silero import FRAME_SECONDS
from transcriber.vad.speech_map import SpeechMap

log = logging.getLogger(__name__)

#: Speech the decoder left without text is decoded again where the VAD scores at least this
#: many seconds of it at :data:`CLEAR_SPEECH_PROB` or more, beyond :data:`SKIP_MARGIN_SECONDS`
#: after the last piece (see :func:`skipped_at`).
SKIPPED_SPEECH_SECONDS = 1.0
SKIP_MARGIN_SECONDS = 1.0
#: Silero's customary threshold: clearly speech, not a soft onset or a breath.
CLEAR_SPEECH_PROB = 0.5

#: The last guard drops a known non-speech phrase only where the mean speech probability under
#: the piece is below this (speech scores 0.5-0.9 on average over a clip, noise under 0.02).
PHRASE_MAX_PROB = 0.3


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
        return level_db(audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]) < QUIET_GAP_DB

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


def skipped_at(plan: GatePlan, pieces: list) -> float | None:
    """Where in ``plan.audio`` (seconds) speech starts that the decoder left without text, or None.

    Whisper's loop takes the rest of a window for silence when its decoder ends on a single
    timestamp, and skips it: a whole sentence after the last piece was lost that way (the
    mixed input in sequential mode: "And Mr. John Dashwood..." after JFK, in one window of
    five arrangements). The VAD knows better: at least :data:`SKIPPED_SPEECH_SECONDS` of
    frames it scores as clear speech, more than :data:`SKIP_MARGIN_SECONDS` after the last
    piece's end (that end is rounded, and a word's tail scores as speech), is such a rest.
    """
    speech = plan.speech
    if speech is None or not len(speech.probs):
        return None
    end = max((p.end for p in pieces), default=0.0)
    times = np.arange(end + SKIP_MARGIN_SECONDS, len(plan.audio) / SAMPLE_RATE, FRAME_SECONDS)
    if len(times) * FRAME_SECONDS < SKIPPED_SPEECH_SECONDS:
        return None
    times_in_segment = times if plan.to_segment is None else plan.to_segment.map_times(times, is_end=False)
    frames = np.clip(((times_in_segment - speech.offset) / FRAME_SECONDS).astype(int), 0, len(speech.probs) - 1)
    clear = speech.probs[frames] >= CLEAR_SPEECH_PROB * 255
    if clear.sum() * FRAME_SECONDS < SKIPPED_SPEECH_SECONDS:
        return None
    return max(end, float(times[int(np.argmax(clear))]) - SKIP_MARGIN_SECONDS)


def with_skipped(engine, plan: GatePlan | None, pieces: list, options) -> list:
    """``pieces`` of ``plan.audio`` and, where the decoder skipped speech after them
    (:func:`skipped_at`), that rest decoded on its own (once) and shifted into place."""
    rest = None if plan is None else skipped_at(plan, pieces)
    if plan is None or rest is None:
        return pieces
    more = engine.transcribe(plan.audio[int(rest * SAMPLE_RATE) :], options)
    log.debug("speech after %.2f s of %.2f s had no text; decoded again: %r", rest,
              len(plan.audio) / SAMPLE_RATE, [p.text for p in more])
    return pieces + [shifted(p, rest) for p in more]


def transcribe_gated(engine, audio: np.ndarray, options, speech: SpeechMap | None) -> Gated:
    """``engine.transcribe`` with the gate: only the speech regions are decoded (laid end to
    end, times mapped back exactly), speech the decoder skipped is decoded again
    (:func:`with_skipped`), and what still looks like non-speech is dropped.

    Without a speech map (the gate is off) this is ``engine.transcribe`` itself.
    """
    plan = plan_gate(audio, speech)
    pieces = engine.transcribe(plan.audio, options) if plan is not None else []
    return finish_gate(plan, with_skipped(engine, plan, pieces, options), options.language)


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
