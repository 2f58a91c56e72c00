"""The mixed input: speech between blocks of music, noise and hum (issue 16).

Built by the same recipe as the VAD tests (``tests/helpers/mixed.py``, ``BENCH_RECIPE``: about
170 s, real speech clips between 12-25 s blocks of a chord progression with a beat, pink noise,
50 Hz hum with clicks and speech-band noise). Each system is scored on two figures:

- ``wer`` against the clips' references;
- ``words_in_non_speech``: words of the pieces (streamscribe's pieces, a peer's segments) that
  lie mostly inside a non-speech block, which is where Whisper invents "Thank you." or "♪".

The goal: zero words in non-speech, and a WER no worse than whole-file faster-whisper + 0.005.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.inputs import WORK, BenchInput
from tests.helpers import mixed

#: Systems run on the mixed input when they are among the chosen ones (the analysis-only peer
#: adds nothing here that the table needs). The batched peer is here for its VAD: the issue saw
#: it drop words of speech on this kind of input.
MIXED_SYSTEMS = (
    "streamscribe",
    "faster-whisper-batched",
    "faster-whisper",
    "openai-whisper",
    "streamscribe-sequential",
)
#: The goal's allowance over whole-file faster-whisper's WER.
WER_MARGIN = 0.005


def mixed_input(work_dir: Path = WORK) -> tuple[BenchInput, list[tuple[float, float, str]]]:
    """The mixed wav (rebuilt when missing; the recipe is deterministic) and its blocks."""
    built = mixed.build_mixed(mixed.BENCH_RECIPE)
    out = work_dir / "inputs"
    out.mkdir(parents=True, exist_ok=True)
    wav = built.write(out / "mixed-speech-nonspeech.wav")
    (out / "mixed-speech-nonspeech.json").write_text(
        json.dumps({"blocks": built.blocks, "clips": built.clips}, indent=1) + "\n"
    )
    recipe = {"source": "mixed", "recipe": "tests/helpers/mixed.py BENCH_RECIPE", "duration_s": built.duration}
    return BenchInput(wav, built.reference, built.duration, recipe), built.blocks


def score(record: dict, pieces: list[dict], blocks: list[tuple[float, float, str]]) -> dict:
    """``record`` (a run's) with the words it put inside non-speech, and which."""
    inside = mixed.words_inside(pieces, blocks)
    return {**record, "words_in_non_speech": mixed.count_words(inside), "non_speech_text": inside}


def goals(systems: dict[str, dict]) -> dict:
    """Zero words in non-speech and WER ≤ whole-file faster-whisper + WER_MARGIN, per system."""
    peer = (systems.get("faster-whisper") or {}).get("wer")
    out = {}
    for name, record in systems.items():
        if name.startswith("streamscribe") and record.get("wer") is not None:
            out[name] = {
                "zero_words_in_non_speech": record["words_in_non_speech"] == 0,
                "wer_within_margin": None if peer is None else record["wer"] <= peer + WER_MARGIN,
            }
    return out


def markdown(section: dict) -> str:
    """The mixed input's table, appended to RESULTS.md."""
    if not section:
        return ""
    lines = [
        "",
        f"## Mixed speech and non-speech ({section['input']['duration_s']:.0f} s, {len(section['blocks'])} "
        "non-speech blocks)",
        "",
        "| system | WER | words in non-speech | wall s |",
        "|---|---|---|---|",
    ]
    for name, r in section["systems"].items():
        lines.append(f"| {name} | {r['wer']:.3f} | {r['words_in_non_speech']} | {r['wall_s']:.1f} |")
    for name, goal in section.get("goals", {}).items():
        lines.append(f"\n{name}: zero words in non-speech {_mark(goal['zero_words_in_non_speech'])}, "
                     f"WER ≤ faster-whisper + {WER_MARGIN} {_mark(goal['wer_within_margin'])}")
    return "\n".join(lines) + "\n"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")
