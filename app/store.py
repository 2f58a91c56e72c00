"""Where jobs and their events live: every event is stored before any listener sees it.

:class:`Store` is the small protocol the job manager needs; :class:`SQLiteStore` implements it
with the standard library (one file under the data directory, WAL mode). The Modal deployment
implements the same protocol on ``modal.Dict``. Every method is blocking and safe to call from
any thread: async code calls them through ``asyncio.to_thread``.

An event is stored as ``(job_id, seq, type, data)`` where ``seq`` is 1, 2, 3... per job (the
SSE ``id:``) and ``data`` is :func:`transcriber.events.to_dict` of the event.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from transcriber.events import SegmentDone, from_dict
from transcriber.vocab import JobStatus


@dataclass
class JobRecord:
    id: str
    #: The cache key: source + engine + model + options (see ``app.jobs.cache_key``).
    key: str
    #: The request as JSON-ready data (``app.jobs.JobRequest`` fields).
    request: dict[str, Any]
    status: str = JobStatus.QUEUED
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    title: str | None = None
    duration: float | None = None
    source_id: str | None = None
    #: The fatal error's message when ``status == "error"``.
    error: str | None = None


@dataclass
class StoredEvent:
    seq: int
    type: str
    data: dict[str, Any]


class Store(Protocol):
    """Persistence for jobs and events. Blocking, thread-safe; ``seq`` is unique per job."""

    def create_job(self, job: JobRecord) -> None: ...

    def get_job(self, job_id: str) -> JobRecord | None: ...

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set some of ``status``, ``title``, ``duration``, ``source_id``, ``error``."""
        ...

    def find_by_key(self, key: str, statuses: Iterable[str] | None = None) -> JobRecord | None:
        """The newest job with this cache key (and one of ``statuses`` when given)."""
        ...

    def jobs_with_status(self, statuses: Iterable[str]) -> list[JobRecord]: ...

    def append_event(self, job_id: str, event: StoredEvent) -> None:
        """Store one event; a second event with the same ``(job_id, seq)`` is an error."""
        ...

    def events(self, job_id: str, after: int = 0) -> list[StoredEvent]:
        """The job's events with ``seq > after``, in order."""
        ...

    def close(self) -> None: ...


@dataclass
class PlaylistRecord:
    """A playlist link turned into jobs: one per entry, made when the playlist was."""

    id: str
    url: str
    title: str
    #: ``{"index", "job_id", "title", "url"}`` per entry, in playlist order.
    entries: list[dict[str, Any]]
    #: ``running`` until every entry ended, then ``done`` (some entry done), ``error`` (none)
    #: or ``cancelled``.
    status: str = JobStatus.RUNNING
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    #: Entries the site listed (more than ``len(entries)`` when cut at the limit; None: unknown).
    total: int | None = None
    #: Why the playlist was cut, for people; None when it was not.
    notice: str | None = None


class PlaylistStore(Protocol):
    """What playlists need beside :class:`Store`: their records and their own event log (every
    entry's events tagged with its job id, plus ``playlist`` progress; ``seq`` per playlist)."""

    def create_playlist(self, playlist: PlaylistRecord) -> None: ...

    def get_playlist(self, playlist_id: str) -> PlaylistRecord | None: ...

    def update_playlist(self, playlist_id: str, *, status: str) -> None: ...

    def append_playlist_event(self, playlist_id: str, event: StoredEvent) -> None: ...

    def playlist_events(self, playlist_id: str, after: int = 0) -> list[StoredEvent]: ...


