"""``python -m bench``: every system on the same input, one after the other, then the report.

    python -m bench [--input FILE --ref REF.txt] [--minutes N] [--engine ...] [--model ...]
                    [--beam-size N] [--long] [--systems a,b,...] [--out DIR]

Writes ``DIR/results.json`` and ``DIR/RESULTS.md`` (DIR defaults to ``bench/``) and prints
the table. See ``bench/NOTES.md`` for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from bench import inputs, mixed
from bench.chart import CHART_NAME, draw_chart
from bench.measure import BenchError, Run, run_child
from bench.report import evaluate_goals, markdown, word_error_rate
from bench.systems import BenchConfig, all_systems, child_env, default_systems, resolve_weights

BENCH_DIR = Path(__file__).resolve().parent

#: The ``--long`` runs of streamscribe: key -> (minutes, stop after the first segment).
#: 60 min only measures time to first segment (the rest would repeat the main run's speed);
#: 3 h runs to the end, since flat memory means flat over the whole job.
LONG_RUNS: dict[str, tuple[float, bool]] = {"ttfs_60min": (60.0, True), "rss_3h": (180.0, False)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "cuda_devices": cuda_devices(),
    }


def cuda_devices() -> int:
    """CUDA GPUs CTranslate2 sees (0 here: every figure is a CPU figure)."""
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count()
    except Exception:  # no CTranslate2, or a broken CUDA install: no GPU figures either way
        return 0


def run_record(run: Run, bench_input: inputs.BenchInput, command: list[str]) -> dict:
    """One run as it goes into results.json."""
    record = {
        "wall_s": round(run.wall_s, 3),
        "first_segment_s": None if run.first_segment_s is None else round(run.first_segment_s, 3),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "wer": None,
        "speed_x": None,
        "cpu_s": round(run.cpu_s, 2),
        "cpu_s_per_audio_min": round(run.cpu_s / (bench_input.duration_s / 60), 2),
        "segments": run.segments,
        "failed_segments": run.failed_segments,
        "stopped_early": run.stopped_early,
        "peak_processes": run.peak_processes,
        "input_s": round(bench_input.duration_s, 3),
        "loadavg_before": run.loadavg_before,
        "loadavg_after": run.loadavg_after,
        "child_done": run.done,
        "arrivals": run.arrivals,
        "command": command,
    }
    if run.stopped_early:
        record["cpu_s"] = None  # the killed tree's CPU time is not collected
        record["cpu_s_per_audio_min"] = None
    else:
        record["wer"] = round(word_error_rate(bench_input.reference, run.text), 4)
        record["speed_x"] = round(bench_input.duration_s / run.wall_s, 2)
    return record


#: Figures of a repeated system that are reported as the median over its runs.
MEDIAN_FIGURES = (
    "wall_s", "first_segment_s", "peak_rss_mb", "wer", "speed_x", "cpu_s", "cpu_s_per_audio_min"
)


def median_record(records: list[dict]) -> dict:
    """One system's record: the first run's, each figure replaced by its median over runs,
    and every run's figures under ``runs`` (when there was more than one)."""
    record = dict(records[0])
    if len(records) > 1:
        for key in MEDIAN_FIGURES:
            values = [r[key] for r in records if r[key] is not None]
            record[key] = statistics.median(values) if values else None
        record["runs"] = [
            {key: r[key] for key in (*MEDIAN_FIGURES, "loadavg_before")} for r in records
        ]
    return record


