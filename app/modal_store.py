"""A :class:`~app.store.Store` on a ``modal.Dict``: the Modal deployment's job log.

A web container's disk goes when the container does; a ``modal.Dict`` is durable, so a job's
events survive a restart and an interrupted job resumes from its finished segments. The Dict
is a key-value map with one network round trip per call and no range queries, so the layout
is chosen for the calls :class:`~app.jobs.JobManager` makes:

=============================  ================================================================
key                            value (JSON text, so no pickled class ties the Dict to our code)
=============================  ================================================================
``job:<id>``                   the :class:`~app.store.JobRecord` fields
``jobs-by-key:<cache key>``    job ids with that cache key, oldest first
``jobs-by-status:<status>``    job ids with that status
``events:<id>``                ``{"last": seq, "firsts": [...]}``: newest seq, each page's first
``events:<id>:<page>``         up to :data:`PAGE_SIZE` events ``[seq, type, data]``
=============================  ================================================================

Appending an event writes its page and the counter in one ``update`` call; reading events
after ``seq`` fetches the counter and only the pages from there on. Writes assume one writer
process, as the deployment has (one web container, see ``app.modal_app``): a lock orders this
process's writes, and the tail page of each recent job is cached so an append costs one call.

Entries of a ``modal.Dict`` expire after 7 days without a read or write; an expired job simply
is not found any more (the index lists skip ids whose record is gone).
"""

from __future__ import annotations

import json
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any, Protocol

from app.store import JobRecord, StoredEvent

#: Events per Dict entry: a reconnect after N events costs about N / PAGE_SIZE calls.
PAGE_SIZE = 50
#: Jobs whose tail page stays cached for cheap appends (each holds at most one page).
TAIL_CACHE = 64

_UPDATABLE = ("status", "title", "duration", "source_id", "error")
_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))


class DuplicateEvent(ValueError):
    """An event with a ``seq`` the job already has (the store never overwrites history)."""


class UnknownJob(ValueError):
    """Events for a job the store does not have (they would be orphans nobody can list)."""


