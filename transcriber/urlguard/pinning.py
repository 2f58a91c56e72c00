"""Pinned connections and the guarded yt-dlp: every TCP connection yt-dlp or the media
download opens is resolved once, every address checked, and the socket connected to a checked
address, never to a second lookup (no DNS-rebinding gap).

This is the ONLY module that touches private yt-dlp and urllib3 internals: urllib3's
``HTTPConnection._new_conn`` and the pool manager's ``pool_classes_by_scheme``, and yt-dlp's
``networking._requests.RequestsRH`` with its ``_create_instance``, ``_get_proxies`` and
``_send``. A yt-dlp or urllib3 upgrade that changes them breaks here and nowhere else
(``tests/test_urlguard.py`` exercises them with real yt-dlp and requests on loopback servers).
"""

from __future__ import annotations

import functools
import re
import socket
from typing import Any
from urllib.parse import urljoin

import requests
import urllib3
import yt_dlp
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from yt_dlp.networking._requests import RequestsRH
from yt_dlp.networking.exceptions import TransportError

from transcriber.urlguard.policy import (
    YOUTUBE_HOSTS,
    GuardPolicy,
    Resolver,
    UrlRefused,
    check_url,
    resolve_allowed,
    split_url,
)

#: yt-dlp extractors (``IE_NAME``) a single YouTube video needs. ``youtube`` takes watch,
#: youtu.be, shorts, embed, live and music links; ``youtube:tab`` takes ``watch?v=ID&list=...``
#: and, with ``noplaylist``, hands the one video back to ``youtube`` without fetching the list;
#: ``YoutubeYtBe`` does the same for ``youtu.be/ID?list=...``.
YOUTUBE_EXTRACTORS: tuple[str, ...] = ("youtube", "youtube:tab", "YoutubeYtBe")


# --------------------------------------------------------------------------------------------
# pinned connections (urllib3, under requests and yt-dlp alike)


class _PinnedConnectionMixin:
    """Resolve, check every address, connect to a checked one: one lookup, no rebinding gap."""

    _pinning: Pinning

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


class Pinning:
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
                split_url(urljoin(response.url, target), self.policy)
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

    def __init__(self, *, pinning: Pinning, **kwargs: Any):
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
        self._pinning = Pinning(self.url_policy, resolver)
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
