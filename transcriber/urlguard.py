"""The URL guard: which links the service may fetch, and where its requests may go (SSRF).

A user hands the service a URL; yt-dlp and the media download then make HTTP requests on the
user's behalf. Without a guard such a link (or a redirect it answers with) can make the server
talk to itself, its cloud metadata service or anything else on its private network. Three
layers keep every request on the public internet:

1. :func:`check_url` vets the link a user submits: ``http``/``https`` only, a host on the
   allow-list (YouTube's hosts by default), a standard port, and every address the host
   resolves to public. Odd spellings are read as the C library reads them (``2130706433``,
   ``0177.0.0.1``, ``0x7f.1`` and ``127.1`` are all 127.0.0.1) and refused as such.
2. Every TCP connection that yt-dlp (:class:`GuardedYoutubeDL`) or the media download
   (:class:`MediaDownload`) opens is *pinned*: the host is resolved, every address is checked,
   and the socket connects to a checked address, never to a second lookup. That covers each
   redirect hop, each API request yt-dlp makes by itself, and DNS rebinding (a name that
   answers with a public address for the check and a private one for the connection).
3. ffmpeg never touches the network: the media is downloaded by :class:`MediaDownload` and
   piped to ffmpeg's stdin with ``-protocol_whitelist pipe`` (:data:`FFMPEG_PIPE_INPUT`), so
   ffmpeg cannot follow a redirect, re-resolve a name or open a URL named inside the media
   (an HLS playlist, say) on its own.

The host allow-list governs which *links a user may submit* (and so which extractor runs);
the hops after it (yt-dlp's own requests to YouTube's API and CDN hosts such as
``*.googlevideo.com``, redirects, the media download) are held to the scheme, port and address
rules, not to the allow-list, because YouTube's own traffic leaves the allow-listed names.

Residual risks, accepted and documented:

- Containers that need seeking (MP4 with the ``moov`` atom at the end) cannot be decoded from
  a pipe (ffmpeg decodes nothing); YouTube's audio formats (WebM/Opus, DASH M4A) stream fine.
  :func:`transcriber.media.decode` spots such a file from its first boxes
  (:meth:`MediaDownload.peek`) and downloads it to a temporary file first, within the byte
  limit; its first text then waits for the whole download.
- On a pipe ffmpeg states no duration for containers that keep it at the end or derive it from
  the file size (Ogg, MP3 without a header; WAV is read from its own header): for those the
  duration limit holds while decoding rather than before the download.
- HTTP proxies are switched off under the guard: through a proxy the address check would see
  the proxy, not the target.
- Connections made outside these two clients (a library that opens its own sockets) are not
  covered; nothing in ``transcriber`` does that for user-supplied URLs.

This module imports no web framework; ``app/`` builds a :class:`GuardPolicy` from its settings.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
import yt_dlp
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from yt_dlp.networking._requests import RequestsRH
from yt_dlp.networking.exceptions import TransportError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``socket.getaddrinfo``'s shape: ``(host, port, family=0, type=0, ...) -> [(family, type,
#: proto, canonname, sockaddr), ...]``. Tests pass their own to map test names to addresses.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

#: The allow-list entry that admits any host (for local use; the address rules still apply).
ANY_HOST = "*"

#: The hosts a user's link may name by default: YouTube's, and nothing else.
YOUTUBE_HOSTS: tuple[str, ...] = (
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtu.be",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
)

#: yt-dlp extractors (``IE_NAME``) a single YouTube video needs. ``youtube`` takes watch,
#: youtu.be, shorts, embed, live and music links; ``youtube:tab`` takes ``watch?v=ID&list=...``
#: and, with ``noplaylist``, hands the one video back to ``youtube`` without fetching the list;
#: ``YoutubeYtBe`` does the same for ``youtu.be/ID?list=...``.
YOUTUBE_EXTRACTORS: tuple[str, ...] = ("youtube", "youtube:tab", "YoutubeYtBe")

#: Input options for ffmpeg reading the media from stdin (``ffmpeg.input("pipe:0", **these)``):
#: with only the ``pipe`` protocol allowed, nothing in the media can make ffmpeg open a URL.
FFMPEG_PIPE_INPUT: dict[str, str] = {"protocol_whitelist": "pipe"}

_DEFAULT_PORTS = {"http": 80, "https": 443}


# --------------------------------------------------------------------------------------------
# policy, errors, results


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard lets through. Hosts are normalised (lower case, no trailing dot, IDNA)."""

    #: Hosts a submitted link may name, matched exactly (``youtube.com`` does not admit
    #: ``evil-youtube.com`` nor ``youtube.com.evil.com``); ``("*",)`` admits any host.
    allowed_hosts: tuple[str, ...] = YOUTUBE_HOSTS
    #: Lift the address-class check entirely (loopback, private... become reachable). For local
    #: use only; schemes, ports and the allow-list still apply.
    allow_private_networks: bool = False
    #: Networks exempt from the address-class check (``"127.0.0.1/32"``): how tests admit their
    #: own loopback server while every other local address stays forbidden.
    allowed_networks: tuple[str, ...] = ()
    #: Let yt-dlp's generic extractor run (any page or direct media link on an allowed host).
    allow_generic_extractor: bool = False
    #: More yt-dlp extractors (``IE_NAME`` values) for sites added to ``allowed_hosts``.
    extra_extractors: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = ("http", "https")
    #: Ports a link or any hop may use; None admits any port. Web servers live on 80 and 443;
    #: other ports are how SSRF reaches admin consoles and databases.
    allowed_ports: tuple[int, ...] | None = (80, 443)
    max_url_length: int = 2048
    #: Redirects :class:`MediaDownload` follows (yt-dlp keeps its own limit).
    max_redirects: int = 5
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        hosts = tuple(h if h == ANY_HOST else _normal_host_name(h) for h in self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", hosts)
        object.__setattr__(self, "allowed_schemes", tuple(s.lower() for s in self.allowed_schemes))
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)
        object.__setattr__(self, "_networks", networks)

    @classmethod
    def permissive(cls, **changes: Any) -> GuardPolicy:
        """Any host, port and address, the generic extractor on: for a local, trusted user."""
        base = cls(
            allowed_hosts=(ANY_HOST,),
            allow_private_networks=True,
            allow_generic_extractor=True,
            allowed_ports=None,
        )
        return replace(base, **changes)

    @property
    def any_host(self) -> bool:
        return ANY_HOST in self.allowed_hosts

    def for_hops(self) -> GuardPolicy:
        """The rules for requests after the submitted link: no host allow-list (see the module)."""
        return self if self.any_host else replace(self, allowed_hosts=(ANY_HOST,))

    def permits_address(self, ip: IPAddress) -> bool:
        if self.allow_private_networks:
            return True
        reached = _embedded_ipv4(ip) or ip
        if any(ip in net or reached in net for net in self._networks):
            return True
        return address_class(ip) is None


