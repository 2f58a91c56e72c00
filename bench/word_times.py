"""``python -m bench.word_times``: what word timestamps cost on the CPU, in this process.

Every real-speech fixture of ``tests/data`` goes through one engine (tiny.en, one thread)
with ``word_timestamps`` off and on, alternating, ``--repeat`` rounds; the report is the CPU
seconds of this process (``time.process_time``: the engine's own work, no other process's) and
the wall time of each setting, and the ratio. Word timestamps add a cross-attention alignment
(DTW) pass per 30 s window; nothing else changes.
"""

from __future__ import annotations

import argparse
import time
import wave
from pathlib import Path

import numpy as np

from transcriber.engine import EngineConfig, TranscribeOptions, get_engine

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data"


def clips() -> list[np.ndarray]:
    out = []
    for path in sorted(FIXTURES.glob("*.wav")):
        with wave.open(str(path), "rb") as wav:
            out.append(np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.word_times", description=__doc__)
    parser.add_argument("--engine", default="faster-whisper", choices=("faster-whisper", "openai-whisper"))
    parser.add_argument("--beam_size", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    audio = clips()
    engine = get_engine(EngineConfig(engine=args.engine, cpu_threads=1))
    seconds = sum(len(a) for a in audio) / 16000
    cpu = {False: 0.0, True: 0.0}
    wall = {False: 0.0, True: 0.0}
    engine.transcribe(audio[0], TranscribeOptions(beam_size=args.beam_size))  # warm-up
    for _ in range(args.repeat):
        for words in (False, True):
            options = TranscribeOptions(beam_size=args.beam_size, word_timestamps=words)
            c0, w0 = time.process_time(), time.perf_counter()
            for clip in audio:
                engine.transcribe(clip, options)
            cpu[words] += time.process_time() - c0
            wall[words] += time.perf_counter() - w0
    print(f"{args.engine} tiny.en beam {args.beam_size}, {len(audio)} clips, {seconds:.1f} s of "
          f"speech x {args.repeat}")  # fmt: skip
    for words in (False, True):
        print(f"  word_timestamps={words!s:5}  cpu {cpu[words] / args.repeat:6.2f} s  "
              f"wall {wall[words] / args.repeat:6.2f} s per round")  # fmt: skip
    print(f"  cost of word timestamps: cpu x{cpu[True] / cpu[False]:.3f}, "
          f"wall x{wall[True] / wall[False]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
