"""Both Whisper engines on real weights (tiny.en, offline) and real speech.

WER bounds, measured on this machine then stated (whisper's English normaliser, then jiwer):
tiny.en scores 0.00-0.29 per clip here (faster-whisper int8's worst is "ill disposed" ->
"old-exposed" on librivox_0890) and about 0.06 over all the words, so a clip above 0.35 or a
corpus above 0.10 is a regression, not noise.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from tests.conftest import reference
from tests.helpers.models import clip_wer, corpus_wer, openai_tiny_en, speech, wer
from tests.helpers.sequential import repeated
from transcriber import SAMPLE_RATE
from transcriber.engine import (
    ENGINES,
    BatchDecode,
    EngineCache,
    EngineConfig,
    EngineError,
    ModelNotFound,
    Piece,
    TranscribeOptions,
    UnknownEngine,
    Word,
    apply_guards,
    continuation_fails,
    engine_cache,
    get_engine,
    needs_fallback,
    transcribe_batch,
)
from transcriber.engine.batch import split_by_timestamps

WER_CLIPS = (
    "jfk_whispercpp",
    "ps_librivox_0870",
    "ps_librivox_0890",
    "ps_librivox_0920",
    "ps_librivox_0930",
)
MAX_CLIP_WER = 0.35
MAX_CORPUS_WER = 0.10
GREEDY = TranscribeOptions(beam_size=1)
WORDS = TranscribeOptions(beam_size=1, word_timestamps=True)


def config(engine: str, **kwargs) -> EngineConfig:
    return EngineConfig(engine=engine, model="tiny.en", cpu_threads=2, **kwargs)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    return get_engine(config(request.param))


@pytest.fixture(scope="module")
def transcripts(engine) -> dict[str, list[Piece]]:
    return {name: engine.transcribe(speech(name), GREEDY) for name in WER_CLIPS}


def text_of(pieces: list[Piece]) -> str:
    return " ".join(p.text.strip() for p in pieces)


def assert_times_sane(pieces: list[Piece], seconds: float) -> None:
    previous_end = 0.0
    for p in pieces:
        assert previous_end <= p.start <= p.end <= seconds + 0.02, (p, seconds)
        previous_end = p.end
        for w in p.words or ():
            assert p.start <= w.start <= w.end <= p.end, (w, p)


def test_wer_on_real_speech_is_within_the_stated_bound(engine, transcripts):
    errors = {name: clip_wer(name, text_of(pieces)) for name, pieces in transcripts.items()}
    assert max(errors.values()) <= MAX_CLIP_WER, errors
    corpus = corpus_wer({name: text_of(pieces) for name, pieces in transcripts.items()})
    assert corpus <= MAX_CORPUS_WER, (corpus, errors)
    assert errors["jfk_whispercpp"] == 0.0


def test_pieces_carry_scores_and_sane_relative_times(transcripts):
    for name, pieces in transcripts.items():
        assert pieces, name
        assert_times_sane(pieces, len(speech(name)) / SAMPLE_RATE)
        for p in pieces:
            assert p.avg_logprob < 0 and 0 <= p.no_speech_prob < 0.6 and p.compression_ratio > 0
            assert p.words is None  # not asked for
    # jfk's 11 s are two sentences; the pieces must reach into the second one.
    assert transcripts["jfk_whispercpp"][-1].end > 9.0


@pytest.mark.slow
def test_word_timestamps(engine):
    audio = speech("jfk_whispercpp")
    pieces = engine.transcribe(audio, TranscribeOptions(beam_size=1, word_timestamps=True))
    words = [w for p in pieces for w in p.words]
    assert "".join(w.word for w in words).strip() == text_of(pieces)
    assert_times_sane(pieces, len(audio) / SAMPLE_RATE)
    assert all(a.start <= b.start for a, b in zip(words, words[1:], strict=False))
    assert all(0 < w.probability <= 1 for w in words)
    # "country" closes the clip: spoken around 9.5-10.6 s.
    assert words[-1].word.strip(" .").lower() == "country" and 9.0 < words[-1].end <= 11.0


def _noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * rms).astype(
        np.float32
    )


@pytest.mark.parametrize(
    "signal",
    [
        np.zeros(2 * SAMPLE_RATE, np.float32),
        _noise(2, 1e-3),  # -60 dBFS hiss: tiny.en says " you" / " . . ." here without guards
        _noise(2, 1e-2),  # -40 dBFS
        (0.01 * np.sin(2 * np.pi * 50 * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32),
        np.zeros(0, np.float32),
    ],
    ids=["silence", "noise-60dB", "noise-40dB", "mains-hum", "empty"],
)
def test_no_text_from_silence_or_noise(engine, signal):
    assert engine.transcribe(signal, GREEDY) == []


def test_the_no_speech_rule_drops_pieces_and_the_compression_test_keeps_them(engine):
    audio = speech("ps_cards_001")
    assert text_of(engine.transcribe(audio, GREEDY))  # speech is there
    # Every real piece has no_speech_prob > 0 and avg_logprob < 0: with both thresholds at 0,
    # whisper's rule calls all of it silence.
    assert engine.transcribe(audio, TranscribeOptions(beam_size=1, no_speech_threshold=0.0, log_prob_threshold=0.0)) == []
    # Every piece compresses by more than 0.5, so every try fails the compression test; as in
    # whisper, that only moves to the next temperature and the text is kept, ratio and all. (One
    # temperature: a fallback through six, five samples each, would make the same point slower.)
    strict = TranscribeOptions(beam_size=1, compression_ratio_threshold=0.5, temperatures=(0.0,))
    kept = engine.transcribe(audio, strict)
    assert clip_wer("ps_cards_001", text_of(kept)) <= MAX_CLIP_WER, text_of(kept)
    assert all(p.compression_ratio > 0.5 for p in kept)


def test_the_no_speech_rule_applies_in_a_batch(engine):
    """Each batched piece carries its window's scores, so whisper's rule drops it as it does on
    the per-segment path (with both thresholds at 0 all real speech counts as silence)."""
    audios = [speech("ps_cards_001"), speech("jfk_whispercpp")]
    quiet = TranscribeOptions(beam_size=1, no_speech_threshold=0.0, log_prob_threshold=0.0, temperatures=(0.0,))
    assert [r.pieces for r in transcribe_batch(engine, audios, quiet)] == [[], []]
    for result in transcribe_batch(engine, audios, GREEDY):
        assert result.pieces and all(p.avg_logprob < 0.0 < p.no_speech_prob for p in result.pieces)


def test_the_same_sentence_twice_in_one_window_keeps_both_copies(engine):
    # JFK, said twice with pauses: 24 s, one Whisper window. Its text compresses past whisper's
    # 2.4 (2.5-2.6 greedy, both engines), which used to drop the whole window: real speech lost.
    # Greedy and one temperature, so the decode is deterministic (the fallback samples).
    pause = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([speech("jfk_whispercpp"), pause] * 2)
    pieces = engine.transcribe(audio, TranscribeOptions(beam_size=1, temperatures=(0.0,)))
    said = " ".join([reference("jfk_whispercpp")] * 2)
    assert wer(said, text_of(pieces)) <= 0.05, text_of(pieces)
    assert text_of(pieces).lower().count("ask not") == 2
    assert_times_sane(pieces, len(audio) / SAMPLE_RATE)
    assert pieces[-1].end > 20.0  # the second copy has its own times, not the first's
    # The ratio stays on the pieces: the sequential mode sees the guard trip and drops its prompt.
    assert max(p.compression_ratio for p in pieces) > TranscribeOptions().compression_ratio_threshold


def test_get_engine_loads_once_per_process(engine):
    loads = engine_cache().loads
    again = get_engine(engine.config)
    assert again is engine
    assert engine_cache().loads == loads


@pytest.mark.slow
def test_engine_cache_is_lru_of_two_and_loads_a_cold_config_once_across_threads():
    cache = EngineCache(maxsize=2)
    a, b, c = (config("faster-whisper", device="cpu", compute_type=t) for t in ("int8", "float32", "int8_float32"))
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(a))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.loads == 1 and all(e is got[0] for e in got)
    cache.get(b), cache.get(a), cache.get(c)  # b is least recently used when c arrives
    assert cache.loads == 3
    assert cache.get(a) is got[0] and cache.loads == 3
    cache.get(b)
    assert cache.loads == 4  # b was evicted and loads again


def test_openai_engine_resolves_tiny_en_to_the_converted_checkpoint():
    engine = get_engine(config("openai-whisper"))
    assert engine.model_path == str(openai_tiny_en())


def test_batched_transcripts_match_one_by_one_with_timestamps(engine, transcripts):
    """One encoder pass and one decode for all the clips (and a silent one), timestamps kept."""
    audios = [speech(n) for n in WER_CLIPS]
    silent = np.zeros(SAMPLE_RATE, np.float32)
    batched = transcribe_batch(engine, audios[:2] + [silent] + audios[2:], GREEDY)
    assert batched[2].pieces == [] and not batched[2].redecoded
    batched = batched[:2] + batched[3:]
    alone = corpus_wer({name: text_of(transcripts[name]) for name in WER_CLIPS})
    together = corpus_wer({name: text_of(b.pieces) for name, b in zip(WER_CLIPS, batched, strict=True)})
    assert together <= alone + 0.005, (together, alone)
    for audio, result in zip(audios, batched, strict=True):
        assert result.pieces and not result.redecoded
        assert_times_sane(result.pieces, len(audio) / SAMPLE_RATE)  # relative to each segment
        starts = [p.start for p in result.pieces]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert max(len(b.pieces) for b in batched) > 1  # timestamp tokens cut the long clips


def test_batched_word_timestamps(engine):
    audios = [speech("jfk_whispercpp"), speech("ps_librivox_0870")]
    for audio, result in zip(audios, transcribe_batch(engine, audios, WORDS), strict=True):
        words = [w for p in result.pieces for w in p.words or ()]
        assert len(words) == len(text_of(result.pieces).split())
        assert_times_sane(result.pieces, len(audio) / SAMPLE_RATE)
        assert [w.start for w in words] == sorted(w.start for w in words)


def test_a_segment_failing_the_thresholds_in_a_batch_is_redecoded_alone():
    """ "Ten of clubs" six times compresses past 2.4: that element is decoded again alone with
    the temperature fallback; its batch-mates keep their batched decode, untouched."""
    engine = get_engine(config("faster-whisper"))
    mates = [speech("jfk_whispercpp"), speech("ps_librivox_0920")]
    block = repeated()
    (decode,) = [d for d in engine.decode_batch([mates[0], block, mates[1]], GREEDY)][1:2]
    assert needs_fallback(decode, GREEDY) and decode.compression_ratio > 2.4
    with_block = transcribe_batch(engine, [mates[0], block, mates[1]], GREEDY)
    without = transcribe_batch(engine, mates, GREEDY)
    assert [r.redecoded for r in with_block] == [False, True, False]
    assert [r.pieces for r in (with_block[0], with_block[2])] == [r.pieces for r in without]
    assert with_block[1].pieces  # its text is kept, as whisper keeps the last try
    # One temperature: nothing hotter to try, so the batched decode stands (whisper keeps it).
    once = transcribe_batch(engine, [mates[0], block], dataclasses.replace(GREEDY, temperatures=(0.0,)))
    assert not any(r.redecoded for r in once)


def test_batch_of_one_is_the_per_segment_path(engine, transcripts):
    for name in WER_CLIPS[:2]:
        (result,) = transcribe_batch(engine, [speech(name)], GREEDY)
        assert result.pieces == transcripts[name] and not result.redecoded


#: JFK, a pause, then librivox_0920: greedy tiny.en closes JFK with a timestamp pair at 11 s and
#: stops, 6.6 s of speech before the end (as 15 of the 10-minute bench input's 26 segments do).
STOPS_SHORT = ("jfk_whispercpp", "ps_librivox_0920")


def stops_short() -> np.ndarray:
    jfk, rest = (speech(name) for name in STOPS_SHORT)
    return np.concatenate([jfk, np.zeros(int(0.6 * SAMPLE_RATE), np.float32), rest])


@pytest.fixture
def windows(monkeypatch):
    """The faster-whisper engine, and a count of the 30 s windows its encoder is run on."""
    engine = get_engine(config("faster-whisper"))
    count = {"windows": 0}
    encode = engine.model.encode

    def counting(features, *args, **kwargs):
        count["windows"] += features.shape[0]
        return encode(features, *args, **kwargs)

    monkeypatch.setattr(engine.model, "encode", counting)
    return engine, count


def test_a_stopped_short_element_gets_its_rest_on_the_same_encoder_output(windows):
    """The rest after the decoder's early stop is decoded on the window already encoded (no
    second window), its text right, its pieces inside the audio after the first decode's."""
    engine, count = windows
    audio, mate = stops_short(), speech("ps_librivox_0870")
    seconds = len(audio) / SAMPLE_RATE
    first, _ = engine.decode_batch([audio, mate], GREEDY)
    assert first.continued == 1 and first.resume_at is None
    assert count["windows"] == 2
    result, mate_result = transcribe_batch(engine, [audio, mate], GREEDY)
    assert count["windows"] == 4  # two more for the batch: still one window each
    assert not result.redecoded
    spoken = " ".join(reference(name) for name in STOPS_SHORT)
    assert wer(spoken, text_of(result.pieces)) <= 0.05, text_of(result.pieces)
    assert_times_sane(result.pieces, seconds)
    tail = result.pieces[-1]
    assert "married" in tail.text and 10.5 <= tail.start < tail.end <= seconds
    assert clip_wer("ps_librivox_0870", text_of(mate_result.pieces)) <= MAX_CLIP_WER


