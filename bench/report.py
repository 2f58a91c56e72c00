"""Scores and the report: WER, the goal ratios, ``results.json`` and ``RESULTS.md``.

Runs are looked up by key: a system's name for the main input (``streamscribe``,
``faster-whisper``, ...) and ``long.<name>`` for the ``--long`` runs. A :class:`Goal` compares
two (run, metric) figures, so a new system or a new goal is one more entry, not new code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

#: Per-run figures, in table order: (key, column title, format).
METRICS: list[tuple[str, str, str]] = [
    ("wall_s", "wall s", "{:.1f}"),
    ("speed_x", "× realtime", "{:.1f}"),
    ("first_segment_s", "first segment s", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("cpu_s", "CPU s", "{:.1f}"),
    ("cpu_s_per_audio_min", "CPU s / audio min", "{:.2f}"),
    ("wer", "WER", "{:.4f}"),
    ("segments", "segments", "{:d}"),
]


@cache
def _normalizer():
    # whisper's normaliser: spelling variants, numbers, punctuation -> one canonical form.
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """jiwer's WER after whisper's English normaliser on both sides.

    Each line of the reference is normalised on its own (number words never join across
    utterances); the hypothesis, one stream of text, is normalised whole.
    """
    return pooled_word_error_rate([(reference, hypothesis)])


def pooled_word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """The WER of several ``(reference, hypothesis)`` pairs taken together: all their errors
    over all their reference words, each side normalised as :func:`word_error_rate` says."""
    import jiwer

    refs = [" ".join(normalize(line) for line in ref.splitlines()) for ref, _ in pairs]
    if not any(ref.split() for ref in refs):
        raise ValueError("the reference transcript is empty after normalisation")
    return float(jiwer.wer(refs, [normalize(hyp) for _, hyp in pairs]))


@dataclass(frozen=True)
class Goal:
    """``a`` / ``b`` (``ratio``) or ``a`` - ``b`` (``difference``), met when <= ``goal``."""

    key: str
    label: str
    a: tuple[str, str]
    b: tuple[str, str]
    goal: float
    kind: str = "ratio"
    #: True when the figures come from ``--long`` runs (null without it).
    needs_long: bool = False

    def evaluate(self, runs: dict[str, dict]) -> dict:
        a, b = _figure(runs, *self.a), _figure(runs, *self.b)
        value: float | None = None
        if a is not None and b is not None:
            if self.kind == "difference":
                value = a - b
            elif b > 0:
                value = a / b
        return {
            "label": self.label,
            "value": None if value is None else round(value, 4),
            "goal": self.goal,
            "met": None if value is None else value <= self.goal,
            "a": f"{self.a[0]}.{self.a[1]}",
            "b": f"{self.b[0]}.{self.b[1]}",
            "kind": self.kind,
        }


def _figure(runs: dict[str, dict], run: str, metric: str) -> float | None:
    value = (runs.get(run) or {}).get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def default_goals() -> list[Goal]:
    """The issue's goals. The 10-minute baselines of the long checks are the main run."""
    ss, fw, ow, fwb = "streamscribe", "faster-whisper", "openai-whisper", "faster-whisper-batched"
    return [
        Goal("wall_vs_faster_whisper_batched", "streamscribe wall / faster-whisper-batched wall",
             (ss, "wall_s"), (fwb, "wall_s"), 0.8),
        Goal("wer_diff_vs_faster_whisper_batched", "WER streamscribe − WER faster-whisper-batched",
             (ss, "wer"), (fwb, "wer"), 0.005, kind="difference"),
        Goal("wall_vs_faster_whisper", "streamscribe wall / faster-whisper wall",
             (ss, "wall_s"), (fw, "wall_s"), 0.8),
        Goal("wall_vs_openai_whisper", "streamscribe wall / openai-whisper wall",
             (ss, "wall_s"), (ow, "wall_s"), 0.25),
        Goal("ttfs_vs_faster_whisper_wall", "streamscribe first segment / faster-whisper wall",
             (ss, "first_segment_s"), (fw, "wall_s"), 0.05),
        Goal("ttfs_60min_vs_10min", "first segment 60 min / main input",
             ("long.ttfs_60min", "first_segment_s"), (ss, "first_segment_s"), 1.2,
             needs_long=True),
        Goal("wer_diff_vs_faster_whisper", "WER streamscribe − WER faster-whisper",
             (ss, "wer"), (fw, "wer"), 0.005, kind="difference"),
        Goal("rss_3h_vs_10min", "peak RSS 3 h / main input",
             ("long.rss_3h", "peak_rss_mb"), (ss, "peak_rss_mb"), 1.1, needs_long=True),
    ]


