"""Whisper engines behind one protocol: faster-whisper (CTranslate2) and openai-whisper (PyTorch).

INTERFACE SKELETON — filled in by the engine work (issue 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

ENGINES = ("faster-whisper", "openai-whisper")


@dataclass(frozen=True)
class EngineConfig:
    """Which weights to load and how; hashable so workers can cache loaded engines by it."""

    #: ``faster-whisper`` | ``openai-whisper``.
    engine: str = "faster-whisper"
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
    #: ``transcribe`` | ``translate``.
    task: str = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    #: Text given to the decoder as previous context (sequential mode).
    initial_prompt: str | None = None
    # Hallucination guards, whisper's defaults.
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4


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


def load_engine(config: EngineConfig) -> Engine:
    """Load the model once; callers keep the engine for many segments."""
    raise NotImplementedError

