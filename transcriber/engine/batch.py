"""Several segments through one encoder pass and one batched decode (:func:`transcribe_batch`),
with whisper's per-segment temperature fallback for those that fail its thresholds."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.engine.base import (
    MIN_BATCH_SECONDS,
    TIME_PRECISION,
    BatchDecode,
    Engine,
    Piece,
    Transcribed,
    TranscribeOptions,
    as_samples,
    is_digital_silence,
    shifted,
)
from transcriber.engine.guards import apply_guards

#: Whisper's window: a batch element longer than this would be trimmed to it.
WINDOW_SECONDS = 30


def compression_ratio(text: str) -> float:
    """whisper's repetition measure: bytes of the text over bytes of its zlib stream."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 1.0


def needs_fallback(decode: BatchDecode, options: TranscribeOptions) -> bool:
    """whisper's test for trying the next temperature: too repetitive, or too unsure unless the
    window is no speech (then an unsure decode is expected and gets dropped by the guards)."""
    if not decode.pieces:
        return False
    ratio = options.compression_ratio_threshold
    floor = options.log_prob_threshold
    if ratio is not None and decode.compression_ratio > ratio:
        return True
    if floor is None or decode.avg_logprob >= floor:
        return False
    quiet = options.no_speech_threshold is not None and decode.no_speech_prob > options.no_speech_threshold
    return not quiet


def split_by_timestamps(
    tokens: Sequence[int], timestamp_begin: int, seconds: float
) -> tuple[list[tuple[float, float, list[int]]], float | None]:
    """whisper's cut of one window's tokens into ``(start, end, tokens)`` pieces at timestamp
    pairs, and where whisper would decode the next window from (None: the window is done).

    As in whisper's own loop, an unfinished last piece (text after the last pair, with no
    single closing timestamp) is not kept: the next window starts at the last timestamp and
    decodes it again. With no pair at all the window is one piece and done.
    """
    tokens = list(tokens)
    is_time = [t >= timestamp_begin for t in tokens]
    single_ending = is_time[-2:] == [False, True]
    cuts = [i for i in range(1, len(tokens)) if is_time[i] and is_time[i - 1]]
    if not cuts:
        times = [t for t in tokens if t >= timestamp_begin]
        end = seconds
        if times and times[-1] != timestamp_begin:
            end = (times[-1] - timestamp_begin) * TIME_PRECISION
        return ([(0.0, end, tokens)] if tokens else []), None
    if single_ending:
        cuts.append(len(tokens))
    pieces, last = [], 0
    for cut in cuts:
        part = tokens[last:cut]
        start = (part[0] - timestamp_begin) * TIME_PRECISION
        end = (part[-1] - timestamp_begin) * TIME_PRECISION
        pieces.append((start, end, part))
        last = cut
    resume = None if single_ending else (tokens[last - 1] - timestamp_begin) * TIME_PRECISION
    return pieces, resume


def transcribe_batch(engine: Engine, audios: Sequence[np.ndarray], options: TranscribeOptions) -> list[Transcribed]:
    """Several segments through one encoder pass and one batched decode; one result each.

    - digital silence gets no pieces and slivers (< :data:`MIN_BATCH_SECONDS`) go alone, as
      does a batch of one: :meth:`Engine.transcribe`, today's per-segment path, exactly; so
      does audio over one 30 s window (a batch decodes one window each and would lose the
      rest; the segmenter never plans one, this is the safety net);
    - the others are decoded together at the first temperature, with timestamp tokens; where
      the decoder stopped short of a segment's end (whisper would seek on), the rest of those
      segments is decoded in a next, smaller batch, as whisper's next window;
    - an element that fails whisper's thresholds (:func:`needs_fallback`) is decoded again
      alone with the full temperature fallback (``redecoded``); its batch-mates keep theirs;
    - the no-speech rule and the hallucination guards (:func:`apply_guards`) apply per segment.
    """
    audios = [as_samples(a) for a in audios]
    results: list[Transcribed | None] = [None] * len(audios)
    together = []
    for i, audio in enumerate(audios):
        if is_digital_silence(audio):
            results[i] = Transcribed([])
        elif MIN_BATCH_SECONDS * SAMPLE_RATE <= len(audio) <= WINDOW_SECONDS * SAMPLE_RATE:
            together.append(i)
    if len(together) > 1:
        fallback = len(options.temperatures) > 1
        pieces: dict[int, list[Piece]] = {i: [] for i in together}
        offsets = dict.fromkeys(together, 0.0)
        pending, failed = list(together), set()
        while pending:
            chunks = [audios[i][int(offsets[i] * SAMPLE_RATE) :] for i in pending]
            decodes = engine.decode_batch(chunks, options)
            still = []
            for i, chunk, decode in zip(pending, chunks, decodes, strict=True):
                if fallback and needs_fallback(decode, options):
                    failed.add(i)  # decoded alone below
                    continue
                pieces[i] += [shifted(p, offsets[i]) for p in decode.pieces]
                rest = len(chunk) / SAMPLE_RATE - (decode.resume_at or 0.0)
                if decode.resume_at and rest >= MIN_BATCH_SECONDS and not is_digital_silence(
                    chunk[int(decode.resume_at * SAMPLE_RATE) :]
                ):
                    offsets[i] += decode.resume_at
                    still.append(i)
            pending = still
        for i in together:
            if i not in failed:
                results[i] = Transcribed(apply_guards(pieces[i], options, len(audios[i]) / SAMPLE_RATE))
    for i, audio in enumerate(audios):
        if results[i] is None:
            results[i] = Transcribed(engine.transcribe(audio, options), redecoded=len(together) > 1 and i in together)
    return results  # type: ignore[return-value]
