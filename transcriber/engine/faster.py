"""faster-whisper (CTranslate2): int8 on CPU, float16 on CUDA."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.engine.base import (
    BEST_OF,
    TIME_PRECISION,
    BatchDecode,
    EngineConfig,
    Piece,
    TranscribeOptions,
    Word,
    as_samples,
    is_digital_silence,
)
from transcriber.engine.batch import compression_ratio, split_by_timestamps
from transcriber.engine.guards import apply_guards, token_budget
from transcriber.engine.models import load_error, resolve_device, resolve_model


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
            raise load_error(config, err) from err

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
        audio = as_samples(audio)
        if is_digital_silence(audio):
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


