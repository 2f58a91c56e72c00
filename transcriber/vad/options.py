"""The speech gate's options (:class:`VadOptions`), each documented where it is defined."""

from __future__ import annotations

from dataclasses import dataclass


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