def all_runs(results: dict) -> dict[str, dict]:
    runs = dict(results.get("systems", {}))
    for key, run in (results.get("long") or {}).items():
        if run is not None:
            runs[f"long.{key}"] = run
    return runs


def evaluate_goals(results: dict, goals: list[Goal] | None = None) -> dict[str, dict]:
    runs = all_runs(results)
    return {goal.key: goal.evaluate(runs) for goal in goals or default_goals()}


def _cell(value, fmt: str) -> str:
    if value is None:
        return "—"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown(results: dict) -> str:
    """RESULTS.md: the machine and settings, one row per run, one row per goal."""
    machine, cfg, inp = results["machine"], results["config"], results["input"]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `python -m bench` on {machine['date']}: {machine['cpu_model']}, "
        f"{machine['cores']} cores, load average {machine['loadavg_start']} at start, "
        f"{machine['loadavg_end']} at end. "
        + (f"{machine['cuda_devices']} CUDA GPU(s) seen; every figure below is from the CPU."
           if machine.get("cuda_devices") else "No GPU run this session: every figure is from the CPU."),
        "",
        f"Input: {inp['duration_s'] / 60:.1f} min ({inp.get('source')}, "
        f"{inp['reference_words']} reference words). Model `{cfg['model']}`, beam size "
        f"{cfg['beam_size']}, CTranslate2 compute type `{cfg['compute_type']}`, "
        f"streamscribe engine `{cfg['engine']}`"
        + (f", extra CLI args `{' '.join(cfg['transcriber_args'])}`" if cfg["transcriber_args"] else "")
        + ".",
        "",
        "| run | " + " | ".join(title for _, title, _ in METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for key, run in all_runs(results).items():
        cells = [_cell(run.get(metric), fmt) for metric, _, fmt in METRICS]
        note = " (stopped at first segment)" if run.get("stopped_early") else ""
        lines.append(f"| {key}{note} | " + " | ".join(cells) + " |")
    lines += ["", "| goal | value | target | met |", "|---|---:|---:|:---:|"]
    for goal in results["ratios"].values():
        met = {True: "yes", False: "**no**", None: "—"}[goal["met"]]
        value = _cell(goal["value"], "{:.4f}" if goal["kind"] == "difference" else "{:.3f}")
        lines.append(f"| {goal['label']} | {value} | ≤ {goal['goal']:g} | {met} |")
    lines += _engine_calls(results)
    lines += ["", "![wall, first segment and segment arrivals per system](results.svg)"]
    return "\n".join(lines) + "\n"


def _engine_calls(results: dict) -> list[str]:
    """How streamscribe's runs decoded: batch sizes used and fallback re-decodes (from the
    CLI's ``done`` event)."""
    lines = ["", "| streamscribe run | segments by batch size | fallback re-decodes |", "|---|---|---:|"]
    for key, run in all_runs(results).items():
        done = run.get("child_done") or {}
        if "batch_sizes" in done:
            by_size = sorted(done["batch_sizes"].items(), key=lambda kv: int(kv[0]))
            sizes = ", ".join(f"batch {size}: {n}" for size, n in by_size)
            lines.append(f"| {key} | {sizes or '—'} | {done.get('redecoded_segments', 0)} |")
    return lines if len(lines) > 3 else []