class KeyValue(Protocol):
    """The blocking slice of ``modal.Dict`` this store uses."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def put(self, key: str, value: Any) -> Any: ...

    def update(self, other: dict[str, Any], /) -> None: ...


class ModalDictStore:
    """:class:`~app.store.Store` over a ``modal.Dict`` (``modal.Dict.from_name(...)``)."""

    def __init__(self, kv: KeyValue, *, page_size: int = PAGE_SIZE):
        self.kv = kv
        self.page_size = page_size
        self._lock = threading.RLock()
        #: job id -> (the last page's events, the job's counter): where appends go.
        self._tails: OrderedDict[str, tuple[list, dict]] = OrderedDict()

    # -- JSON values -----------------------------------------------------------------------

    def _read(self, key: str, default: Any = None) -> Any:
        raw = self.kv.get(key)
        return default if raw is None else json.loads(raw)

    @staticmethod
    def _dump(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    # -- jobs ------------------------------------------------------------------------------

    def create_job(self, job: JobRecord) -> None:
        with self._lock:
            if self.kv.get(f"job:{job.id}") is not None:
                raise ValueError(f"job {job.id} already exists")
            by_key = self._read(f"jobs-by-key:{job.key}", [])
            by_status = self._read(f"jobs-by-status:{job.status}", [])
            self.kv.update(
                {
                    f"job:{job.id}": self._dump(asdict(job)),
                    f"jobs-by-key:{job.key}": self._dump([*by_key, job.id]),
                    f"jobs-by-status:{job.status}": self._dump([*by_status, job.id]),
                }
            )

    def get_job(self, job_id: str) -> JobRecord | None:
        data = self._read(f"job:{job_id}")
        if data is None:
            return None
        return JobRecord(**{k: v for k, v in data.items() if k in _JOB_FIELDS})

    def update_job(self, job_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(_UPDATABLE)
        if unknown:
            raise ValueError(f"cannot update job fields {sorted(unknown)}")
        with self._lock:
            job = self.get_job(job_id)
            if job is None:
                return  # as SQL's UPDATE of a missing row: nothing to change
            old_status = job.status
            for name, value in changes.items():
                setattr(job, name, value)
            job.updated = time.time()
            writes = {f"job:{job_id}": self._dump(asdict(job))}
            if job.status != old_status:
                leaving = self._read(f"jobs-by-status:{old_status}", [])
                joining = self._read(f"jobs-by-status:{job.status}", [])
                writes[f"jobs-by-status:{old_status}"] = self._dump(
                    [i for i in leaving if i != job_id]
                )
                writes[f"jobs-by-status:{job.status}"] = self._dump([*joining, job_id])
            self.kv.update(writes)

    def _jobs(self, ids: Iterable[str]) -> list[JobRecord]:
        return [job for job in map(self.get_job, dict.fromkeys(ids)) if job is not None]

    def find_by_key(self, key: str, statuses: Iterable[str] | None = None) -> JobRecord | None:
        wanted = None if statuses is None else set(statuses)
        jobs = self._jobs(self._read(f"jobs-by-key:{key}", []))
        for job in sorted(jobs, key=lambda j: j.created, reverse=True):
            if wanted is None or job.status in wanted:
                return job
        return None

    def jobs_with_status(self, statuses: Iterable[str]) -> list[JobRecord]:
        statuses = set(statuses)
        ids = [i for s in sorted(statuses) for i in self._read(f"jobs-by-status:{s}", [])]
        # The index is a hint; the record's own status is the truth.
        jobs = [job for job in self._jobs(ids) if job.status in statuses]
        return sorted(jobs, key=lambda j: j.created)

    # -- events ----------------------------------------------------------------------------

    def _counter(self, job_id: str) -> dict:
        return self._read(f"events:{job_id}", {"last": 0, "firsts": []})

    def _tail(self, job_id: str) -> tuple[list, dict]:
        tail = self._tails.get(job_id)
        if tail is None:
            if self.kv.get(f"job:{job_id}") is None:
                raise UnknownJob(f"no job {job_id}: events belong to a job made by create_job")
            counter = self._counter(job_id)
            page = len(counter["firsts"]) - 1
            events = self._read(f"events:{job_id}:{page}", []) if page >= 0 else []
            tail = (events, counter)
        self._tails[job_id] = tail
        self._tails.move_to_end(job_id)
        while len(self._tails) > TAIL_CACHE:
            self._tails.popitem(last=False)
        return tail

    def append_event(self, job_id: str, event: StoredEvent) -> None:
        with self._lock:
            events, counter = self._tail(job_id)
            if event.seq <= counter["last"]:
                raise DuplicateEvent(
                    f"job {job_id} already has events up to seq {counter['last']}; got {event.seq}"
                )
            firsts = counter["firsts"]
            if not firsts or len(events) >= self.page_size:
                firsts, events = [*firsts, event.seq], []
            events = [*events, [event.seq, event.type, event.data]]
            counter = {"last": event.seq, "firsts": firsts}
            self.kv.update(
                {
                    f"events:{job_id}:{len(firsts) - 1}": self._dump(events),
                    f"events:{job_id}": self._dump(counter),
                }
            )
            self._tails[job_id] = (events, counter)

    def events(self, job_id: str, after: int = 0) -> list[StoredEvent]:
        counter = self._counter(job_id)
        if counter["last"] <= after:
            return []
        # ``firsts`` holds each page's first seq: skip the pages that end at or before ``after``.
        first_page = max(bisect_right(counter["firsts"], after) - 1, 0)
        out: list[StoredEvent] = []
        for page in range(first_page, len(counter["firsts"])):
            for seq, type_, data in self._read(f"events:{job_id}:{page}", []):
                if seq > after:
                    out.append(StoredEvent(seq, type_, data))
        return out

    def close(self) -> None:
        """Nothing to close: every call is its own request."""
        with self._lock:
            self._tails.clear()
