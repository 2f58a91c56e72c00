"""openai-whisper (PyTorch): fp32 on CPU, fp16 on CUDA."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.engine.base import (
    BEST_OF,
    BatchDecode,
    EngineConfig,
    Piece,
    TranscribeOptions,
    Word,
    as_samples,
    is_digital_silence,
)
from transcriber.engine.batch import split_by_timestamps
from transcriber.engine.guards import apply_guards, token_budget
from transcriber.engine.models import load_error, resolve_device, resolve_model


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
            raise load_error(config, err) from err
        self.fp16 = self.device == "cuda"
        # transcribe() installs kv-cache hooks on the shared modules: one call at a time.
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> list[Piece]:
        audio = as_samples(audio)
        if is_digital_silence(audio):
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
