"""The whole-file peers, run as a child process: one Whisper call over the entire input.

    python -m bench.whole_file --engine faster-whisper|openai-whisper --model PATH INPUT.wav

Prints one JSON object per line on stdout, the same shape as streamscribe's NDJSON ``segment``
events (``{"type": "segment", "index", "start", "end", "text"}``), each the moment the library
hands it over, then ``{"type": "done", "load_s", "transcribe_s"}``. The bench times the lines
as they arrive, so every system's "first segment" is measured the same way, from outside.

- faster-whisper: ``WhisperModel.transcribe`` returns a lazy generator; a segment is printed
  as the generator yields it (after its 30 s window is decoded).
- openai-whisper: ``transcribe()`` returns only at the end, but with ``verbose=True`` it prints
  each window's segments as soon as that window is decoded (what ``whisper FILE`` shows). Those
  prints are captured and forwarded, so its first segment is the first decoded window too.

Both read the wav with the stdlib (openai-whisper would shell out to an ``ffmpeg`` on PATH,
which this machine lacks); reading 10 minutes of wav takes milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
from typing import TextIO

from bench.inputs import read_wav

#: whisper's verbose line: ``[00:01.000 --> 00:04.000]  text``.
_VERBOSE_LINE = re.compile(r"^\[((?:\d+:)?\d+:\d+\.\d+) --> ((?:\d+:)?\d+:\d+\.\d+)\] ?(.*)$")


def _seconds(stamp: str) -> float:
    total = 0.0
    for part in stamp.split(":"):
        total = total * 60 + float(part)
    return total


class _Emitter:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.count = 0

    def segment(self, start: float, end: float, text: str) -> None:
        self.emit(
            {"type": "segment", "index": self.count, "start": start, "end": end, "text": text}
        )
        self.count += 1

    def emit(self, event: dict) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()


class _VerboseTap(io.TextIOBase):
    """A stdout stand-in that turns whisper's verbose segment prints into segment events."""

    def __init__(self, emitter: _Emitter) -> None:
        self.emitter = emitter
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            match = _VERBOSE_LINE.match(line.strip())
            if match:
                start, end, said = match.groups()
                self.emitter.segment(_seconds(start), _seconds(end), said.strip())
        return len(text)


def run_faster_whisper(args: argparse.Namespace, emitter: _Emitter) -> tuple[float, float]:
    from faster_whisper import WhisperModel

    t0 = time.perf_counter()
    model = WhisperModel(
        args.model, device="cpu", compute_type=args.compute_type, cpu_threads=args.threads
    )
    audio = read_wav(args.input)
    t1 = time.perf_counter()
    if args.batch_size:
        # faster-whisper's batched pipeline: silero VAD cuts speech into <= 30 s chunks, which
        # are decoded batch_size at a time; timestamps kept (without_timestamps=False).
        from faster_whisper import BatchedInferencePipeline

        segments, _info = BatchedInferencePipeline(model).transcribe(
            audio, language=args.language, beam_size=args.beam_size,
            batch_size=args.batch_size, without_timestamps=False,
        )
    else:
        segments, _info = model.transcribe(
            audio, language=args.language, beam_size=args.beam_size,
            condition_on_previous_text=args.condition,
        )
    for segment in segments:
        emitter.segment(segment.start, segment.end, segment.text.strip())
    return t1 - t0, time.perf_counter() - t1


def run_openai_whisper(args: argparse.Namespace, emitter: _Emitter) -> tuple[float, float]:
    import torch
    import whisper

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = whisper.load_model(args.model, device="cpu")
    audio = read_wav(args.input)
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(_VerboseTap(emitter)):
        # beam_size/best_of/fp16 as `whisper FILE --fp16 False` on CPU uses them.
        model.transcribe(
            audio, language=args.language, beam_size=args.beam_size, best_of=5,
            fp16=False, verbose=True, condition_on_previous_text=args.condition,
        )
    return t1 - t0, time.perf_counter() - t1


RUNNERS = {"faster-whisper": run_faster_whisper, "openai-whisper": run_openai_whisper}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.whole_file", description=__doc__)
    parser.add_argument("input", help="16 kHz mono 16-bit wav")
    parser.add_argument("--engine", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--model", required=True, help="CTranslate2 dir or openai .pt / name")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="intra-op CPU threads")
    parser.add_argument("--compute-type", default="int8", help="CTranslate2 compute type")
    parser.add_argument("--language", default="en")
    parser.add_argument(
        "--no-condition", dest="condition", action="store_false",
        help="condition_on_previous_text=False (the libraries default to True)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=0,
        help="faster-whisper only: BatchedInferencePipeline with this batch size (0: off)",
    )
    args = parser.parse_args(argv)
    emitter = _Emitter(sys.stdout)
    load_s, transcribe_s = RUNNERS[args.engine](args, emitter)
    emitter.emit(
        {"type": "done", "load_s": round(load_s, 3), "transcribe_s": round(transcribe_s, 3)}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
