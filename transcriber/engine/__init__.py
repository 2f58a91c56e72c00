"""Whisper engines behind one protocol: faster-whisper (CTranslate2) and openai-whisper (PyTorch).

An engine takes the 16 kHz mono float32 samples of *one segment* and returns its pieces with
times relative to that segment. Every call is independent: the segmenter already cut at
silences, so there is no previous text to condition on (``condition_on_previous_text`` is
off) and no voice-activity filter inside a segment. A caller that wants context (the
sequential mapper) passes it as ``initial_prompt``.

Loading a model costs seconds; transcribing a segment costs less. :func:`get_engine` keeps
loaded engines per process so each worker loads its model once, not once per segment.

One module per job:

- :mod:`~transcriber.engine.base`: options, configs, pieces and the :class:`Engine` protocol;
- :mod:`~transcriber.engine.guards`: whisper's hallucination guards, per segment;
- :mod:`~transcriber.engine.batch`: several segments in one encoder pass and one decode;
- :mod:`~transcriber.engine.models`: which weights, on which device;
- :mod:`~transcriber.engine.faster` and :mod:`~transcriber.engine.pytorch`: the two engines;
- :mod:`~transcriber.engine.cache`: one loaded engine per config and process.
"""

from transcriber import DEFAULT_BATCH_SIZE
from transcriber.engine.base import (
    BEST_OF,
    BUNDLED_MODEL,
    ENGINES,
    TEMPERATURES,
    BatchDecode,
    Engine,
    EngineConfig,
    EngineError,
    ModelNotFound,
    Piece,
    Transcribed,
    TranscribeOptions,
    UnknownEngine,
    Word,
)
from transcriber.engine.batch import (
    compression_ratio,
    continuation_fails,
    needs_fallback,
    transcribe_batch,
)
from transcriber.engine.cache import EngineCache, engine_cache, get_engine, load_engine
from transcriber.engine.faster import FasterWhisperEngine
from transcriber.engine.guards import apply_guards, token_budget
from transcriber.engine.models import resolve_device, resolve_model
from transcriber.engine.pytorch import OpenAIWhisperEngine

__all__ = [
    "BEST_OF",
    "BUNDLED_MODEL",
    "DEFAULT_BATCH_SIZE",
    "ENGINES",
    "TEMPERATURES",
    "BatchDecode",
    "Engine",
    "EngineCache",
    "EngineConfig",
    "EngineError",
    "FasterWhisperEngine",
    "ModelNotFound",
    "OpenAIWhisperEngine",
    "Piece",
    "TranscribeOptions",
    "Transcribed",
    "UnknownEngine",
    "Word",
    "apply_guards",
    "compression_ratio",
    "continuation_fails",
    "engine_cache",
    "get_engine",
    "load_engine",
    "needs_fallback",
    "resolve_device",
    "resolve_model",
    "token_budget",
    "transcribe_batch",
]
