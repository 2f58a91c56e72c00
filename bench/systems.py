"""The systems the bench compares: how each is launched as a child process.

A :class:`System` is a name, a one-line description and a function that builds its command
line. Every command prints NDJSON ``segment`` lines (see :mod:`bench.measure`). Adding a
system (e.g. streamscribe's sequential mode) is one more entry in :func:`all_systems` (and
in :data:`DEFAULT_SYSTEMS` to run it by default); the runner, the report and the JSON pick it
up from there.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.inputs import WORK


@dataclass(frozen=True)
class BenchConfig:
    """What every system shares (weights, beam size) and the knobs of each."""

    #: streamscribe's engine (the peers are fixed: one faster-whisper, one openai-whisper).
    engine: str = "faster-whisper"
    #: A model name or a local path (CTranslate2 dir or openai-whisper ``.pt``).
    model: str = "tiny.en"
    #: The same beam size for every system (whisper's CLI default is 5).
    beam_size: int = 5
    #: CTranslate2 compute type for both CTranslate2 systems (streamscribe's CPU default).
    compute_type: str = "int8"
    #: Every system is told the language (tiny.en is English-only; no detection pass).
    language: str = "en"
    #: Intra-op threads of the whole-file peers (the issue fixes 2).
    peer_threads: int = 2
    #: streamscribe ``--workers``; None = the CLI's default.
    workers: int | None = None
    #: Extra arguments appended to streamscribe's command line (tuning experiments).
    transcriber_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Weights:
    """One set of weights in the two formats: CTranslate2 and openai-whisper."""

    ct2: str | None
    openai: str | None

    def for_engine(self, engine: str) -> str:
        path = self.ct2 if engine == "faster-whisper" else self.openai
        if path is None:
            raise ValueError(f"no {engine} form of these weights: {self}")
        return path


def resolve_weights(model: str, work_dir: Path = WORK) -> Weights:
    """``tiny.en`` -> the package-shipped CTranslate2 weights and their converted checkpoint
    (same tensors, so every system runs the same weights); a CTranslate2 dir -> it and its
    conversion; a ``.pt`` -> openai-whisper only; any other name -> loaded by each library."""
    from transcriber.convert import bundled_ct2_dir, convert_ct2_to_openai, ensure_openai_checkpoint

    path = Path(model)
    if path.is_dir():
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
        out = work_dir / "weights" / f"{path.resolve().name}-{digest}.pt"
        if not out.is_file():
            convert_ct2_to_openai(path, out)
        return Weights(str(path), str(out))
    if path.suffix == ".pt" and path.is_file():
        return Weights(None, str(path))
    if model == "tiny.en" and bundled_ct2_dir() is not None:
        return Weights(str(bundled_ct2_dir()), str(ensure_openai_checkpoint()))
    return Weights(model, model)


CommandBuilder = Callable[[Path, BenchConfig, Weights], list[str]]


@dataclass(frozen=True)
class System:
    name: str
    description: str
    command: CommandBuilder
    #: False for a system run once under ``--repeat`` (slow, or there for context only).
    repeatable: bool = True


def streamscribe_command(wav: Path, cfg: BenchConfig, weights: Weights) -> list[str]:
    """The CLI path a user runs: decode, segment, local pool, NDJSON events."""
    cmd = [
        sys.executable, "-m", "transcriber", str(wav),
        "--format", "ndjson",
        "--quiet",
        "--engine", cfg.engine,
        "--model", weights.for_engine(cfg.engine),
        "--language", cfg.language,
        "--beam_size", str(cfg.beam_size),
    ]
    if cfg.engine == "faster-whisper":
        cmd += ["--compute_type", cfg.compute_type]
    if cfg.workers is not None:
        cmd += ["--workers", str(cfg.workers)]
    return cmd + list(cfg.transcriber_args)


def _streamscribe_with(*extra: str) -> CommandBuilder:
    def command(wav: Path, cfg: BenchConfig, weights: Weights) -> list[str]:
        return streamscribe_command(wav, cfg, weights) + list(extra)

    return command


def _whole_file(engine: str, *extra: str) -> CommandBuilder:
    def command(wav: Path, cfg: BenchConfig, weights: Weights) -> list[str]:
        return [
            sys.executable, "-m", "bench.whole_file", str(wav),
            "--engine", engine,
            "--model", weights.for_engine(engine),
            "--beam-size", str(cfg.beam_size),
            "--threads", str(cfg.peer_threads),
            "--compute-type", cfg.compute_type,
            "--language", cfg.language,
            *extra,
        ]

    return command


#: Systems run by default, in this order; the others run when named in ``--systems``.
DEFAULT_SYSTEMS = (
    "streamscribe",
    "faster-whisper-batched",
    "faster-whisper",
    "openai-whisper",
    "streamscribe-sequential",
)


def all_systems() -> dict[str, System]:
    """Every system the bench knows."""
    return {
        s.name: s
        for s in (
            System(
                "streamscribe",
                "streamed pipeline via `python -m transcriber --format ndjson`, local pool",
                streamscribe_command,
            ),
            System(
                "faster-whisper",
                "faster-whisper WhisperModel.transcribe on the whole file, sequential, 2 threads",
                _whole_file("faster-whisper"),
            ),
            # The fastest CPU peer (issue 12): VAD chunks decoded 8 at a time, with timestamps.
            System(
                "faster-whisper-batched",
                "faster-whisper BatchedInferencePipeline, batch 8, with timestamps, 2 threads",
                _whole_file("faster-whisper", "--batch-size", "8"),
            ),
            System(
                "openai-whisper",
                "openai-whisper transcribe() on the whole file, fp32 CPU, verbose prints timed",
                _whole_file("openai-whisper"),
                repeatable=False,  # minutes per run, and far from its goal's boundary
            ),
            # Sequential mode (issue 8): one worker, in order, previous text as the prompt.
            System(
                "streamscribe-sequential",
                "as streamscribe, with --mode sequential",
                _streamscribe_with("--mode", "sequential"),
                repeatable=False,
            ),
            # Analysis only: whole-file decoding without the previous window's text as prompt,
            # which separates what segmenting costs from what carried context gains.
            System(
                "faster-whisper-nocond",
                "as faster-whisper, with condition_on_previous_text=False",
                _whole_file("faster-whisper", "--no-condition"),
                repeatable=False,
            ),
        )
    }


def default_systems() -> dict[str, System]:
    """The systems ``python -m bench`` runs without ``--systems``, in run order."""
    known = all_systems()
    return {name: known[name] for name in DEFAULT_SYSTEMS}


def child_env() -> dict[str, str]:
    """The children's environment: unbuffered output so segment lines arrive when printed."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
