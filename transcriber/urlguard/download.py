"""The guarded media download that feeds ffmpeg: :class:`MediaDownload` fetches a media URL
one vetted redirect hop at a time over pinned connections, in ``Range`` requests when asked
(YouTube's CDN throttles long single transfers), resuming a broken transfer and capping its
size; :func:`ffmpeg_input` pipes it into an ffmpeg that may open nothing but its stdin.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from typing import IO
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from transcriber.urlguard.pinning import Pinning
from transcriber.urlguard.policy import (
    GuardPolicy,
    Resolver,
    refusal_in,
    split_url,
    vet_media_url,
)

#: Input options for ffmpeg reading the media from stdin (``ffmpeg.input("pipe:0", **these)``):
#: with only the ``pipe`` protocol allowed, nothing in the media can make ffmpeg open a URL.
FFMPEG_PIPE_INPUT: dict[str, str] = {"protocol_whitelist": "pipe"}


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
        self._session = Pinning(self.policy, resolver).install(requests.Session())
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
            split_url(url, self.policy)  # scheme and syntax; the address is checked on connect
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
