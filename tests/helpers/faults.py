"""What the fault and load suites need around the real server (streams are read with
``tests.helpers.sse.EventStream``, which can hang up on cue): the server's process tree
(workers, ffmpeg) seen with psutil, and its ``/healthz``. The spoken "talk" they use is
:func:`tests.helpers.media_files.talk_m4a`; polling is :func:`tests.helpers.wait.wait_for`.

Usage::

    from tests.helpers.faults import Tree
    from tests.helpers.media_files import talk_m4a
    from tests.helpers.wait import wait_for

    talk, text = talk_m4a()                        # ~55 s of fixture speech with pauses, AAC
    s = EventStream(svc.url("/transcribe"), json={"url": ...}, leave=lambda e: e.event == "segment")
    s.join()                                       # s.events, s.left_at (when it hung up)
    tree = Tree(svc.pid)
    tree.ffmpeg(), tree.workers(), tree.rss()      # children of the server, resident bytes
    tree.busy_worker()                             # the worker using CPU now (mid-segment)

Nothing here stands in for the service: it only reads what the real processes do.
"""

from __future__ import annotations

import time

import httpx
import psutil

from tests.helpers.pipeline import child_processes


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
