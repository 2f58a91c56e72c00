"""A :class:`~app.store.Store` on a ``modal.Dict``: the Modal deployment's job (and playlist) log.

A web container's disk goes when the container does; a ``modal.Dict`` is durable, so a job's
events survive a restart and an interrupted job resumes from its finished segments. The Dict
is a key-value map with one network round trip per call and no range queries, so the layout
is chosen for the calls :class:`~app.jobs.JobManager` makes:

=============================  ================================================================
key                            value (JSON text, so no pickled class ties the Dict to our code)
=============================  ================================================================
``job:<id>``                   the :class:`~app.store.JobRecord` fields
``jobs-by-key:<cache key>``    the newest :data:`KEY_HISTORY` job ids with that key, oldest first
``jobs-by-status:<status>``    job ids with that status, for the unfinished statuses only
``events:<id>``                ``{"last": seq, "firsts": [...]}``: newest seq, each page's first
``events:<id>:<page>``         up to :data:`PAGE_SIZE` events ``[seq, type, data]``
``lease:<id>:<generation>``    ``{"owner", "expires"}``: which web container runs the job
``playlist:<id>``              the :class:`~app.store.PlaylistRecord` fields (its entries' job ids)
``playlist-events:<id>``       a playlist's own log, paged as a job's (``...:<page>`` entries)
=============================  ================================================================

Appending an event writes its page and the counter in one ``update`` call; reading events
after ``seq`` fetches the counter and only the pages from there on. Writes assume one writer
process, as the deployment has (one web container, see ``app.modal_app``): a lock orders this
process's writes, and the tail page of each recent job is cached so an append costs one call.

Retention. Entries of a ``modal.Dict`` expire after 7 days without a read or write (Modal's rule,
not ours). Everything kept here is bounded so that nothing needs more: the status index lists
only unfinished jobs (queued, running, interrupted; the only ones :class:`~app.jobs.JobManager`
ever lists), so it shrinks as jobs finish instead of growing with every job ever run; the
cache-key index keeps the newest :data:`KEY_HISTORY` ids; a finished job lives as long as it is
asked for (each read refreshes its record) and then expires with its pages. An expired job is
simply not found (the index lists skip ids whose record is gone). A job's record can outlive
its *early* event pages (a long-interrupted job whose record was read but whose first pages
were not): such a job cannot be replayed or resumed, and :meth:`ModalDictStore.events` says so
with :class:`EventsExpired` (HTTP 410) instead of resuming with a hole in its history.
Playlists follow the same rules with no index at all (one is only looked up by its id): its
record lives while it is asked for, each view also reads (so refreshes) its entries' jobs, and
its log pages expire like a job's.

Owner leases. Two web containers can run at once (a rolling redeploy keeps the old one
streaming while the new one starts), and both see the same Dict. Each job has one owner: the
container holding its lease, taken atomically (``put(..., skip_if_exists=True)`` on the next
generation's key, so exactly one contender wins) and renewed by a heartbeat thread every
``lease_s / 4``. A container takes over a job (marks it interrupted, resumes it) only once its
lease expired: its owner died or scaled down without finishing it. See :meth:`claim`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any, Protocol

from app.jobs import JobError
from app.store import JobRecord, PlaylistRecord, StoredEvent
from transcriber.vocab import ACTIVE, FINISHED, JobStatus

log = logging.getLogger("streamscribe.modal_store")

#: Events per Dict entry: a reconnect after N events costs about N / PAGE_SIZE calls.
PAGE_SIZE = 50
#: Jobs whose tail page stays cached for cheap appends (each holds at most one page).
TAIL_CACHE = 64
#: Job ids kept per cache key: the newest finished one is what a repeat request is served.
KEY_HISTORY = 8
#: Seconds a job's owner lease lives without a heartbeat; the heartbeat renews it 4x as often.
LEASE_S = 60.0
#: Statuses the status index keeps (JobManager lists these at start-up, never the finished ones).
INDEXED = (*ACTIVE, JobStatus.INTERRUPTED)

_UPDATABLE = ("status", "title", "duration", "source_id", "error")
_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))
_PLAYLIST_FIELDS = tuple(f.name for f in fields(PlaylistRecord))


class DuplicateEvent(ValueError):
    """An event with a ``seq`` the job already has (the store never overwrites history)."""


class UnknownJob(ValueError):
    """Events for a job (or playlist) the store does not have (orphans nobody can list)."""


class EventsExpired(JobError):
    """Some of a job's event pages expired from the Dict while its record lived on."""

    status = 410
    code = "expired"


