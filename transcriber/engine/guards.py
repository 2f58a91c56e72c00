"""whisper's hallucination guards, applied to an engine's pieces per segment: the no-speech
rule, decoding loops, empty pieces, the token budget and clamped times."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import replace

from transcriber.engine.base import Piece, TranscribeOptions

#: A word n-gram repeated back to back more often than this is a decoding loop, not speech.
MAX_NGRAM_REPEATS = 3
#: Identical pieces back to back more often than this are a loop (whisper's "Thank you." x 5).
MAX_PIECE_REPEATS = 2
#: A segment gets at most ``base + per_second * seconds`` new tokens. Fast speech is about 8
#: tokens a second (CJK included) plus timestamps; a decoding loop runs to whisper's limit of
#: 224 tokens per try, times six temperatures and five samples each, which on a CPU turns a
#: few seconds of hiss into minutes. The budget bounds that cost without cutting real speech.
MAX_TOKENS_BASE = 16
MAX_TOKENS_PER_SECOND = 12
#: faster-whisper rejects prompt + new tokens > 448; a prompt is at most 228 tokens.
MAX_TOKENS_CEILING = 220



def _word_key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def _collapse_loops(tokens: Sequence[str], max_repeats: int = MAX_NGRAM_REPEATS) -> list[int]:
    """Indices of ``tokens`` to keep once every run of more than ``max_repeats`` back-to-back
    copies of an n-gram (compared without case and punctuation) is cut to one copy."""
    keys = [_word_key(t) for t in tokens]
    keep: list[int] = []
    i = 0
    while i < len(keys):
        for n in range(1, len(keys[i:]) // (max_repeats + 1) + 1):
            gram = keys[i : i + n]
            copies = 1
            while keys[i + copies * n : i + (copies + 1) * n] == gram:
                copies += 1
            if copies > max_repeats and any(gram):
                keep.extend(range(i, i + n))
                i += copies * n
                break
        else:
            keep.append(i)
            i += 1
    return keep


def _without_loops(piece: Piece) -> Piece:
    tokens = piece.text.split()
    keep = _collapse_loops(tokens)
    if len(keep) == len(tokens):
        return piece
    words = piece.words
    if words is not None and len(words) == len(tokens):
        words = [words[i] for i in keep]
    # Keep the leading space whisper puts on every piece's text.
    lead = piece.text[: len(piece.text) - len(piece.text.lstrip())]
    return replace(piece, text=lead + " ".join(tokens[i] for i in keep), words=words)


def _clamped(piece: Piece, duration: float, floor: float) -> Piece:
    """Times inside [floor, duration]: the decoder may place an end past the audio it saw."""
    start = min(max(piece.start, floor, 0.0), duration)
    end = min(max(piece.end, start), duration)
    words = piece.words
    if words is not None:
        words = []
        for w in piece.words or ():
            w_start = min(max(w.start, start), end)
            words.append(replace(w, start=w_start, end=min(max(w.end, w_start), end)))
    return replace(piece, start=start, end=end, words=words)


def apply_guards(pieces: list[Piece], options: TranscribeOptions, duration: float) -> list[Piece]:
    """Drop what whisper's no-speech test rejects, cut decoding loops, clamp the times.

    - no speech: ``no_speech_prob > no_speech_threshold`` and ``avg_logprob <
      log_prob_threshold`` (whisper's rule for skipping a window);
    - no words: a piece that is empty or punctuation only (" ." is tiny.en's answer to noise);
    - repetition: an n-gram repeated back to back more than :data:`MAX_NGRAM_REPEATS` times
      becomes one copy; more than :data:`MAX_PIECE_REPEATS` identical pieces in a row become one;
    - timestamps: inside ``[0, duration]`` and monotonic.

    A high ``compression_ratio`` drops nothing, as in whisper: there it only asks for the next
    temperature, and the last try's text is kept. Dropping it lost real repeated speech (the
    same sentence twice in one window compresses past 2.4: JFK said twice came back empty in
    one run and whole in the next, as the sampled fallback went). Loops are cut by the
    repetition rules above and bounded by :func:`token_budget`; the ratio and ``avg_logprob``
    stay on each piece, so the sequential mode still sees the guard trip and drops its prompt.
    """
    cleaned: list[Piece] = []
    for piece in pieces:
        silent = (
            options.no_speech_threshold is not None
            and piece.no_speech_prob > options.no_speech_threshold
            and (options.log_prob_threshold is None or piece.avg_logprob < options.log_prob_threshold)
        )
        if silent:
            continue
        piece = _without_loops(piece)
        if re.search(r"\w", piece.text):  # else empty or punctuation only: noise, not words
            cleaned.append(piece)
    kept: list[Piece] = []
    for _key, group in itertools.groupby(cleaned, key=lambda p: _word_key(p.text)):
        run = list(group)
        for piece in run if len(run) <= MAX_PIECE_REPEATS else run[:1]:
            kept.append(_clamped(piece, duration, kept[-1].end if kept else 0.0))
    return kept


def token_budget(seconds: float) -> int:
    """The most tokens one decode of ``seconds`` of audio may produce (see MAX_TOKENS_BASE)."""
    return min(MAX_TOKENS_CEILING, MAX_TOKENS_BASE + int(MAX_TOKENS_PER_SECOND * seconds))
