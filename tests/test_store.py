"""The SQLite job store: jobs, ordered events, the cache lookup, resume data, many threads."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from app.store import JobRecord, SQLiteStore, StoredEvent, completed_segments
from transcriber.events import Meta, Progress, SegmentDone, from_dict, to_dict
from transcriber.vocab import JobStatus


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "db" / "jobs.sqlite3")
    yield s
    s.close()


def _job(job_id: str, key: str = "k", **kw) -> JobRecord:
    return JobRecord(id=job_id, key=key, request={"url": f"https://youtu.be/{job_id}", "mode": "parallel"}, **kw)


def _seg(index: int, text: str) -> StoredEvent:
    seg = SegmentDone(index=index, start=index * 5.0, end=index * 5.0 + 5, text=text,
                      pieces=[{"start": index * 5.0, "end": index * 5.0 + 2, "text": text}])
    return StoredEvent(0, seg.type, to_dict(seg))


def test_job_round_trip_and_updates(store):
    store.create_job(_job("a"))
    got = store.get_job("a")
    assert got.request == {"url": "https://youtu.be/a", "mode": "parallel"}
    assert got.status == "queued" and got.title is None
    before = got.updated
    time.sleep(0.01)
    store.update_job("a", status="running", title="Ask not", duration=11.0, source_id="yt1")
    got = store.get_job("a")
    assert (got.status, got.title, got.duration, got.source_id) == ("running", "Ask not", 11.0, "yt1")
    assert got.updated > before
    assert store.get_job("missing") is None
    with pytest.raises(ValueError, match="cannot update"):
        store.update_job("a", key="other")


def test_events_are_ordered_unique_and_filtered(store):
    store.create_job(_job("a"))
    meta = Meta(source_id="s", title="t", duration=3.0, engine="faster-whisper", model="tiny.en")
    store.append_event("a", StoredEvent(1, "meta", to_dict(meta)))
    for seq in (2, 3, 4):
        store.append_event("a", StoredEvent(seq, "progress", {"type": "progress", "n": seq}))
    assert [e.seq for e in store.events("a")] == [1, 2, 3, 4]
    assert [e.seq for e in store.events("a", after=2)] == [3, 4]
    assert from_dict(store.events("a")[0].data) == meta
    # The same seq twice would mean a listener saw two different events under one id.
    with pytest.raises(sqlite3.IntegrityError):
        store.append_event("a", StoredEvent(3, "progress", {}))
    # Events of an unknown job are refused (foreign key), not silently orphaned.
    with pytest.raises(sqlite3.IntegrityError):
        store.append_event("nope", StoredEvent(1, "progress", {}))


def test_find_by_key_newest_with_status(store):
    store.create_job(_job("old", key="k1", created=1.0))
    store.create_job(_job("new", key="k1", created=2.0))
    store.create_job(_job("other", key="k2", created=3.0))
    store.update_job("old", status="done")
    store.update_job("new", status="error")
    assert store.find_by_key("k1").id == "new"
    assert store.find_by_key("k1", ("done",)).id == "old"
    assert store.find_by_key("k1", ("running", JobStatus.INTERRUPTED)) is None
    assert store.find_by_key("zzz") is None
    assert [j.id for j in store.jobs_with_status(("queued",))] == ["other"]


def test_completed_segments_for_resume(store):
    store.create_job(_job("a"))
    events = [_seg(2, "c"), _seg(0, "a"), _seg(2, "c again")]
    events.insert(1, StoredEvent(0, "progress", to_dict(Progress(1, 3, 5.0, 15.0, None, 1))))
    for seq, ev in enumerate(events, start=1):
        store.append_event("a", StoredEvent(seq, ev.type, ev.data))
    done = completed_segments(store.events("a"))
    assert [(s.index, s.text) for s in done] == [(0, "a"), (2, "c again")]
    assert all(isinstance(s, SegmentDone) for s in done)
    assert done[0].pieces[0]["text"] == "a"


def test_persists_across_instances_in_wal_mode(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = SQLiteStore(path)
    first.create_job(_job("a"))
    first.append_event("a", StoredEvent(1, "progress", {"x": 1}))
    first.close()
    second = SQLiteStore(path)
    try:
        assert second.get_job("a").id == "a"
        assert second.events("a")[0].data == {"x": 1}
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        second.close()


def test_many_threads_write_and_read_at_once(store):
    jobs, per_job = 8, 60
    for n in range(jobs):
        store.create_job(_job(f"j{n}", key=f"k{n}"))
    errors: list[BaseException] = []
    seen: dict[str, int] = {}

    def writer(n: int) -> None:
        try:
            for seq in range(1, per_job + 1):
                store.append_event(f"j{n}", StoredEvent(seq, "progress", {"seq": seq}))
                if seq % 10 == 0:
                    store.update_job(f"j{n}", status="running")
                    seen[f"j{n}"] = len(store.events(f"j{n}"))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in range(jobs):
        assert [e.seq for e in store.events(f"j{n}")] == list(range(1, per_job + 1))
        assert seen[f"j{n}"] == per_job