def test_continued_pieces_get_word_timestamps(windows):
    engine, count = windows
    audio = stops_short()
    (result, _mate) = transcribe_batch(engine, [audio, speech("ps_librivox_0870")], WORDS)
    assert count["windows"] == 2
    words = [w for p in result.pieces for w in p.words or ()]
    assert len(words) == len(text_of(result.pieces).split())
    assert_times_sane(result.pieces, len(audio) / SAMPLE_RATE)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert all(w.start >= 10.5 for w in result.pieces[-1].words)  # JFK's part ends near 11 s


def test_a_continuation_failing_its_checks_gets_the_next_window(windows):
    """No log-probability passes a threshold of 0: both continuations fail their checks, so the
    rest goes to whisper's next window, as before continuations, and its text is still there."""
    engine, count = windows
    strict = dataclasses.replace(GREEDY, temperatures=(0.0,), log_prob_threshold=0.0)
    audio = stops_short()
    first, _ = engine.decode_batch([audio, speech("ps_librivox_0870")], strict)
    assert first.continued == 0 and first.resume_at == pytest.approx(11.0)
    count["windows"] = 0
    result, _mate = transcribe_batch(engine, [audio, speech("ps_librivox_0870")], strict)
    assert count["windows"] == 3  # the pair, then the rest of the first in a window of its own
    spoken = " ".join(reference(name) for name in STOPS_SHORT)
    assert wer(spoken, text_of(result.pieces)) <= 0.1, text_of(result.pieces)
    assert_times_sane(result.pieces, len(audio) / SAMPLE_RATE)