class KeyValue(Protocol):
    """The blocking slice of ``modal.Dict`` this store uses."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def put(self, key: str, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def update(self, other: dict[str, Any], /) -> None: ...


class ModalDictStore:
    """:class:`~app.store.Store` and :class:`~app.store.PlaylistStore` over a ``modal.Dict``
    (``modal.Dict.from_name(...)``)."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        page_size: int = PAGE_SIZE,
        lease_s: float = LEASE_S,
        owner: str | None = None,
    ):
        self.kv = kv
        self.page_size = page_size
        self.lease_s = lease_s
        #: This container's name in the leases it holds.
        self.owner = owner or uuid.uuid4().hex
        self._lock = threading.RLock()
        #: log key -> (the last page's events, the log's counter): where appends go.
        self._tails: OrderedDict[str, tuple[list, dict]] = OrderedDict()
        #: job id -> the lease generation this container holds.
        self._held: dict[str, int] = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

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
            writes = {
                f"job:{job.id}": self._dump(asdict(job)),
                f"jobs-by-key:{job.key}": self._dump([*by_key, job.id][-KEY_HISTORY:]),
            }
            if job.status in INDEXED:
                by_status = self._read(f"jobs-by-status:{job.status}", [])
                writes[f"jobs-by-status:{job.status}"] = self._dump([*by_status, job.id])
            self.kv.update(writes)
        if job.status not in FINISHED:
            self.claim(job.id)  # a new job is its creator's

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
                # Only unfinished statuses are indexed: a finished job leaves the index for good.
                if old_status in INDEXED:
                    leaving = self._read(f"jobs-by-status:{old_status}", [])
                    writes[f"jobs-by-status:{old_status}"] = self._dump(
                        [i for i in leaving if i != job_id]
                    )
                if job.status in INDEXED:
                    joining = self._read(f"jobs-by-status:{job.status}", [])
                    writes[f"jobs-by-status:{job.status}"] = self._dump([*joining, job_id])
            self.kv.update(writes)
        if job.status in (*FINISHED, JobStatus.INTERRUPTED):
            # This container is done with the job: whoever resumes it may take it at once.
            self.release(job_id)

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
    # One paged log per owner: a job's under ``events:<id>``, a playlist's under
    # ``playlist-events:<id>``; the same counter, pages and tail cache serve both.

    def _counter(self, log_key: str) -> dict:
        return self._read(log_key, {"last": 0, "firsts": []})

    def _tail(self, log_key: str, record_key: str) -> tuple[list, dict]:
        tail = self._tails.get(log_key)
        if tail is None:
            if self.kv.get(record_key) is None:
                raise UnknownJob(f"no {record_key}: events belong to a job or playlist made first")
            counter = self._counter(log_key)
            page = len(counter["firsts"]) - 1
            events = self._read(f"{log_key}:{page}", []) if page >= 0 else []
            tail = (events, counter)
        self._tails[log_key] = tail
        self._tails.move_to_end(log_key)
        while len(self._tails) > TAIL_CACHE:
            self._tails.popitem(last=False)
        return tail

    def _append(self, log_key: str, record_key: str, event: StoredEvent) -> None:
        with self._lock:
            events, counter = self._tail(log_key, record_key)
            if event.seq <= counter["last"]:
                raise DuplicateEvent(
                    f"{log_key} already has events up to seq {counter['last']}; got {event.seq}"
                )
            firsts = counter["firsts"]
            if not firsts or len(events) >= self.page_size:
                firsts, events = [*firsts, event.seq], []
            events = [*events, [event.seq, event.type, event.data]]
            counter = {"last": event.seq, "firsts": firsts}
            self.kv.update(
                {
                    f"{log_key}:{len(firsts) - 1}": self._dump(events),
                    log_key: self._dump(counter),
                }
            )
            self._tails[log_key] = (events, counter)

    def _events(self, log_key: str, after: int, kind: str, owner_id: str) -> list[StoredEvent]:
        counter = self._counter(log_key)
        if counter["last"] <= after:
            return []
        # ``firsts`` holds each page's first seq: skip the pages that end at or before ``after``
        # (every page before the one that starts at or before ``after + 1``).
        first_page = max(bisect_right(counter["firsts"], after + 1) - 1, 0)
        out: list[StoredEvent] = []
        for page in range(first_page, len(counter["firsts"])):
            events = self._read(f"{log_key}:{page}")
            if events is None:
                raise EventsExpired(
                    f"Events of {kind} {owner_id} from #{counter['firsts'][page]} on have "
                    "expired (the job store keeps entries 7 days after their last use); start "
                    f"the {kind} again."
                )
            out.extend(StoredEvent(seq, type_, data) for seq, type_, data in events if seq > after)
        return out

    def append_event(self, job_id: str, event: StoredEvent) -> None:
        self._append(f"events:{job_id}", f"job:{job_id}", event)

    def events(self, job_id: str, after: int = 0) -> list[StoredEvent]:
        return self._events(f"events:{job_id}", after, "job", job_id)

    # -- playlists -------------------------------------------------------------------------
    # No index: a playlist is only ever looked up by id (a running one resumes when asked for).

    def create_playlist(self, playlist: PlaylistRecord) -> None:
        if not self.kv.put(
            f"playlist:{playlist.id}", self._dump(asdict(playlist)), skip_if_exists=True
        ):
            raise ValueError(f"playlist {playlist.id} already exists")

    def get_playlist(self, playlist_id: str) -> PlaylistRecord | None:
        data = self._read(f"playlist:{playlist_id}")
        if data is None:
            return None
        return PlaylistRecord(**{k: v for k, v in data.items() if k in _PLAYLIST_FIELDS})

    def update_playlist(self, playlist_id: str, *, status: str) -> None:
        with self._lock:
            playlist = self.get_playlist(playlist_id)
            if playlist is None:
                return  # as SQL's UPDATE of a missing row: nothing to change
            playlist.status, playlist.updated = status, time.time()
            self.kv.put(f"playlist:{playlist_id}", self._dump(asdict(playlist)))

    def append_playlist_event(self, playlist_id: str, event: StoredEvent) -> None:
        self._append(f"playlist-events:{playlist_id}", f"playlist:{playlist_id}", event)

    def playlist_events(self, playlist_id: str, after: int = 0) -> list[StoredEvent]:
        return self._events(f"playlist-events:{playlist_id}", after, "playlist", playlist_id)

    # -- owner leases ----------------------------------------------------------------------

    def _lease_key(self, job_id: str, generation: int) -> str:
        return f"lease:{job_id}:{generation}"

    def _newest_lease(self, job_id: str) -> tuple[int, dict | None]:
        """The newest lease generation of a job and its lease (``-1, None`` when it has none)."""
        generation = self._held.get(job_id, 0)
        lease = self._read(self._lease_key(job_id, generation))
        if lease is None and generation == 0:
            return -1, None
        while (newer := self._read(self._lease_key(job_id, generation + 1))) is not None:
            generation, lease = generation + 1, newer
        return generation, lease

    def claim(self, job_id: str) -> bool:
        """Take the job's owner lease; True when this container now runs the job.

        False while another container holds a live lease. An expired lease (its owner died, or
        released it) is replaced by the next generation, written with ``skip_if_exists``: of
        several containers claiming at once, exactly one creates that key.
        """
        with self._lock:
            generation, lease = self._newest_lease(job_id)
            now = time.time()
            if lease is not None and lease["expires"] > now and lease["owner"] != self.owner:
                return False
            if lease is not None and lease["owner"] == self.owner and lease["expires"] > now:
                self._held[job_id] = generation
                return self._renew(job_id)
            taken = self.kv.put(
                self._lease_key(job_id, generation + 1),
                self._dump({"owner": self.owner, "expires": now + self.lease_s}),
                skip_if_exists=True,
            )
            if taken:
                self._held[job_id] = generation + 1
                self._start_heartbeat()
            return bool(taken)

    def _renew(self, job_id: str) -> bool:
        """Push the lease's expiry on; False (and the job let go) if another container took it."""
        generation = self._held.get(job_id)
        if generation is None:
            return False
        if self.kv.get(self._lease_key(job_id, generation + 1)) is not None:
            log.warning("job %s: another container took its lease over", job_id)
            self._held.pop(job_id, None)
            return False
        lease = {"owner": self.owner, "expires": time.time() + self.lease_s}
        self.kv.put(self._lease_key(job_id, generation), self._dump(lease))
        return True

    def release(self, job_id: str) -> None:
        """Give the lease up (expired at once), so another container may take the job now."""
        with self._lock:
            generation = self._held.pop(job_id, None)
            if generation is not None:
                lease = {"owner": self.owner, "expires": 0}
                self.kv.put(self._lease_key(job_id, generation), self._dump(lease))

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or not self._heartbeat.is_alive():
            self._stop.clear()
            self._heartbeat = threading.Thread(
                target=self._beat, name="streamscribe-lease-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            with self._lock:
                for job_id in list(self._held):
                    try:
                        self._renew(job_id)
                    except Exception:  # a Dict hiccup: the next beat tries again
                        log.exception("job %s: lease heartbeat failed", job_id)

    def close(self) -> None:
        """Stop the heartbeat; leases still held then expire after ``lease_s``."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        with self._lock:
            self._tails.clear()