class UrlRefused(Exception):
    """A link or hop the guard refuses. ``str(err)`` is for people; ``code`` is stable:

    ``bad_url`` (malformed, too long, user name in it, control characters...), ``bad_scheme``,
    ``host_not_allowed``, ``port_not_allowed``, ``forbidden_address``, ``unresolvable``.
    """

    def __init__(
        self, message: str, code: str, *, url: str | None = None, address: str | None = None
    ):
        super().__init__(message)
        self.code = code
        self.url = url
        #: The forbidden address, for logs; never shown to the user (it maps internal DNS).
        self.address = address


@dataclass(frozen=True)
class CheckedUrl:
    """A link that passed :func:`check_url`."""

    #: Normalised: lower-case scheme and host, IDNA host, default port and fragment dropped.
    #: Hand *this* to yt-dlp (its extractors match on the normal form).
    url: str
    scheme: str
    #: ASCII host name, or the IP address in standard notation.
    host: str
    port: int
    #: Every address the host resolved to, all checked, in resolver order.
    addresses: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# addresses

_V4_FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),  # "this network"; connecting to 0.0.0.0 reaches localhost
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # cloud metadata services live here
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)
_V6_FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),  # local-use NAT64 (inside ::/8: listed before it)
    ("::/8", "reserved"),  # IPv4-compatible and -translated forms; mapped ones are read first
    ("100::/64", "reserved"),  # discard-only
    ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo tunnels among them
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_V4_TABLE = tuple((ipaddress.IPv4Network(n), label) for n, label in _V4_FORBIDDEN)
_V6_TABLE = tuple((ipaddress.IPv6Network(n), label) for n, label in _V6_FORBIDDEN)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address really reaches: mapped, NAT64 or 6to4."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_class(ip: IPAddress) -> str | None:
    """The forbidden class ``ip`` falls in (``"loopback"``, ``"private"``...), None if public.

    IANA's special-purpose registries decide, IPv4-in-IPv6 forms are judged by the IPv4
    address they reach, IPv6 outside global unicast (2000::/3) is reserved, and Python's own
    ``is_global`` gets a veto so a range either table forgets stays closed.
    """
    inner = _embedded_ipv4(ip)
    if inner is not None:
        return address_class(inner)
    table = _V4_TABLE if ip.version == 4 else _V6_TABLE
    for network, label in table:
        if ip in network:
            return label
    if ip.version == 6 and ip not in _GLOBAL_UNICAST:
        return "reserved"
    if not ip.is_global:
        return "reserved"
    return None