def test_continuation_checks_on_what_the_bench_input_decoded():
    """The failures seen on the 10-minute bench input's tails, and what was kept there."""
    said = BatchDecode(
        [Piece(0.0, 16.08, " He was not an ill-disposed young man."), Piece(16.08, 19.44, " He might even have been made amiable himself.")],
        resume_at=19.44,
    )

    def tail(text: str, start: float = 19.44, end: float = 24.69, **scores) -> BatchDecode:
        return BatchDecode([Piece(start, end, text)], **{"avg_logprob": -0.4, "compression_ratio": 1.0, **scores})

    def fails(decode: BatchDecode, seconds: float = 24.69) -> str | None:
        return continuation_fails(said, decode, seconds, TranscribeOptions())

    assert fails(tail(" Four Queen of Clovs.")) is None
    assert fails(tail(" For Queen of Clothes", end=26.0)) is None  # an end a little past the audio
    assert fails(tail(" ...")) == "empty"
    assert fails(tail(" to be able" * 8, compression_ratio=12.4)) == "compression"
    assert fails(tail(" maybe a bull himself", avg_logprob=-1.04)) == "logprob"
    assert fails(tail(" Four Queen of Clovs. He might even have been made amiable himself.")) == "repeat"
    assert fails(tail(" Four Queen of Clovs, and he was not an ill-disposed young man.")) is None  # not whole
    assert fails(tail(" to be able to be able to be able")) == "loop"
    three = " Four Queen of Clovs, and he was not an ill-disposed young man. He might even have been made amiable himself. Four Queen of Clovs."
    assert fails(tail(three)) == "too many words"  # 24 words in 5.25 s: what the bench input got
    assert fails(tail(" Seven of hearts.", start=12.0)) == "times"


