"""The guard's rules, as pure checks: which links a user may submit (scheme, host allow-list,
port, URL syntax) and which addresses any request may reach (IANA's special-purpose ranges,
IPv4 inside IPv6, odd IPv4 spellings read as the C library reads them).

Nothing here opens a connection or touches yt-dlp or urllib3; the only I/O is the DNS lookup
of :func:`resolve_allowed` (through a ``resolver`` that tests replace).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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


def split_url(url: object, policy: GuardPolicy) -> _Parts:
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
    parts = split_url(url, policy)
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