def mixed_section(chosen: list[str], measure_run) -> dict:
    """The chosen systems of :data:`bench.mixed.MIXED_SYSTEMS` on the mixed input, scored."""
    wav_input, blocks = mixed.mixed_input()
    systems = {}
    for name in (n for n in chosen if n in mixed.MIXED_SYSTEMS):
        print(f"[bench] mixed.{name} ...", file=sys.stderr, flush=True)
        run, record = measure_run(name, f"mixed.{name}", wav_input)
        systems[name] = {**mixed.score(record, run.pieces, blocks), "text": run.text}
        print(f"[bench] mixed.{name}: WER {record['wer']}, words in non-speech "
              f"{systems[name]['words_in_non_speech']}", file=sys.stderr, flush=True)
    arranged = _arrangements([n for n in systems if n in mixed.ARRANGED_SYSTEMS], systems, wav_input, measure_run)
    return {"input": wav_input.describe(), "blocks": blocks, "systems": systems,
            "arrangements": arranged, "goals": mixed.goals(systems, arranged["systems"])}


def _arrangements(names: list[str], first: dict[str, dict], first_input: inputs.BenchInput, measure_run) -> dict:
    """``names`` on the other arrangements of the mixed input, pooled with their bench-input run."""
    runs: dict[str, list[tuple[str, str, float, int]]] = {
        name: [(first_input.reference, first[name]["text"], first[name]["wer"], first[name]["words_in_non_speech"])]
        for name in names
    }
    words = len(first_input.reference.split())
    for k in range(1, mixed.ARRANGEMENTS):
        wav_input, blocks = mixed.mixed_input(arrangement=k)
        words += len(wav_input.reference.split())
        for name in names:
            run, record = measure_run(name, f"mixed.{k}.{name}", wav_input)
            inside = mixed.score(record, run.pieces, blocks)["words_in_non_speech"]
            runs[name].append((wav_input.reference, run.text, record["wer"], inside))
        print(f"[bench] mixed arrangement {k}: " + ", ".join(f"{n} {runs[n][-1][2]:.3f}" for n in names),
              file=sys.stderr, flush=True)
    return {"count": mixed.ARRANGEMENTS, "words": words, "systems": {name: mixed.pooled(r) for name, r in runs.items()}}


