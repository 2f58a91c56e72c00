"""Several segments through one encoder pass and one batched decode (:func:`transcribe_batch`),
with whisper's per-segment temperature fallback for those that fail its thresholds."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import replace

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
from transcriber.engine.guards import _collapse_loops, _word_key, apply_guards

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
        # One piece from its opening timestamp (a continuation opens where the decoder had
        # stopped) to its last later timestamp, or to the end of the audio without one.
        start = (tokens[0] - timestamp_begin) * TIME_PRECISION if tokens and is_time[0] else 0.0
        later = [t for t in tokens[1:] if t >= timestamp_begin]
        end = seconds
        if later and (later[-1] - timestamp_begin) * TIME_PRECISION > start:
            end = (later[-1] - timestamp_begin) * TIME_PRECISION
        return ([(start, end, tokens)] if tokens else []), None
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


def scored(piece: Piece, decode: BatchDecode) -> Piece:
    """``piece`` with its window's scores, as whisper gives every segment of a window: what the
    no-speech rule in :func:`apply_guards` reads (left at the defaults, no batched piece was
    ever silence, whatever the window's no_speech_prob)."""
    return replace(
        piece,
        avg_logprob=decode.avg_logprob,
        no_speech_prob=decode.no_speech_prob,
        compression_ratio=decode.compression_ratio,
    )


def transcribe_batch(engine: Engine, audios: Sequence[np.ndarray], options: TranscribeOptions) -> list[Transcribed]:
    """Several segments through one encoder pass and one batched decode; one result each.

    - digital silence gets no pieces and slivers (< :data:`MIN_BATCH_SECONDS`) go alone, as
      does a batch of one: :meth:`Engine.transcribe`, today's per-segment path, exactly; so
      does audio over one 30 s window (a batch decodes one window each and would lose the
      rest; the segmenter never plans one, this is the safety net);
    - the others are decoded together at the first temperature, with timestamp tokens; where
      the decoder stopped short of a segment's end (whisper would seek on), the faster-whisper
      engine decodes the rest on the encoder output it has (a continuation, checked by
      :func:`continuation_fails`); what is still left (openai-whisper, a failed continuation)
      is decoded in a next, smaller batch, as whisper's next window;
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
                pieces[i] += [shifted(scored(p, decode), offsets[i]) for p in decode.pieces]
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


#: A continuation with more words than this many per second of its audio (plus one) is not
#: what was said there: fast read speech is about 3 words a second.
MAX_WORDS_PER_SECOND = 4.0
#: Its last time may pass the end of its audio by this much (the decoder rounds up).
END_SLACK_SECONDS = 5.0
#: A sentence of at least this many words that the segment already said earlier is a repeat
#: of the window's start, not the rest of the audio.
MIN_REPEATED_WORDS = 3


def _words(text: str) -> list[str]:
    return [w for w in map(_word_key, text.split()) if w]


def continuation_fails(before: BatchDecode, tail: BatchDecode, seconds: float, options: TranscribeOptions) -> str | None:
    """Why the decode of a window's rest on the same encoder output cannot be kept (None: keep).

    ``before`` is what the window's first decode said, ``tail`` the continuation from
    ``before.resume_at`` to ``seconds``. The checks, each measured on the 10-minute bench input
    (bench/NOTES.md): whisper's thresholds on the continuation alone; no more words than the
    remaining audio can hold; times inside it; no decoding loop; no sentence of the window's
    start said again.
    """
    rest = seconds - (before.resume_at or 0.0)
    text = " ".join(p.text for p in tail.pieces)
    said = _words(text)
    if not said:
        return "empty"
    ratio, floor = options.compression_ratio_threshold, options.log_prob_threshold
    if ratio is not None and tail.compression_ratio > ratio:
        return "compression"
    if floor is not None and tail.avg_logprob < floor:
        return "logprob"
    if len(said) > MAX_WORDS_PER_SECOND * rest + 1:
        return "too many words"
    if any(p.end > seconds + END_SLACK_SECONDS or p.start < (before.resume_at or 0.0) for p in tail.pieces):
        return "times"
    if len(_collapse_loops(said, 2)) < len(said):
        return "loop"
    earlier = " " + " ".join(_words(" ".join(p.text for p in before.pieces))) + " "
    for sentence in re.split(r"[.?!]", text):
        words = _words(sentence)
        if len(words) >= MIN_REPEATED_WORDS and " " + " ".join(words) + " " in earlier:
            return "repeat"
    return None
