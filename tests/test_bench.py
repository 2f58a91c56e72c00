"""The benchmark end to end on a ~30-second input: real systems, real weights, real speech.

Speed is never asserted here (that is what ``make bench`` reports); the test checks that every
system ran, that each figure is a measured positive number, that the transcripts are real
(WER against the fixtures' references), and the shape of ``results.json``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from bench.inputs import fixture_clips, long_form, read_wav
from bench.report import default_goals, word_error_rate
from bench.systems import default_systems
from bench.whole_file import _Emitter, _VerboseTap

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_FIGURES = ("wall_s", "first_segment_s", "peak_rss_mb", "wer")


def test_long_form_is_deterministic_real_speech(tmp_path: Path) -> None:
    a = long_form(0.5, seed=7, work_dir=tmp_path / "a")
    b = long_form(0.5, seed=7, work_dir=tmp_path / "b")
    c = long_form(0.5, seed=8, work_dir=tmp_path / "c")
    assert a.wav.read_bytes() == b.wav.read_bytes() and a.reference == b.reference
    assert a.wav.read_bytes() != c.wav.read_bytes()
    assert a.duration_s >= 30
    with wave.open(str(a.wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
    # The reference is the clips' references in order: every word comes from a fixture.
    fixture_words = {w for clip in fixture_clips() for w in clip.text.lower().split()}
    assert set(a.reference.lower().split()) <= fixture_words
    # Pauses between clips are quiet but not digital silence (a noise floor).
    audio = read_wav(a.wav)
    assert 0 < float(abs(audio[-4000:]).max()) < 0.02
    # A second call is a cache hit: same file, not rewritten.
    mtime = a.wav.stat().st_mtime_ns
    assert long_form(0.5, seed=7, work_dir=tmp_path / "a").wav.stat().st_mtime_ns == mtime


def test_verbose_tap_turns_whisper_prints_into_segments(capsys: pytest.CaptureFixture) -> None:
    emitter = _Emitter(sys.stdout)
    tap = _VerboseTap(emitter)
    tap.write("[00:00.000 --> 00:07.740]  And so my fellow Americans")
    tap.write("\n[01:02:03.500 --> 01:02:05.000]  ask not\nnot a segment\n")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["index"], e["start"], e["end"], e["text"]) for e in events] == [
        (0, 0.0, 7.74, "And so my fellow Americans"),
        (1, 3723.5, 3725.0, "ask not"),
    ]


def test_wer_uses_whisper_normaliser() -> None:
    assert word_error_rate("Ten of clubs.", "10 of Clubs") == 0.0
    assert word_error_rate("ask not what your country", "ask what your country") == 0.2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke_30_seconds(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--minutes", "0.5", "--beam-size", "1",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())

    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["date"]
    assert len(machine["loadavg_start"]) == 3 and len(machine["loadavg_end"]) == 3
    assert results["config"]["beam_size"] == 1
    assert results["input"]["duration_s"] >= 30

    assert list(results["systems"]) == list(default_systems())
    for name, run in results["systems"].items():
        for figure in SYSTEM_FIGURES:
            value = run[figure]
            assert isinstance(value, int | float) and math.isfinite(value), (name, figure, value)
            assert value >= 0 if figure == "wer" else value > 0, (name, figure, value)
        assert run["first_segment_s"] <= run["wall_s"], name
        assert run["segments"] >= 1 and not run["stopped_early"]
        # Real transcripts of real speech: tiny.en gets most words right.
        assert run["wer"] < 0.3, (name, run["wer"])
    assert results["systems"]["streamscribe"]["peak_processes"] >= 2  # CLI + pool workers

    assert results["long"] == {"ttfs_60min": None, "rss_3h": None}
    goals = {goal.key: goal for goal in default_goals()}
    assert set(results["ratios"]) == set(goals)
    for key, ratio in results["ratios"].items():
        assert ratio["goal"] == goals[key].goal
        if goals[key].needs_long:
            assert ratio["value"] is None and ratio["met"] is None
        else:
            assert isinstance(ratio["value"], float) and math.isfinite(ratio["value"])
            assert ratio["met"] is (ratio["value"] <= ratio["goal"])

    table = (tmp_path / "RESULTS.md").read_text()
    for name in results["systems"]:
        assert f"| {name} |" in table
    assert table in proc.stdout

    # The chart RESULTS.md embeds, and the figures behind it.
    svg = (tmp_path / "results.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "](results.svg)" in table
    streamscribe = results["systems"]["streamscribe"]
    assert len(streamscribe["arrivals"]) == streamscribe["segments"]
    assert streamscribe["arrivals"] == sorted(streamscribe["arrivals"])
    assert streamscribe["arrivals"][0] == streamscribe["first_segment_s"]
    done = streamscribe["child_done"]
    assert sum(done["batch_sizes"].values()) >= 1 and done["redecoded_segments"] >= 0
    assert "| streamscribe | batch " in table


def test_the_mixed_input_counts_words_inside_non_speech(tmp_path: Path) -> None:
    """The mixed input is the tests' recipe at bench size, and only a piece lying inside a
    block counts: a real sentence whose times stretch over one does not."""
    from bench import mixed

    wav_input, blocks = mixed.mixed_input(tmp_path)
    assert wav_input.wav.is_file() and 160 < wav_input.duration_s < 180
    assert len(wav_input.reference.split()) == 147 and len(blocks) == 6
    music_start, music_end, kind = blocks[2]
    assert kind == "chords" and music_end - music_start == pytest.approx(25.0)
    pieces = [
        {"start": music_start + 3, "end": music_start + 5, "text": " Thank you."},  # inside
        {"start": music_start - 8, "end": music_end + 1, "text": " Real words spanning it."},
    ]
    scored = mixed.score({"wer": 0.03}, pieces, blocks)
    assert scored["words_in_non_speech"] == 2 and scored["non_speech_text"] == ["Thank you."]
    goals = mixed.goals({"faster-whisper": {"wer": 0.03, "words_in_non_speech": 0}, "streamscribe": scored})
    assert goals["streamscribe"] == {"zero_words_in_non_speech": False, "wer_within_margin": True}
    section = {"input": wav_input.describe(), "blocks": blocks, "systems": {"streamscribe": scored}, "goals": goals}
    assert "| streamscribe | 0.030 | 2 |" in mixed.markdown({**section, "systems": {"streamscribe": {**scored, "wall_s": 1.0}}})


def test_the_mixed_arrangements_keep_every_clip_and_block_and_pool_their_words(tmp_path: Path) -> None:
    """Each rearrangement of the mixed input has the bench input's clips and blocks in other
    places (no clip next to itself), and the pooled WER counts every word of every one."""
    from bench import mixed
    from bench.report import pooled_word_error_rate, word_error_rate
    from tests.helpers.mixed import BENCH_RECIPE, is_block, rearranged

    def groups(recipe):
        return [step for step in recipe if not is_block(step)]

    assert rearranged(BENCH_RECIPE, 0) == BENCH_RECIPE
    first, _ = mixed.mixed_input(tmp_path)
    for k in range(1, mixed.ARRANGEMENTS):
        recipe = rearranged(BENCH_RECIPE, k)
        assert groups(recipe) != groups(BENCH_RECIPE)
        assert sorted(groups(recipe)) == sorted(groups(BENCH_RECIPE))
        assert [s for s in recipe if s not in groups(recipe)] == [s for s in BENCH_RECIPE if s not in groups(BENCH_RECIPE)]
        assert not any(set(a) & set(b) for a, b in zip(groups(recipe), groups(recipe)[1:], strict=False))
        other, blocks = mixed.mixed_input(tmp_path, arrangement=k)
        assert sorted(other.reference.split()) == sorted(first.reference.split()) and len(blocks) == 6
    # 3 errors in the first of two equal-length references, none in the second: 3 / (2 n).
    words = first.reference.split()
    wrong = " ".join(["x", "y", "z", *words[3:]])
    assert word_error_rate(first.reference, wrong) > 0
    pooled = pooled_word_error_rate([(first.reference, wrong), (first.reference, first.reference)])
    assert pooled == pytest.approx(word_error_rate(first.reference, wrong) / 2)
    one_wer = word_error_rate(first.reference, wrong)
    record = mixed.pooled([(first.reference, wrong, one_wer, 2), (first.reference, first.reference, 0.0, 0)])
    assert record["wer"] == pytest.approx(pooled, abs=1e-4)
    assert record["words_in_non_speech"] == 2 and record["wers"] == [round(one_wer, 4), 0.0]
    goals = mixed.goals(
        {"faster-whisper": {"wer": 0.03, "words_in_non_speech": 0}, "streamscribe": {"wer": 0.05, "words_in_non_speech": 0}},
        {"faster-whisper": {"wer": 0.06}, "streamscribe": {"wer": 0.05}},
    )
    assert goals["streamscribe"] == {
        "zero_words_in_non_speech": True, "wer_within_margin": False, "pooled_wer_within_margin": True
    }