def _mixed_only(args: argparse.Namespace, chosen: list[str], measure_run) -> int:
    """``--mixed-only``: the mixed section alone, in ``OUT/mixed.json`` and printed."""
    try:
        section = mixed_section(chosen, measure_run)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mixed.json").write_text(json.dumps(section, indent=2) + "\n")
    print(mixed.markdown(section))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, help="an audio file (16 kHz mono 16-bit wav)")
    p.add_argument("--ref", type=Path, help="its reference transcript (with --input)")
    p.add_argument("--minutes", type=float, default=inputs.DEFAULT_MINUTES,
                   help="length of the generated fixture input (default %(default)s)")
    p.add_argument("--seed", type=int, default=inputs.DEFAULT_SEED)
    p.add_argument("--engine", default="faster-whisper", choices=("faster-whisper", "openai-whisper"),
                   help="streamscribe's engine")
    p.add_argument("--model", default="tiny.en", help="name or local path (default %(default)s)")
    p.add_argument("--beam-size", type=int, default=5, help="every system's beam size")
    p.add_argument("--compute-type", default="int8", help="CTranslate2 compute type")
    p.add_argument("--workers", type=int, help="streamscribe --workers (default: the CLI's)")
    p.add_argument("--transcriber-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for streamscribe's CLI (repeatable), for tuning runs")
    p.add_argument("--systems", default=",".join(default_systems()),
                   help=f"comma-separated, of {', '.join(all_systems())} (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each system N times, round-robin, and report medians (systems "
                        "marked slow, like openai-whisper, run once)")
    p.add_argument("--long", action="store_true",
                   help="also streamscribe on 60 min (first segment) and 3 h (peak memory)")
    p.add_argument("--long-minutes", default=None, metavar="TTFS,RSS",
                   help="override the --long lengths (default 60,180)")
    p.add_argument("--no-mixed", dest="mixed", action="store_false",
                   help="skip the mixed speech + music/noise input (bench/mixed.py)")
    p.add_argument("--mixed-only", action="store_true",
                   help="run only the mixed input (its section of results.json and RESULTS.md)")
    p.add_argument("--out", type=Path, default=BENCH_DIR,
                   help="where results.json and RESULTS.md go (default bench/)")
    args = p.parse_args(argv)
    if (args.input is None) != (args.ref is None):
        p.error("--input and --ref go together")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    systems = all_systems()
    chosen = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in systems]
    if unknown:
        print(f"error: unknown system(s) {unknown}; known: {list(systems)}", file=sys.stderr)
        return 2
    long_runs = dict(LONG_RUNS)
    if args.long_minutes:
        ttfs, rss = (float(x) for x in args.long_minutes.split(","))
        long_runs = {"ttfs_60min": (ttfs, True), "rss_3h": (rss, False)}

    cfg = BenchConfig(
        engine=args.engine, model=args.model, beam_size=args.beam_size,
        compute_type=args.compute_type, workers=args.workers,
        transcriber_args=tuple(args.transcriber_arg),
    )
    results: dict = {"schema": 1, "machine": machine_info()}
    try:
        bench_input = (
            inputs.from_file(args.input, args.ref) if args.input
            else inputs.long_form(args.minutes, args.seed)
        )
        # Converted outside the timed runs: a one-off cost, cached.
        weights = resolve_weights(args.model)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results["config"] = {**cfg.__dict__, "transcriber_args": list(cfg.transcriber_args),
                         "weights": weights.__dict__, "systems": chosen, "repeat": args.repeat}
    results["input"] = bench_input.describe()
    log_dir = args.out / "logs" if args.out != BENCH_DIR else inputs.WORK / "logs"
    env = child_env()

    def measure(name: str, label: str, wav_input: inputs.BenchInput, stop: bool = False) -> dict:
        command = systems[name].command(wav_input.wav, cfg, weights)
        print(f"[bench] {label}: {wav_input.duration_s / 60:.1f} min ...", file=sys.stderr, flush=True)
        run = run_child(label, command, log_dir, stop_after_first_segment=stop, env=env)
        record = run_record(run, wav_input, command)
        print(f"[bench] {label}: wall {record['wall_s']} s, first segment "
              f"{record['first_segment_s']} s, peak RSS {record['peak_rss_mb']} MB, "
              f"WER {record['wer']}", file=sys.stderr, flush=True)
        return record

    def measure_run(name: str, label: str, wav_input: inputs.BenchInput) -> tuple[Run, dict]:
        command = systems[name].command(wav_input.wav, cfg, weights)
        run = run_child(label, command, log_dir, env=env)
        return run, run_record(run, wav_input, command)

    if args.mixed_only:
        return _mixed_only(args, chosen, measure_run)

    try:
        # Round-robin so a burst of other load on the machine hits every system alike.
        runs: dict[str, list[dict]] = {name: [] for name in chosen}
        for round_no in range(args.repeat):
            for name in chosen:
                if round_no == 0 or systems[name].repeatable:
                    label = name if args.repeat == 1 else f"{name}.{round_no + 1}"
                    runs[name].append(measure(name, label, bench_input))
        results["systems"] = {name: median_record(records) for name, records in runs.items()}
        results["long"] = {key: None for key in long_runs}
        if args.long:
            for key, (minutes, stop) in long_runs.items():
                long_input = inputs.long_form(minutes, args.seed)
                # A run stopped at its first segment takes seconds: repeat it like the others.
                count = args.repeat if stop else 1
                results["long"][key] = median_record([
                    measure("streamscribe", f"long.{key}" + (f".{i + 1}" if count > 1 else ""),
                            long_input, stop)
                    for i in range(count)
                ])
        if args.mixed:
            results["mixed"] = mixed_section(chosen, measure_run)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["ratios"] = evaluate_goals(results)
    table = markdown(results) + mixed.markdown(results.get("mixed") or {})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(table)
    draw_chart(results, args.out / CHART_NAME)
    print(table)
    return 0