def completed_segments(events: Iterable[StoredEvent]) -> list[SegmentDone]:
    """The finished segments among ``events``, one per index (what ``completed=`` resumes from)."""
    by_index: dict[int, SegmentDone] = {}
    for ev in events:
        if ev.type == SegmentDone.type:
            seg = from_dict(ev.data)
            assert isinstance(seg, SegmentDone)
            by_index[seg.index] = seg
    return [by_index[i] for i in sorted(by_index)]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    title TEXT,
    duration REAL,
    source_id TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key, created);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS playlists (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    title TEXT NOT NULL,
    entries TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    total INTEGER,
    notice TEXT
);
CREATE TABLE IF NOT EXISTS playlist_events (
    playlist_id TEXT NOT NULL REFERENCES playlists (id),
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (playlist_id, seq)
) WITHOUT ROWID;
"""

_UPDATABLE = ("status", "title", "duration", "source_id", "error")


class SQLiteStore:
    """A :class:`Store` (and :class:`PlaylistStore`) in one SQLite file.

    One connection per thread (sqlite3 connections must not be shared across threads without
    care), WAL so readers never wait for the writer, and a lock around writes so concurrent
    ``to_thread`` calls do not trip over ``database is locked``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        with self._write_lock:
            self._db().executescript(_SCHEMA)  # executescript manages its own transaction

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # Durable enough for a job log (an OS crash may lose the last events, a process
            # crash loses nothing) and much faster than FULL on every event.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _job(row: sqlite3.Row | None) -> JobRecord | None:
        if row is None:
            return None
        data = dict(row)
        data["request"] = json.loads(data["request"])
        return JobRecord(**data)

    def create_job(self, job: JobRecord) -> None:
        row = asdict(job)
        row["request"] = json.dumps(job.request)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._write() as db:
            db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))

    def get_job(self, job_id: str) -> JobRecord | None:
        return self._job(self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def update_job(self, job_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(_UPDATABLE)
        if unknown:
            raise ValueError(f"cannot update job fields {sorted(unknown)}")
        fields["updated"] = time.time()
        sets = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def find_by_key(self, key: str, statuses: Iterable[str] | None = None) -> JobRecord | None:
        sql, args = "SELECT * FROM jobs WHERE key = ?", [key]
        if statuses is not None:
            statuses = list(statuses)
            sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
            args += statuses
        row = self._db().execute(sql + " ORDER BY created DESC LIMIT 1", args).fetchone()
        return self._job(row)

    def jobs_with_status(self, statuses: Iterable[str]) -> list[JobRecord]:
        statuses = list(statuses)
        marks = ", ".join("?" for _ in statuses)
        rows = self._db().execute(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created", statuses
        ).fetchall()
        return [job for r in rows if (job := self._job(r)) is not None]

    def append_event(self, job_id: str, event: StoredEvent) -> None:
        self._append("events", "job_id", job_id, event)

    def events(self, job_id: str, after: int = 0) -> list[StoredEvent]:
        return self._events("events", "job_id", job_id, after)

    # One event log per table: (owner id, seq) unique, read back in seq order.

    def _append(self, table: str, owner: str, owner_id: str, event: StoredEvent) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT INTO {table} ({owner}, seq, type, data) VALUES (?, ?, ?, ?)",
                (owner_id, event.seq, event.type, json.dumps(event.data)),
            )

    def _events(self, table: str, owner: str, owner_id: str, after: int) -> list[StoredEvent]:
        rows = self._db().execute(
            f"SELECT seq, type, data FROM {table} WHERE {owner} = ? AND seq > ? ORDER BY seq",
            (owner_id, after),
        ).fetchall()
        return [StoredEvent(r["seq"], r["type"], json.loads(r["data"])) for r in rows]

    # -- playlists ----------------------------------------------------------------------------

    def create_playlist(self, playlist: PlaylistRecord) -> None:
        row = asdict(playlist)
        row["entries"] = json.dumps(playlist.entries)
        cols, marks = ", ".join(row), ", ".join("?" for _ in row)
        with self._write() as db:
            db.execute(f"INSERT INTO playlists ({cols}) VALUES ({marks})", tuple(row.values()))

    def get_playlist(self, playlist_id: str) -> PlaylistRecord | None:
        row = self._db().execute("SELECT * FROM playlists WHERE id = ?", (playlist_id,)).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["entries"] = json.loads(data["entries"])
        return PlaylistRecord(**data)

    def update_playlist(self, playlist_id: str, *, status: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE playlists SET status = ?, updated = ? WHERE id = ?",
                (status, time.time(), playlist_id),
            )

    def append_playlist_event(self, playlist_id: str, event: StoredEvent) -> None:
        self._append("playlist_events", "playlist_id", playlist_id, event)

    def playlist_events(self, playlist_id: str, after: int = 0) -> list[StoredEvent]:
        return self._events("playlist_events", "playlist_id", playlist_id, after)

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
