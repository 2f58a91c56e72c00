"""Run one system as a child process and measure it from outside.

Every system prints NDJSON on stdout with ``{"type": "segment", "index", "text", ...}`` lines
(streamscribe's CLI natively, the whole-file peers through :mod:`bench.whole_file`). The clock
starts just before the process is spawned, so wall time and time to first segment include
interpreter start, imports and model loading: what a user waits for.

Peak memory is the sum of RSS over the child's whole process tree (the CLI plus its pool
workers), sampled every ``RSS_INTERVAL_S``. A sum of RSS counts pages shared between processes
(libraries) once per process: an upper bound, and the same rule for every system.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RSS_INTERVAL_S = 0.05


class BenchError(Exception):
    """A system failed to run; the message says which and shows its stderr tail."""


@dataclass
class Run:
    """What one child process did, as seen from outside."""

    wall_s: float
    first_segment_s: float | None
    peak_rss_mb: float
    #: Segment texts in index order (streamscribe's arrive out of order).
    text: str
    segments: int
    failed_segments: int = 0
    #: CPU seconds (user + system) of the whole process tree: unlike wall time, barely moved
    #: by other load on the machine, so it is the figure to compare tuning changes by.
    cpu_s: float = 0.0
    #: True when the run was stopped after its first segment (wall_s is then that moment).
    stopped_early: bool = False
    peak_processes: int = 1
    #: Seconds from launch at which each segment line arrived, in arrival order.
    arrivals: list[float] = field(default_factory=list)
    #: The child's own ``done`` event, when it sent one (engine timings, stats).
    done: dict = field(default_factory=dict)
    loadavg_before: list[float] = field(default_factory=list)
    loadavg_after: list[float] = field(default_factory=list)
    #: Every timed piece ``{"start", "end", "text"}``: a streamscribe segment's pieces, or a
    #: peer's segment itself (the mixed input counts the words inside non-speech by them).
    pieces: list[dict] = field(default_factory=list)


class TreeSampler(threading.Thread):
    """Samples the RSS summed over a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._halt = threading.Event()
        self._known: dict[int, psutil.Process] = {}

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for proc in procs:
            # Reuse Process objects so psutil's pid-reuse check stays cheap.
            proc = self._known.setdefault(proc.pid, proc)
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        self.peak_bytes = max(self.peak_bytes, total)
        self.peak_processes = max(self.peak_processes, len(procs))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def run_child(
    name: str,
    command: list[str],
    log_dir: Path,
    *,
    stop_after_first_segment: bool = False,
    env: dict[str, str] | None = None,
) -> Run:
    """Spawn ``command``, read its NDJSON events, sample its memory; return the measurements."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"{name}.stderr.log"
    stdout_path = log_dir / f"{name}.stdout.tsv"
    texts: dict[int, str] = {}
    pieces: list[dict] = []
    arrivals: list[float] = []
    first: float | None = None
    failed = 0
    done: dict = {}
    stopped = False
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(stderr_path, "wb") as err, open(stdout_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, env=env, text=True, bufsize=1
        )
        sampler = TreeSampler(proc.pid)
        sampler.sample()
        sampler.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.perf_counter() - t0
                log.write(f"{now:.3f}\t{line}")  # arrival times, for looking at the timeline
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a stray print is not an event
                kind = event.get("type") if isinstance(event, dict) else None
                if kind == "segment":
                    arrivals.append(round(now, 3))
                    if first is None:
                        first = now
                    texts[int(event["index"])] = str(event.get("text", "")).strip()
                    pieces.extend(event.get("pieces") or ([event] if "start" in event else []))
                    if stop_after_first_segment:
                        stopped = True
                        break
                elif kind == "segment_error":
                    failed += 1
                elif kind == "done":
                    done = event
            if stopped:
                _kill_tree(proc.pid)
            returncode = proc.wait()
            wall = first if stopped and first is not None else time.perf_counter() - t0
        finally:
            sampler.stop()
            if proc.poll() is None:
                _kill_tree(proc.pid)
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    if returncode != 0 and not stopped:
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"{name} exited with {returncode}: {' '.join(command)}\n{tail}")
    if first is None:
        raise BenchError(f"{name} produced no segment (log: {stdout_path})")
    return Run(
        wall_s=wall,
        first_segment_s=first,
        peak_rss_mb=sampler.peak_bytes / 2**20,
        text=" ".join(t for _, t in sorted(texts.items()) if t),
        segments=len(texts),
        failed_segments=failed,
        cpu_s=cpu_s,
        stopped_early=stopped,
        peak_processes=sampler.peak_processes,
        done=done,
        arrivals=arrivals,
        loadavg_before=loadavg_before,
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
        pieces=pieces,
    )
