"""faster-whisper (CTranslate2): int8 on CPU, float16 on CUDA."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.engine.base import (
    BEST_OF,
    MIN_BATCH_SECONDS,
    TIME_PRECISION,
    BatchDecode,
    EngineConfig,
    Piece,
    TranscribeOptions,
    Word,
    as_samples,
    is_digital_silence,
)
from transcriber.engine.batch import (
    compression_ratio,
    continuation_fails,
    needs_fallback,
    split_by_timestamps,
)
from transcriber.engine.guards import apply_guards, token_budget
from transcriber.engine.models import load_error, resolve_device, resolve_model

log = logging.getLogger(__name__)


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
        An element whose decoder stopped short gets its rest decoded on the same encoder
        output (:meth:`_continue`); only where that fails its checks does ``resume_at`` stay
        set, for a next window.
        """
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

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
        tokenizers, previous = [], []
        for lang in languages:
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=options.task, language=lang)
            tokenizers.append(tokenizer)
            previous.append(tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else [])
        prompts = [model.get_prompt(t, p, without_timestamps=False) for t, p in zip(tokenizers, previous, strict=True)]
        decodes, cuts = [], []
        results = self._generate(encoder_output, prompts, tokenizers, seconds, options)
        for tokenizer, duration, result in zip(tokenizers, seconds, results, strict=True):
            decode, cut = _decoded(tokenizer, result, duration)
            decodes.append(decode)
            cuts.append(cut)
        self._continue(audios, encoder_output, tokenizers, previous, decodes, cuts, options)
        if options.word_timestamps:
            self._add_words(decodes, cuts, tokenizers[0], encoder_output, seconds)
        return decodes

    def _generate(self, encoder_output, prompts, tokenizers, seconds, options: TranscribeOptions):
        """One batched ``generate`` at the first temperature with the single path's settings."""
        from faster_whisper.transcribe import get_suppressed_tokens

        temperature = options.temperatures[0]
        sampling = (
            {"beam_size": 1, "num_hypotheses": BEST_OF, "sampling_topk": 0, "sampling_temperature": temperature}
            if temperature > 0
            else {"beam_size": options.beam_size, "patience": 1}
        )
        return self.model.model.generate(
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

    def _continue(self, audios, encoder_output, tokenizers, previous, decodes, cuts, options) -> None:
        """Decode the rest of each stopped-short element on the encoder output it already has.

        whisper's loop would encode a new 30 s window from the resume point: a full encoder
        pass (0.47 CPU-s for tiny.en int8) for the 1-7 s of speech the decoder left, decoded
        with no context ("of clothes." for "Ten of clubs."). Here the rest is decoded in the
        same window, its opening timestamp forced (CTranslate2 takes tokens after the sot
        sequence as a prefix), first with the segment's text so far as previous text, then,
        where that fails :func:`continuation_fails`, with only ``initial_prompt``. Where both
        fail, ``resume_at`` stays: that element alone gets whisper's next window, as before.
        """
        tails = [
            k
            for k, decode in enumerate(decodes)
            if decode.resume_at is not None
            and len(audios[k]) / SAMPLE_RATE - decode.resume_at >= MIN_BATCH_SECONDS
            and not is_digital_silence(audios[k][int(decode.resume_at * SAMPLE_RATE) :])
            and not (len(options.temperatures) > 1 and needs_fallback(decode, options))  # redone whole
        ]
        for with_text in (True, False):
            prompts = {}
            for k in tails:
                tokenizer = tokenizers[k]
                said = [t for _start, _end, part in cuts[k] for t in part if t < tokenizer.eot] if with_text else []
                opening = tokenizer.timestamp_begin + int(round(decodes[k].resume_at / TIME_PRECISION))
                prompts[k] = self.model.get_prompt(tokenizer, previous[k] + said, without_timestamps=False) + [opening]
            failed = []
            rest = {k: len(audios[k]) / SAMPLE_RATE - decodes[k].resume_at for k in tails}
            for k, result in self._generate_rows(encoder_output, prompts, tokenizers, rest, options):
                duration = len(audios[k]) / SAMPLE_RATE
                tail, cut = _decoded(tokenizers[k], result, duration)
                reason = continuation_fails(decodes[k], tail, duration, options)
                log.debug("continuation at %.2f s of %.2f s (text: %s): %s %r", decodes[k].resume_at, duration,
                          with_text, reason or "kept", [p.text for p in tail.pieces])
                if reason is not None:
                    failed.append(k)
                    continue
                decodes[k].pieces += tail.pieces
                decodes[k].resume_at = tail.resume_at
                decodes[k].continued += 1
                cuts[k] += cut
            tails = failed

    def _generate_rows(self, encoder_output, prompts: dict[int, list[int]], tokenizers, seconds, options):
        """``(row, result)`` for each row's prompt, decoded on those rows of ``encoder_output``
        within the token budget of its ``seconds`` of audio.

        CTranslate2 wants the sot token at one position in every row of a batch: one
        ``generate`` per prompt length.
        """
        for length in sorted({len(p) for p in prompts.values()}):
            rows = [k for k, p in prompts.items() if len(p) == length]
            try:
                some = _rows(encoder_output, rows)
            except Exception:  # untried on CUDA here: those rows get whisper's next window
                log.warning("cannot take rows %s of the encoder output; no continuation", rows, exc_info=True)
                continue
            done = self._generate(
                some.view,
                [prompts[k] for k in rows],
                [tokenizers[k] for k in rows],
                [seconds[k] for k in rows],
                options,
            )
            yield from zip(rows, done, strict=True)

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


def _decoded(tokenizer, result, seconds: float) -> tuple[BatchDecode, list]:
    """One ``generate`` result as a :class:`BatchDecode` and its ``(start, end, tokens)`` cut."""
    tokens = result.sequences_ids[0]
    cut, resume = split_by_timestamps(tokens, tokenizer.timestamp_begin, seconds)
    decode = BatchDecode(
        pieces=[Piece(start, end, tokenizer.decode(part)) for start, end, part in cut],
        avg_logprob=result.scores[0] * len(tokens) / (len(tokens) + 1),
        no_speech_prob=result.no_speech_prob,
        compression_ratio=compression_ratio(tokenizer.decode(tokens).strip()),
        resume_at=resume,
    )
    return decode, cut


@dataclass
class _Rows:
    """Some rows of a batch's encoder output, and the array they share memory with."""

    view: object
    keep: object = None


def _rows(encoder_output, rows: list[int]) -> _Rows:
    """The encoder output of ``rows`` only, without encoding again (a copy of those rows)."""
    import ctranslate2

    if rows == list(range(encoder_output.shape[0])):
        return _Rows(encoder_output)
    array: Any  # a numpy array on CPU, a torch tensor on CUDA
    if encoder_output.device == "cpu":
        array = np.ascontiguousarray(np.asarray(encoder_output)[rows])
    else:  # CUDA: through torch's view of the device memory (__cuda_array_interface__)
        import torch

        array = torch.as_tensor(encoder_output)[rows].contiguous()
    return _Rows(ctranslate2.StorageView.from_array(array), array)


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


