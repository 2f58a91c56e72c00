"""Bench inputs: a deterministic long-form recording built from the real-speech fixtures.

The fixtures are short clips (1-11 s) with reference transcripts. Joined in a seeded order,
each at a seeded level and separated by seeded pauses (short sentence gaps, some longer breaks
with a faint noise floor), they make a long-form input with *real* speech and an exact
reference: the clips' references in the same order.

The wav is written clip by clip, so a 3-hour input never sits in memory. Inputs are cached
under ``bench/work/inputs/`` by a key of their parameters and the fixtures' bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transcriber import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data"
WORK = Path(__file__).resolve().parent / "work"

#: Bumped whenever the generator changes, so stale cached inputs are rebuilt.
GENERATOR_VERSION = 3
#: Default long-form length; the issue asks for at least 10 minutes of real speech.
DEFAULT_MINUTES = 10.0
DEFAULT_SEED = 20240601
#: Level of the noise floor in pauses (float amplitude, ~ -60 dBFS RMS): room tone, not silence.
NOISE_FLOOR = 0.001


@dataclass
class Clip:
    name: str
    path: Path
    text: str


@dataclass
class BenchInput:
    """A wav and its reference transcript (one utterance per line, when known)."""

    wav: Path
    reference: str
    duration_s: float
    #: How it was made (``minutes``, ``seed``, clip count...) or ``{"source": "file"}``.
    recipe: dict

    def describe(self) -> dict:
        return {
            "wav": str(self.wav),
            "duration_s": round(self.duration_s, 3),
            "reference_words": len(self.reference.split()),
            **self.recipe,
        }


def fixture_clips(data_dir: Path = FIXTURES) -> list[Clip]:
    """Every ``NAME.wav`` with a ``NAME.txt`` reference, sorted by name."""
    clips = []
    for wav in sorted(data_dir.glob("*.wav")):
        ref = wav.with_suffix(".txt")
        if ref.is_file():
            clips.append(Clip(wav.stem, wav, ref.read_text().strip()))
    if not clips:
        raise FileNotFoundError(f"no NAME.wav + NAME.txt fixtures in {data_dir}")
    return clips


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """A 16 kHz mono 16-bit wav as float32 in [-1, 1]."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def wav_duration(path: str | os.PathLike) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def _pause_seconds(rng: np.random.Generator) -> float:
    """Mostly sentence gaps, sometimes a breath between topics, rarely a long break."""
    kind = rng.random()
    if kind < 0.75:
        return float(rng.uniform(0.25, 1.2))
    if kind < 0.95:
        return float(rng.uniform(1.5, 4.0))
    return float(rng.uniform(6.0, 14.0))


def _cache_key(minutes: float, seed: int, clips: list[Clip]) -> str:
    h = hashlib.sha256(f"v{GENERATOR_VERSION}:{float(minutes)!r}:{seed}:{NOISE_FLOOR}".encode())
    for clip in clips:
        h.update(clip.name.encode())
        h.update(clip.path.read_bytes())
        h.update(clip.text.encode())
    return h.hexdigest()[:12]


def long_form(
    minutes: float = DEFAULT_MINUTES,
    seed: int = DEFAULT_SEED,
    work_dir: Path = WORK,
    data_dir: Path = FIXTURES,
) -> BenchInput:
    """The cached long-form input of at least ``minutes`` (built on first use).

    Rounds of all clips in a seeded order until the length is reached; each clip at a seeded
    gain in [0.4, 1.0] (speakers and recordings differ in level) and followed by a pause.
    """
    if minutes <= 0:
        raise ValueError("minutes must be positive")
    clips = fixture_clips(data_dir)
    key = _cache_key(minutes, seed, clips)
    stem = f"longform-{minutes:g}min-{key}"
    out_dir = work_dir / "inputs"
    wav_path, ref_path, meta_path = (out_dir / f"{stem}{ext}" for ext in (".wav", ".txt", ".json"))
    if wav_path.is_file() and ref_path.is_file() and meta_path.is_file():
        recipe = json.loads(meta_path.read_text())
        return BenchInput(wav_path, ref_path.read_text().strip(), recipe["duration_s"], recipe)

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    audio = {clip.name: read_wav(clip.path) for clip in clips}  # ~1.6 MB: the fixtures only
    target = int(minutes * 60 * SAMPLE_RATE)
    written, texts, count = 0, [], 0
    tmp = wav_path.with_suffix(".wav.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)

        def emit(samples: np.ndarray) -> None:
            nonlocal written
            w.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())
            written += len(samples)

        while written < target:
            for i in rng.permutation(len(clips)):
                clip = clips[i]
                emit(audio[clip.name] * float(rng.uniform(0.4, 1.0)))
                texts.append(clip.text)
                count += 1
                # The input ends on a short tail after the last clip, not on a long break.
                pause = 0.5 if written >= target else _pause_seconds(rng)
                emit(rng.normal(0.0, NOISE_FLOOR, int(pause * SAMPLE_RATE)).astype(np.float32))
                if written >= target:
                    break
    recipe = {
        "source": "fixtures",
        "minutes": minutes,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "clips": count,
        "distinct_clips": len(clips),
        "duration_s": written / SAMPLE_RATE,
    }
    # One clip per line: the WER normaliser reads lines apart, so "five five" at the end of
    # one clip and "ten of clubs" at the start of the next do not merge into "5510".
    ref_path.write_text("\n".join(texts) + "\n")
    meta_path.write_text(json.dumps(recipe, indent=2) + "\n")
    tmp.replace(wav_path)  # last: a crash midway leaves no half-written cache hit
    return BenchInput(wav_path, "\n".join(texts), recipe["duration_s"], recipe)


def from_file(wav: str | os.PathLike, ref: str | os.PathLike) -> BenchInput:
    """A user-given input; any format ffmpeg reads for streamscribe, but the whole-file peers
    read 16 kHz mono 16-bit wav (convert with ``ffmpeg -i IN -ar 16000 -ac 1 OUT.wav``)."""
    wav, ref = Path(wav), Path(ref)
    return BenchInput(
        wav, ref.read_text().strip(), wav_duration(wav), {"source": "file", "ref": str(ref)}
    )


__all__ = ["BenchInput", "Clip", "fixture_clips", "from_file", "long_form", "read_wav"]
