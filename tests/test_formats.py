"""Transcript documents: order, monotonic times across segment boundaries, SRT/VTT round trip.

The segments here are event values (plain data), as the pipeline emits them; the pipeline tests
run the same writers on real transcriptions.
"""

from __future__ import annotations

import json

import pytest

from transcriber import formats
from transcriber.events import Done, Meta, Progress, SegmentDone, to_dict
from transcriber.subtitles import SubtitleOptions


def piece(start: float, end: float, text: str) -> dict:
    return {"start": start, "end": end, "text": text}


def segments() -> list[SegmentDone]:
    """Three segments arriving out of order, one silent, one without pieces."""
    return [
        SegmentDone(2, 3661.0, 3700.5, "Third part.", pieces=[]),
        SegmentDone(
            0,
            0.0,
            12.25,
            "And so, my fellow Americans, ask not.",
            pieces=[piece(0.0, 7.5, " And so, my fellow Americans,"), piece(7.5, 12.25, " ask not.")],
        ),
        SegmentDone(1, 12.25, 3661.0, "", silent=True),
        # A piece that overshoots its segment's end and one that starts before the previous
        # cue's end (engines pad windows): both must be clamped.
        SegmentDone(
            3,
            3700.5,
            3710.0,
            "Tail one. Tail two.",
            pieces=[piece(3699.0, 3705.0, " Tail one."), piece(3704.0, 3712.0, " Tail two.")],
        ),
    ]


def test_assemble_orders_by_index_and_accepts_dicts() -> None:
    events = [Meta("id", "t", 1.0, "faster-whisper", "tiny.en"), *segments()]
    events.append(Progress(4, 4, 10.0, 10.0, 0.0, 4, True))
    as_dicts = [to_dict(e) for e in events] + [to_dict(Done(1.0, 0.5, 10.0, 0.1, 4))]
    assert [s.index for s in formats.assemble(events)] == [0, 1, 2, 3]
    assert formats.assemble(as_dicts) == formats.assemble(events)
    # A re-sent index (a resumed job) replaces the earlier one instead of duplicating it.
    again = SegmentDone(0, 0.0, 12.25, "Replaced.")
    assert formats.assemble([*events, again])[0].text == "Replaced."


def test_cues_are_monotonic_and_clamped() -> None:
    cues = formats.cues(segments())
    assert [c.text for c in cues] == [
        "And so, my fellow Americans,",
        "ask not.",
        "Third part.",
        "Tail one.",
        "Tail two.",
    ]
    for prev, cue in zip(cues, cues[1:], strict=False):
        assert prev.start <= prev.end <= cue.start <= cue.end
    assert cues[3].start == 3700.5  # clamped to its segment's start
    assert cues[4].end == 3710.0  # clamped to its segment's end


def test_timestamp_formats() -> None:
    assert formats.timestamp(0) == "00:00:00.000"
    assert formats.timestamp(3661.0006, ",") == "01:01:01,001"
    assert formats.timestamp(59.9996) == "00:01:00.000"  # rounding carries into the minute
    assert formats.timestamp(100 * 3600 + 1.5) == "100:00:01.500"


UNSHAPED = SubtitleOptions(max_line_width=0)


@pytest.mark.parametrize("shaping", [None, UNSHAPED], ids=["shaped", "unshaped"])
@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_caption_round_trip(fmt: str, shaping: SubtitleOptions | None) -> None:
    doc = formats.write(fmt, segments(), subtitle_options=shaping)
    parsed = formats.parse_srt(doc) if fmt == "srt" else formats.parse_vtt(doc)
    expected = formats.subtitle_cues(segments(), shaping)
    if shaping is UNSHAPED:
        assert expected == formats.cues(segments())
    # The parsers join a cue's lines with a space.
    assert [c.text for c in parsed] == [c.text.replace("\n", " ") for c in expected]
    for got, want in zip(parsed, expected, strict=True):
        assert got.start == pytest.approx(want.start, abs=5e-4)
        assert got.end == pytest.approx(want.end, abs=5e-4)


def test_srt_and_vtt_layout() -> None:
    srt = formats.write_srt(segments(), UNSHAPED)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:07,500\nAnd so, my fellow Americans,\n\n2\n")
    assert "01:01:01,000 --> 01:01:40,500\nThird part." in srt
    vtt = formats.write_vtt(segments(), UNSHAPED)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:07.500\n")
    # Shaped (the default), a 39 s segment without pieces becomes cues of at most 7 s.
    shaped = formats.parse_srt(formats.write_srt(segments()))
    third = [c for c in shaped if 3661.0 <= c.start < 3700.5]
    assert " ".join(c.text for c in third) == "Third part."
    assert all(c.end - c.start <= 7 for c in third)
    with pytest.raises(ValueError, match="WEBVTT"):
        formats.parse_vtt(srt)


def test_caption_text_is_escaped() -> None:
    tricky = [SegmentDone(0, 0.0, 2.0, "a --> b <i> & c")]
    vtt = formats.write_vtt(tricky)
    assert "a -> b &lt;i> &amp; c" in vtt
    assert formats.parse_vtt(vtt)[0].text == "a -> b <i> & c"
    assert formats.parse_srt(formats.write_srt(tricky))[0].text == "a -> b <i> & c"


def test_txt_and_json() -> None:
    assert formats.write("text", segments()) == (
        "And so, my fellow Americans,\nask not.\nThird part.\nTail one.\nTail two.\n"
    )
    meta = Meta("id", "title", 3710.0, "faster-whisper", "tiny.en")
    doc = json.loads(formats.write("json", segments(), meta))
    assert doc["text"] == "And so, my fellow Americans, ask not. Third part. Tail one. Tail two."
    assert [s["index"] for s in doc["segments"]] == [0, 1, 2, 3]
    assert doc["meta"]["title"] == "title"
    assert "chapters" not in doc
    with pytest.raises(ValueError, match="unknown transcript format"):
        formats.write("docx", segments())


def test_chapters_in_json_and_as_a_webvtt_chapters_track() -> None:
    chapters = [
        {"start_time": 0.0, "end_time": 12.25, "title": "Intro"},
        {"start_time": 12.25, "end_time": 3710.0, "title": "Q & A <live>"},
    ]
    meta = Meta("id", "title", 3710.0, "faster-whisper", "tiny.en", chapters=chapters)
    doc = json.loads(formats.write("json", segments(), meta))
    assert doc["chapters"] == chapters == doc["meta"]["chapters"]
    track = formats.write_chapters_vtt(chapters)
    assert "00:00:12.250 --> 01:01:50.000\nQ &amp; A &lt;live>" in track
    assert [(c.start, c.end, c.text) for c in formats.parse_vtt(track)] == [
        (0.0, 12.25, "Intro"),
        (12.25, 3710.0, "Q & A <live>"),
    ]