def test_a_rest_without_a_closing_timestamp_ends_with_its_audio():
    begin = 50364  # tiny.en's <|0.00|>
    tokens = [begin + 700, 440, 286, 257]  # <|14.00|> then text, no timestamp after it
    assert split_by_timestamps(tokens, begin, 15.16) == ([(14.0, 15.16, tokens)], None)
    closed = [*tokens, begin + 758]
    assert split_by_timestamps(closed, begin, 15.16) == ([(14.0, 15.16, closed)], None)


def test_guards_on_pieces():
    opts = TranscribeOptions()
    loop = " I'm going to the the the the the the store."
    words = [Word(i * 0.2, i * 0.2 + 0.2, f" {t}", 0.9) for i, t in enumerate(loop.split())]
    pieces = [
        Piece(0.0, 1.0, " hello", avg_logprob=-1.5, no_speech_prob=0.9),  # silence by whisper's rule
        Piece(1.0, 2.0, " kept though unsure", avg_logprob=-1.5, no_speech_prob=0.3),
        Piece(2.0, 3.0, " kept though quiet", avg_logprob=-0.5, no_speech_prob=0.9),
        Piece(3.0, 4.0, " a a b b a a b b", compression_ratio=2.5),  # kept: whisper keeps it
        Piece(4.0, 5.0, " ..."),
        Piece(5.0, 6.0, loop, compression_ratio=3.1, words=words),  # a decoding loop: cut
        *[Piece(6.0 + i, 7.0 + i, " Thank you.") for i in range(4)],
        Piece(10.0, 10.5, " No."),
        Piece(10.5, 11.0, " no"),
        Piece(11.0, 14.0, " past the end"),
    ]
    out = apply_guards(pieces, opts, duration=12.0)
    assert [p.text for p in out] == [
        " kept though unsure",
        " kept though quiet",
        " a a b b a a b b",
        " I'm going to the store.",
        " Thank you.",
        " No.",
        " no",
        " past the end",
    ]
    assert [w.word for w in out[3].words] == [" I'm", " going", " to", " the", " store."]
    # The ratios stay, so a caller can still tell that these pieces failed the test.
    assert [p.compression_ratio for p in out[2:4]] == [2.5, 3.1]
    assert out[-1].end == 12.0
    # A threshold of None switches the no-speech rule off, as in whisper.
    off = TranscribeOptions(no_speech_threshold=None)
    assert len(apply_guards(pieces[:4], off, 12.0)) == 4


