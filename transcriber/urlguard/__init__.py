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

This package imports no web framework; ``app/`` builds a :class:`GuardPolicy` from its settings.

The modules, in the order a link meets them:

- :mod:`~transcriber.urlguard.policy`: the pure checks (schemes, hosts, ports, addresses);
- :mod:`~transcriber.urlguard.pinning`: pinned connections and the guarded yt-dlp, the only
  code that touches private yt-dlp and urllib3 internals;
- :mod:`~transcriber.urlguard.download`: the guarded, ranged media download that feeds ffmpeg.
"""

from transcriber.urlguard.download import (
    FFMPEG_PIPE_INPUT,
    DownloadFailed,
    MediaDownload,
    ffmpeg_input,
)
from transcriber.urlguard.pinning import (
    YOUTUBE_EXTRACTORS,
    GuardedYoutubeDL,
    extractor_names,
    ydl_options,
    youtube_dl,
)
from transcriber.urlguard.policy import (
    ANY_HOST,
    YOUTUBE_HOSTS,
    CheckedUrl,
    GuardPolicy,
    IPAddress,
    Resolver,
    UrlRefused,
    address_class,
    check_url,
    parse_ipv4,
    refusal_in,
    resolve_allowed,
    vet_media_url,
)

__all__ = [
    "ANY_HOST",
    "FFMPEG_PIPE_INPUT",
    "YOUTUBE_EXTRACTORS",
    "YOUTUBE_HOSTS",
    "CheckedUrl",
    "DownloadFailed",
    "GuardPolicy",
    "GuardedYoutubeDL",
    "IPAddress",
    "MediaDownload",
    "Resolver",
    "UrlRefused",
    "address_class",
    "check_url",
    "extractor_names",
    "ffmpeg_input",
    "parse_ipv4",
    "refusal_in",
    "resolve_allowed",
    "vet_media_url",
    "ydl_options",
    "youtube_dl",
]