_V4_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """``text`` read with ``inet_aton`` rules (what glibc's resolver accepts), or None.

    One to four parts, each decimal, octal (leading 0) or hex (0x); the last part fills the
    remaining bytes: ``127.1``, ``0x7f.1``, ``0177.0.0.1`` and ``2130706433`` are 127.0.0.1.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.match(p) for p in parts):
        return None
    *head, last = [_v4_part_value(p) for p in parts]
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, value in enumerate(head):
        number |= value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _v4_part_value(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:], 16)
    if part.startswith("0") and len(part) > 1:
        return int(part, 8)
    return int(part)


def _ip_literal(host: str) -> IPAddress | None:
    """The address a host string spells, if it is one (brackets optional for IPv6)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return ipaddress.IPv6Address(bare)
        except ValueError:
            return None
    return parse_ipv4(bare)


def resolve_allowed(
    host: str, port: int, policy: GuardPolicy, resolver: Resolver = socket.getaddrinfo
) -> tuple[str, ...]:
    """Resolve ``host`` and return its addresses if *every* one is allowed, else raise.

    Checking them all matters: a client tries the answers in turn, so one private address
    among public ones is enough to reach it. Callers connect only to the returned addresses.
    """
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        raise UrlRefused(
            f"Port {port} is not allowed (only {', '.join(map(str, policy.allowed_ports))}).",
            "port_not_allowed",
        )
    literal = _ip_literal(host)
    if literal is not None:
        candidates = [literal]
    else:
        try:
            infos = resolver(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            raise UrlRefused(
                f"Cannot find the host {host} (the name does not resolve).", "unresolvable"
            ) from err
        candidates = []
        for info in infos:
            if info[0] not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in candidates:
                candidates.append(ip)
        if not candidates:
            raise UrlRefused(f"Cannot find the host {host} (no addresses).", "unresolvable")
    for ip in candidates:
        if not policy.permits_address(ip):
            label = address_class(ip) or "forbidden"
            raise UrlRefused(
                f"{host} points to a {label} address; only public internet addresses can be fetched.",
                "forbidden_address",
                address=str(ip),
            )
    return tuple(str(ip) for ip in candidates)


# --------------------------------------------------------------------------------------------
# links


@dataclass(frozen=True)
class _Parts:
    scheme: str
    host: str  # normal form: ASCII name, dotted IPv4, compressed IPv6 (no brackets)
    port: int
    url: str  # normalised


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_HOST_NAME = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")


def _bad(message: str, url: str) -> UrlRefused:
    return UrlRefused(message, "bad_url", url=url)


def _normal_host_name(host: str) -> str:
    """Lower case, one trailing dot dropped, IDNA-encoded; ValueError when not a host name."""
    name = host.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as err:
            raise ValueError(f"not a valid host name: {host!r}") from err
    literal = _ip_literal(name)
    if literal is not None:
        return str(literal)
    if (
        not _HOST_NAME.match(name)
        or len(name) > 253
        or any(len(label) > 63 for label in name.split("."))
    ):
        raise ValueError(f"not a valid host name: {host!r}")
    return name


def _split(url: object, policy: GuardPolicy) -> _Parts:
    """Syntax and scheme rules; no DNS (ports and addresses: :func:`resolve_allowed`)."""
    if not isinstance(url, str):
        raise UrlRefused("The link must be text.", "bad_url")
    text = url.strip()
    if not text:
        raise _bad("No link given: paste an http(s) link.", text)
    if len(text) > policy.max_url_length:
        raise _bad(f"The link is too long (over {policy.max_url_length} characters).", text[:100])
    # Parsers disagree about these (a browser reads "\" as "/", urllib does not); refuse them.
    if any(ch.isspace() or ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        raise _bad("The link contains spaces, backslashes or control characters.", text)
    match = _SCHEME.match(text)
    if match is None:
        raise UrlRefused("The link must start with http:// or https://.", "bad_scheme", url=text)
    scheme = match.group(1).lower()
    if scheme not in policy.allowed_schemes:
        allowed = " and ".join(f"{s}://" for s in policy.allowed_schemes)
        raise UrlRefused(
            f"Only {allowed} links are accepted, not {scheme[:20]}:.", "bad_scheme", url=text
        )
    rest = text[match.end() :]
    if not rest.startswith("//"):
        raise _bad("The link must look like https://host/path.", text)
    rest = rest[2:]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        raise _bad("Links with a user name or password in them are not accepted.", text)
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _bad("The link's IPv6 address is missing its closing ].", text)
        host_text, port_text = authority[: end + 1], authority[end + 1 :]
        if port_text and not port_text.startswith(":"):
            raise _bad("The link's host is malformed.", text)
        port_text = port_text[1:]
        literal = _ip_literal(host_text)
        if literal is None or literal.version != 6 or "%" in host_text:
            raise _bad("The link's IPv6 address is not valid.", text)
        host = str(literal)
    else:
        host_text, _, port_text = authority.partition(":")
        if ":" in port_text:
            raise _bad("The link's host is malformed.", text)
        if not host_text:
            raise _bad("The link has no host name.", text)
        try:
            host = _normal_host_name(host_text)
        except ValueError:
            raise _bad("The link's host name is not valid.", text) from None
        last = host.rsplit(".", 1)[-1]
        if _ip_literal(host) is None and _NUMERIC_LABEL.match(last):
            # A name ending in a number is an address to browsers and resolvers alike.
            raise _bad("The link's address is not a valid IPv4 address.", text)
    if port_text:
        digits = port_text.isascii() and port_text.isdigit()  # not "²", which int() refuses
        if not digits or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise _bad("The link's port is not valid.", text)
        port = int(port_text)
    else:
        port = _DEFAULT_PORTS.get(scheme, 0)
    tail = tail.split("#", 1)[0]
    netloc = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return _Parts(scheme, host, port, f"{scheme}://{netloc}{tail}")


def check_url(
    url: str, policy: GuardPolicy | None = None, resolver: Resolver = socket.getaddrinfo
) -> CheckedUrl:
    """Vet a link a user submitted; return it normalised with the addresses it resolved to.

    Raises :class:`UrlRefused`. Blocking (it resolves the host): call it from a thread in
    async code. ``resolver`` is ``socket.getaddrinfo`` or a stand-in with its signature.
    """
    policy = policy if policy is not None else GuardPolicy()
    parts = _split(url, policy)
    if not policy.any_host and parts.host not in policy.allowed_hosts:
        raise UrlRefused(
            f"Links to {parts.host} are not allowed here: {_what_is_allowed(policy)}.",
            "host_not_allowed",
            url=parts.url,
        )
    try:
        addresses = resolve_allowed(parts.host, parts.port, policy, resolver)
    except UrlRefused as err:
        err.url = parts.url
        raise
    return CheckedUrl(parts.url, parts.scheme, parts.host, parts.port, addresses)


def _what_is_allowed(policy: GuardPolicy) -> str:
    """The allow-list in words: YouTube's hosts as "YouTube", the others by name."""
    others = [h for h in policy.allowed_hosts if h not in YOUTUBE_HOSTS]
    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    if len(others) < len(policy.allowed_hosts):
        return "this server transcribes YouTube links" + (f" and links to {shown}" if others else "")
    return f"this server only fetches links to {shown}" if others else "no links are accepted"


def vet_media_url(
    url: str, policy: GuardPolicy | None = None, resolver: Resolver = socket.getaddrinfo
) -> CheckedUrl:
    """Vet a URL found *by* extraction (the media URL, a redirect target): every rule but the
    host allow-list, which governs what users submit (see the module docstring)."""
    return check_url(url, (policy if policy is not None else GuardPolicy()).for_hops(), resolver)


def refusal_in(exc: BaseException | None) -> UrlRefused | None:
    """The :class:`UrlRefused` behind an exception, however yt-dlp or requests wrapped it."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        err = stack.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, UrlRefused):
            return err
        exc_info = getattr(err, "exc_info", None)
        stack += [
            err.__cause__,
            err.__context__,
            getattr(err, "cause", None),
            getattr(err, "reason", None),
        ]
        if isinstance(exc_info, tuple) and len(exc_info) > 1:
            stack.append(exc_info[1])
        stack += [arg for arg in err.args if isinstance(arg, BaseException)]
    return None


# --------------------------------------------------------------------------------------------
# pinned connections (urllib3, under requests and yt-dlp alike)


class _PinnedConnectionMixin:
    """Resolve, check every address, connect to a checked one: one lookup, no rebinding gap."""

    _pinning: _Pinning

    def _new_conn(self) -> socket.socket:
        conn: HTTPConnection = self  # type: ignore[assignment]
        addresses = resolve_allowed(
            conn.host, conn.port, self._pinning.policy, self._pinning.resolver
        )
        failure: OSError | None = None
        for address in addresses:
            try:
                return urllib3.util.connection.create_connection(
                    (address, conn.port),
                    conn.timeout,
                    source_address=conn.source_address,
                    socket_options=conn.socket_options,
                )
            except TimeoutError as err:
                raise ConnectTimeoutError(
                    conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
                ) from err
            except OSError as err:
                failure = err
        raise NewConnectionError(conn, f"Failed to establish a new connection: {failure}")


class _Pinning:
    """Connection-pool classes bound to one policy and resolver, installed on an adapter."""

    def __init__(self, policy: GuardPolicy, resolver: Resolver):
        self.policy = policy.for_hops()
        self.resolver = resolver
        attrs = {"_pinning": self}
        http = type("PinnedHTTPConnection", (_PinnedConnectionMixin, HTTPConnection), attrs)
        https = type("PinnedHTTPSConnection", (_PinnedConnectionMixin, HTTPSConnection), attrs)
        self.pool_classes = {
            "http": type(
                "PinnedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}
            ),
            "https": type(
                "PinnedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}
            ),
        }

    def install(self, session: requests.Session) -> requests.Session:
        for adapter in session.adapters.values():
            adapter.poolmanager.pool_classes_by_scheme = self.pool_classes
        session.trust_env = False  # no proxies or .netrc from the environment
        # Redirects that requests follows itself (yt-dlp's) pass the link rules before the
        # next hop: a scheme requests cannot fetch (file:, ftp:...) is a refusal, not a crash.
        # The address of an http(s) hop is checked when its connection is made.
        follow = session.get_redirect_target

        def vetted_target(response: requests.Response) -> str | None:
            target = follow(response)
            if target:
                _split(urljoin(response.url, target), self.policy)
            return target

        session.get_redirect_target = vetted_target
        return session


# --------------------------------------------------------------------------------------------
# yt-dlp


def extractor_names(policy: GuardPolicy) -> tuple[str, ...]:
    """The yt-dlp extractors the allow-list needs (``IE_NAME`` values)."""
    names: list[str] = []
    if policy.any_host or set(policy.allowed_hosts) & set(YOUTUBE_HOSTS):
        names += YOUTUBE_EXTRACTORS
    names += policy.extra_extractors
    if policy.allow_generic_extractor:
        names.append("generic")
    return tuple(dict.fromkeys(names))


def ydl_options(policy: GuardPolicy) -> dict[str, Any]:
    """yt-dlp options the guard imposes (they override the caller's)."""
    return {
        # Names are matched as regexes (fullmatch, any case): escape them.
        "allowed_extractors": [re.escape(name) for name in extractor_names(policy)],
        "noplaylist": True,
        "proxy": "",  # connect directly: through a proxy the address check sees the proxy
        "enable_file_urls": False,
        "force_generic_extractor": False,
    }


class _GuardedRequestsRH(RequestsRH):
    """yt-dlp's requests handler with pinned connections; every redirect hop passes the guard."""

    RH_NAME = "requests+urlguard"

    def __init__(self, *, pinning: _Pinning, **kwargs: Any):
        self._pinning = pinning
        super().__init__(**kwargs)

    def _create_instance(self, cookiejar, legacy_ssl_support=None):  # noqa: ANN001 - yt-dlp's
        session = super()._create_instance(
            cookiejar=cookiejar, legacy_ssl_support=legacy_ssl_support
        )
        return self._pinning.install(session)

    def _get_proxies(self, request):  # noqa: ANN001 - yt-dlp's signature
        return {}  # also ignores per-request proxies (geo-bypass) an extractor may ask for

    def _send(self, request):  # noqa: ANN001 - yt-dlp's signature
        try:
            return super()._send(request)
        except UrlRefused as err:
            # A network error to yt-dlp: it reports "Unable to download ..." as a DownloadError
            # (find the refusal with refusal_in) instead of trying another handler.
            raise TransportError(str(err), cause=err) from err


class GuardedYoutubeDL(yt_dlp.YoutubeDL):
    """A :class:`yt_dlp.YoutubeDL` whose every request obeys a :class:`GuardPolicy`.

    - the link given to :meth:`extract_info` (also the ones yt-dlp follows from a result)
      passes :func:`check_url`, allow-list included; a refusal raises :class:`UrlRefused`;
    - only :func:`extractor_names` are loaded (``allowed_extractors``), proxies are off;
    - all HTTP goes through one requests-based handler with pinned connections, so redirects
      and yt-dlp's own API requests cannot reach a forbidden address. A refusal deep inside
      extraction surfaces as a ``DownloadError``: find it with :func:`refusal_in`.
    """

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        *,
        policy: GuardPolicy | None = None,
        resolver: Resolver = socket.getaddrinfo,
        auto_init: bool = True,
    ):
        self.url_policy = policy if policy is not None else GuardPolicy()
        self.url_resolver = resolver
        self._pinning = _Pinning(self.url_policy, resolver)
        super().__init__({**(params or {}), **ydl_options(self.url_policy)}, auto_init=auto_init)

    def build_request_director(self, handlers, preferences=None):  # noqa: ANN001 - yt-dlp's
        # Replace every transport (urllib, curl_cffi, websockets) by the pinned one.
        guarded = functools.partial(_GuardedRequestsRH, pinning=self._pinning)
        return super().build_request_director([guarded], preferences)

    def extract_info(self, url, *args, **kwargs):  # noqa: ANN001 - yt-dlp's signature
        checked = check_url(url, self.url_policy, self.url_resolver)
        return super().extract_info(checked.url, *args, **kwargs)


def youtube_dl(
    params: dict[str, Any] | None = None,
    policy: GuardPolicy | None = None,
    resolver: Resolver = socket.getaddrinfo,
) -> yt_dlp.YoutubeDL:
    """The yt-dlp that :func:`transcriber.media.resolve` should open: guarded when a policy is
    given (the service), plain when None (a person's own CLI run on their own machine)."""
    if policy is None:
        return yt_dlp.YoutubeDL(params)
    return GuardedYoutubeDL(params, policy=policy, resolver=resolver)


# --------------------------------------------------------------------------------------------
# the media download that feeds ffmpeg


class DownloadFailed(Exception):
    """The media transfer failed. ``code``: ``http_error`` (``status`` set), ``unreachable``,
    ``interrupted`` (the connection broke mid-body), ``too_large``, ``too_many_redirects``."""

    def __init__(self, message: str, code: str, *, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


_REDIRECTS = (301, 302, 303, 307, 308)
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class MediaDownload:
    """Download a media URL as a stream of byte chunks, every hop and connection guarded.

    Redirects are followed here, one hop at a time (at most ``policy.max_redirects``), each
    hop vetted by :func:`vet_media_url` rules and connected through a pinned connection;
    credentials are dropped when a redirect leaves the origin. ``range_chunk`` (bytes) makes
    it fetch in sequential ``Range`` requests, as yt-dlp's ``http_chunk_size`` asks for
    YouTube (whose CDN throttles long single transfers). ``max_bytes`` caps the transfer.
    A transfer that breaks off is resumed with a ``Range`` request up to ``retries`` times
    when the server supports ranges.

    Iterate it in the thread that needs the bytes, or run :meth:`copy_to` in a feeder thread
    to pipe them into ffmpeg (see :data:`FFMPEG_PIPE_INPUT`).
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        policy: GuardPolicy | None = None,
        resolver: Resolver = socket.getaddrinfo,
        max_bytes: int | None = None,
        range_chunk: int | None = None,
        retries: int = 2,
        timeout: float = 30.0,
        block_size: int = 64 * 1024,
    ):
        self.policy = (policy if policy is not None else GuardPolicy()).for_hops()
        self.resolver = resolver
        self.url = vet_media_url(url, self.policy, resolver).url
        self.headers = {k: v for k, v in (headers or {}).items() if k.lower() != "range"}
        self.max_bytes = max_bytes
        self.range_chunk = range_chunk
        self.retries = retries
        self.timeout = timeout
        self.block_size = block_size
        #: Where the last response came from (after redirects).
        self.final_url: str | None = None
        #: Total size when the server said (Content-Length / Content-Range).
        self.size: int | None = None
        self.bytes_read = 0
        #: What stopped :meth:`copy_to` (None after a complete transfer).
        self.error: BaseException | None = None
        self._closed = threading.Event()
        self._response: requests.Response | None = None
        #: Bytes :meth:`peek` read ahead, handed out first by :meth:`__iter__`.
        self._ahead = bytearray()
        #: A failure met while peeking after some bytes arrived: raised once they are used.
        self._deferred: BaseException | None = None
        self._chunks: Iterator[bytes] | None = None
        self._session = _Pinning(self.policy, resolver).install(requests.Session())
        self._session.headers = requests.structures.CaseInsensitiveDict(
            {"Accept-Encoding": "identity"}
        )

    def __iter__(self) -> Iterator[bytes]:
        if self._ahead:
            ahead, self._ahead = bytes(self._ahead), bytearray()
            yield ahead
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
        yield from self._transfer()

    def peek(self, size: int) -> bytes:
        """The first ``size`` bytes (all of them when the media is shorter), without using them
        up: iterating afterwards starts from the beginning. A failure before any byte arrived
        is raised here; one after is raised by the iteration, once the bytes before it are used.

        How a caller looks at a container's first boxes before choosing how to decode it.
        """
        chunks = self._transfer()
        try:
            while len(self._ahead) < size and self._deferred is None:
                self._ahead += next(chunks)
        except StopIteration:
            pass
        except Exception as err:
            if not self._ahead:
                raise
            self._deferred = err
        return bytes(self._ahead[:size])

    def _transfer(self) -> Iterator[bytes]:
        """The body from where the last call left off (one generator shared by every call)."""
        if self._chunks is None:
            self._chunks = self._download()
        return self._chunks

    def _download(self) -> Iterator[bytes]:
        try:
            position, retries = 0, self.retries
            while not self._closed.is_set():
                response = self._get(position)
                if position and response.status_code != 206:
                    raise DownloadFailed(
                        "The media server stopped honouring byte ranges.", "interrupted"
                    )
                resumable = response.status_code == 206 or (
                    response.headers.get("Accept-Ranges", "").lower() == "bytes"
                )
                try:
                    yield from self._body(response)
                except DownloadFailed as err:
                    # A dropped transfer resumes where it broke, as ffmpeg's reconnect would.
                    if err.code != "interrupted" or retries <= 0 or not resumable:
                        raise
                    retries -= 1
                    position = self.bytes_read
                    continue
                position = self.bytes_read
                if response.status_code != 206 or self.size is None or position >= self.size:
                    return
        finally:
            self.close()

    def start_feeding(self, sink: IO[bytes]) -> threading.Thread:
        """Run :meth:`copy_to` into ``sink`` in a daemon thread (started) and return it."""
        thread = threading.Thread(
            target=self.copy_to, args=(sink,), name="media-download", daemon=True
        )
        thread.start()
        return thread

    def copy_to(self, sink: IO[bytes]) -> None:
        """Write every chunk to ``sink`` (ffmpeg's stdin), then close it; never raises.

        Run it in a thread; afterwards :attr:`error` holds what went wrong, if anything. A
        reader that goes away (ffmpeg exited) just ends the copy.
        """
        try:
            for chunk in self:
                sink.write(chunk)
        except (BrokenPipeError, ValueError):
            pass  # the reader closed its end; its own status says why
        except Exception as err:  # noqa: BLE001 - handed to the consumer via .error
            self.error = err
        finally:
            try:
                sink.close()
            except (BrokenPipeError, OSError):
                pass

    def close(self) -> None:
        """Stop the transfer (from any thread)."""
        self._closed.set()
        if self._response is not None:
            self._response.close()
        self._session.close()

    # -- internals ---------------------------------------------------------------------------

    def _get(self, position: int) -> requests.Response:
        headers = dict(self.headers)
        if self.range_chunk:
            headers["Range"] = f"bytes={position}-{position + self.range_chunk - 1}"
        elif position:
            headers["Range"] = f"bytes={position}-"
        url = self.url
        for _ in range(self.policy.max_redirects + 1):
            _split(url, self.policy)  # scheme and syntax; the address is checked on connect
            try:
                response = self._session.get(
                    url, headers=headers, stream=True, allow_redirects=False, timeout=self.timeout
                )
            except requests.RequestException as err:
                refused = refusal_in(err)
                if refused is not None:
                    raise refused from None
                raise DownloadFailed(
                    f"Cannot reach the media server: {_reason(err)}.", "unreachable"
                ) from err
            self._response = response
            location = response.headers.get("Location")
            if response.status_code in _REDIRECTS and location:
                response.close()
                target = urljoin(url, location)
                if _origin(target) != _origin(url):
                    headers = {
                        k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS
                    }
                url = target
                continue
            if response.status_code not in (200, 206):
                response.close()
                raise DownloadFailed(
                    f"The media server answered {response.status_code} {response.reason}.",
                    "http_error",
                    status=response.status_code,
                )
            self.final_url = url
            self._learn_size(response, position)
            return response
        raise DownloadFailed("The media link redirects too many times.", "too_many_redirects")

    def _learn_size(self, response: requests.Response, position: int) -> None:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if response.status_code == 206 and match and match.group(3) != "*":
            self.size = int(match.group(3))
        elif response.status_code == 200 and re.fullmatch(r"[0-9]+", response.headers.get("Content-Length", "")):
            self.size = int(response.headers["Content-Length"])

    def _pieces(self, response: requests.Response) -> Iterator[bytes]:
        """The body as it arrives. ``read1`` hands out whatever came (up to a block), so a
        connection that breaks loses nothing already received; ``iter_content`` would drop
        the part of a block read before the break."""
        read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2.1
        if read1 is None:
            yield from response.iter_content(self.block_size)
            return
        while piece := read1(self.block_size):
            yield piece

    def _body(self, response: requests.Response) -> Iterator[bytes]:
        try:
            for chunk in self._pieces(response):
                if self._closed.is_set():
                    return
                self.bytes_read += len(chunk)
                if self.max_bytes is not None and self.bytes_read > self.max_bytes:
                    raise DownloadFailed(
                        f"The media is larger than the {self.max_bytes / 2**20:.3g} MiB download limit.",
                        "too_large",
                    )
                yield chunk
        except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
            if self._closed.is_set():
                return
            raise DownloadFailed(
                f"The media transfer broke off after {self.bytes_read} bytes: {_reason(err)}.",
                "interrupted",
            ) from err
        finally:
            response.close()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _reason(err: BaseException) -> str:
    """The innermost message of a requests/urllib3 error chain, short."""
    for _ in range(10):
        inner = err.__cause__ or next((a for a in err.args if isinstance(a, BaseException)), None)
        if inner is None:
            break
        err = inner
    return str(err)[:200] or type(err).__name__


def ffmpeg_input(
    url: str,
    headers: dict[str, str] | None,
    policy: GuardPolicy,
    *,
    resolver: Resolver = socket.getaddrinfo,
    max_bytes: int | None = None,
    range_chunk: int | None = None,
    timeout: float = 30.0,
) -> tuple[str, dict[str, str], MediaDownload]:
    """ffmpeg's input name and options for a guarded media URL, and the download to feed it.

    Start ffmpeg with ``stdin=subprocess.PIPE`` on ``ffmpeg.input(name, **options)``, then
    ``download.start_feeding(proc.stdin)``; close the download when done and check
    ``download.error`` after ffmpeg ends (ffmpeg only sees the input stop early).
    """
    download = MediaDownload(
        url,
        headers,
        policy=policy,
        resolver=resolver,
        max_bytes=max_bytes,
        range_chunk=range_chunk,
        timeout=timeout,
    )
    return "pipe:0", dict(FFMPEG_PIPE_INPUT), download