def test_overlapping_pieces_come_out_monotonic():
    out = apply_guards([Piece(0.0, 3.0, " one"), Piece(2.5, 4.0, " two")], TranscribeOptions(), 5.0)
    assert [(p.start, p.end) for p in out] == [(0.0, 3.0), (3.0, 4.0)]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_missing_model_path_is_a_typed_error(engine_name, tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        get_engine(EngineConfig(engine=engine_name, model=str(tmp_path / "nope.pt")))
    with pytest.raises(ModelNotFound, match="unknown model 'tiny-xxl'"):
        get_engine(EngineConfig(engine=engine_name, model="tiny-xxl"))


def test_wrong_kind_of_model_and_unknown_engine_are_typed_errors(tmp_path):
    with pytest.raises(ModelNotFound, match="not a CTranslate2 model directory"):
        get_engine(EngineConfig(engine="faster-whisper", model=str(openai_tiny_en())))
    with pytest.raises(UnknownEngine, match="unknown engine 'whisperx'"):
        get_engine(EngineConfig(engine="whisperx"))
    with pytest.raises(EngineError, match="unknown device"):
        get_engine(EngineConfig(device="tpu"))
    with pytest.raises(EngineError, match="mono"):
        get_engine(config("faster-whisper")).transcribe(np.zeros((2, 16000), np.float32), GREEDY)


def test_audio_over_one_window_in_a_batch_goes_alone_and_keeps_its_words(engine):
    """A batch decodes one 30 s window per element, so audio longer than that (the segmenter
    never plans it under the speech gate; this is the safety net) goes through
    ``Engine.transcribe``, which seeks on: the words after 30 s are not lost."""
    jfk, tail = speech("jfk_whispercpp"), speech("ps_librivox_0920")
    pause = np.random.default_rng(0).normal(0, 0.001, SAMPLE_RATE * 9 // 2).astype(np.float32)
    long = np.concatenate([jfk, pause, jfk, pause, tail])  # the tail starts past 30 s
    assert len(long) - len(tail) > 30 * SAMPLE_RATE
    got = transcribe_batch(engine, [jfk, long], GREEDY)
    first = len(jfk) / SAMPLE_RATE  # the first JFK's pieces start in it (one may end in the pause)
    assert clip_wer("jfk_whispercpp", text_of([p for p in got[1].pieces if p.start < first])) < 0.3
    assert clip_wer("ps_librivox_0920", text_of([p for p in got[1].pieces if p.start >= 30.0])) < 0.3
    assert not got[1].redecoded and got[0].pieces
