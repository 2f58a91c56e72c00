"""Service settings, read once from ``STREAMSCRIBE_*`` environment variables.

Every field documents its variable and default; the README's table says the same, and
tests/test_settings_docs.py checks it against these definitions (variables and defaults), so
the two cannot drift apart. Nothing here runs at import time: :meth:`Settings.from_env` is called by the entry point
(``app.local``, ``app.modal_app``) or by a test that builds its own settings.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from transcriber import DEFAULT_BATCH_SIZE
from transcriber.urlguard import ANY_HOST, YOUTUBE_HOSTS, GuardPolicy
from transcriber.vocab import EngineName

ENV_PREFIX = "STREAMSCRIBE_"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used; the message names it."""


@dataclass
class Settings:
    #: ``STREAMSCRIBE_MODEL``: Whisper model name (``tiny.en`` ... ``large-v3``) or a local path.
    model: str = "tiny.en"
    #: ``STREAMSCRIBE_ENGINE``: ``faster-whisper`` or ``openai-whisper``.
    engine: str = EngineName.FASTER_WHISPER
    #: ``STREAMSCRIBE_WORKERS``: local worker processes (0 = one per core, up to cores/threads).
    workers: int = 0
    #: ``STREAMSCRIBE_THREADS``: intra-op threads per worker (0 = the engine's default).
    threads: int = 0
    #: ``STREAMSCRIBE_DATA_DIR``: where the job database and uploads live.
    data_dir: Path = field(default_factory=lambda: Path("./data"))
    #: ``STREAMSCRIBE_ALLOWED_HOSTS``: comma list of the hosts a submitted link may name,
    #: matched exactly (``*`` = any host; the address rules still apply). Default: YouTube's.
    allowed_hosts: tuple[str, ...] = YOUTUBE_HOSTS
    #: ``STREAMSCRIBE_ALLOWED_PORTS``: comma list of ports a link or redirect may use
    #: (``*`` = any). Default: 80 and 443.
    allowed_ports: tuple[int, ...] | None = (80, 443)
    #: ``STREAMSCRIBE_ALLOW_PRIVATE_NETWORKS``: 1 lifts the address check entirely (loopback,
    #: private, link-local... become reachable). Local use only; off by default. The host
    #: allow-list, schemes and ports still apply.
    allow_private_networks: bool = False
    #: ``STREAMSCRIBE_ALLOWED_NETWORKS``: comma list of networks exempt from the address check
    #: (``127.0.0.1/32``): a narrower opt-in than the one above, e.g. one test server.
    allowed_networks: tuple[str, ...] = ()
    #: ``STREAMSCRIBE_ALLOW_GENERIC_EXTRACTOR``: 1 lets yt-dlp's generic extractor read any page
    #: or direct media link on an allowed host; off, only the extractors the allow-list needs run.
    allow_generic_extractor: bool = False
    #: ``STREAMSCRIBE_EXTRA_EXTRACTORS``: comma list of more yt-dlp extractors (``IE_NAME``) for
    #: sites added to the allowed hosts (``vimeo``...).
    extra_extractors: tuple[str, ...] = ()
    #: ``STREAMSCRIBE_BEAM_SIZE``: default beam size (a request may ask for another, 1-10).
    beam_size: int = 5
    #: ``STREAMSCRIBE_VAD``: 1 (default) runs the speech gate (no text over music or noise,
    #: see transcriber.vad); 0 decodes every segment whole. A request's ``vad`` overrides it.
    vad: bool = True
    #: ``STREAMSCRIBE_BATCH_SIZE``: segments one worker decodes in one engine call (a request
    #: may ask for another, 1-64); 1 decodes each alone.
    batch_size: int = DEFAULT_BATCH_SIZE
    #: ``STREAMSCRIBE_TOKEN``: when set, API calls need ``Authorization: Bearer <token>``.
    token: str | None = None
    #: ``STREAMSCRIBE_COOKIES_FILE``: a Netscape cookies.txt handed to yt-dlp (bot checks).
    cookies_file: str | None = None
    #: ``STREAMSCRIBE_MAX_DURATION_S``: longest media accepted, seconds (0 = no limit).
    max_duration_s: float = 4 * 3600
    #: ``STREAMSCRIBE_MAX_DOWNLOAD_MB``: most bytes one job downloads from a link, MiB
    #: (0 = no limit); past it the job ends with ``too_large``, keeping what was transcribed.
    max_download_mb: float = 1024
    #: ``STREAMSCRIBE_MAX_UPLOAD_MB``: largest uploaded file, MiB.
    max_upload_mb: float = 512
    #: ``STREAMSCRIBE_MAX_BODY_KB``: largest JSON request body, KiB.
    max_body_kb: int = 64
    #: ``STREAMSCRIBE_MAX_CONCURRENT_JOBS``: transcriptions running at once; more get 429.
    max_concurrent_jobs: int = 4
    #: ``STREAMSCRIBE_JOB_GRACE_S``: seconds a job goes on after its last listener leaves.
    job_grace_s: float = 30.0
    #: ``STREAMSCRIBE_MAX_JOB_WALL_S``: a job running longer than this is stopped (0 = no limit).
    max_job_wall_s: float = 3 * 3600
    #: ``STREAMSCRIBE_HEARTBEAT_S``: seconds of silence before an SSE ``: ping`` comment.
    heartbeat_s: float = 15.0
    #: ``STREAMSCRIBE_MAX_PLAYLIST_ITEMS``: entries of a playlist, channel or feed link that
    #: become jobs; a longer one is cut there (the response says so).
    max_playlist_items: int = 50
    #: ``STREAMSCRIBE_PLAYLIST_CONCURRENCY``: entries of one playlist running at once, so a long
    #: playlist leaves room for other people's jobs (the concurrent-job limit applies as well).
    playlist_concurrency: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Settings from ``STREAMSCRIBE_*`` variables; unset or empty ones keep the default."""
        env = _Env(environ)
        d = cls()
        settings = cls(
            model=env.text("MODEL", d.model),
            engine=env.choice("ENGINE", d.engine, tuple(EngineName)),
            workers=env.integer("WORKERS", d.workers, minimum=0),
            threads=env.integer("THREADS", d.threads, minimum=0),
            data_dir=Path(env.text("DATA_DIR", str(d.data_dir))),
            allowed_hosts=env.items("ALLOWED_HOSTS", d.allowed_hosts),
            allowed_ports=env.ports("ALLOWED_PORTS", d.allowed_ports),
            allow_private_networks=env.flag("ALLOW_PRIVATE_NETWORKS", d.allow_private_networks),
            allowed_networks=env.items("ALLOWED_NETWORKS", d.allowed_networks),
            allow_generic_extractor=env.flag(
                "ALLOW_GENERIC_EXTRACTOR", d.allow_generic_extractor
            ),
            extra_extractors=env.items("EXTRA_EXTRACTORS", d.extra_extractors),
            beam_size=env.integer("BEAM_SIZE", d.beam_size, minimum=1),
            vad=env.flag("VAD", d.vad),
            batch_size=env.integer("BATCH_SIZE", d.batch_size, minimum=1),
            token=env.text("TOKEN", None),
            cookies_file=env.text("COOKIES_FILE", None),
            max_duration_s=env.number("MAX_DURATION_S", d.max_duration_s),
            max_download_mb=env.number("MAX_DOWNLOAD_MB", d.max_download_mb),
            max_upload_mb=env.number("MAX_UPLOAD_MB", d.max_upload_mb),
            max_body_kb=env.integer("MAX_BODY_KB", d.max_body_kb, minimum=1),
            max_concurrent_jobs=env.integer("MAX_CONCURRENT_JOBS", d.max_concurrent_jobs, minimum=1),
            job_grace_s=env.number("JOB_GRACE_S", d.job_grace_s),
            max_job_wall_s=env.number("MAX_JOB_WALL_S", d.max_job_wall_s),
            heartbeat_s=env.number("HEARTBEAT_S", d.heartbeat_s),
            max_playlist_items=env.integer("MAX_PLAYLIST_ITEMS", d.max_playlist_items, minimum=1),
            playlist_concurrency=env.integer(
                "PLAYLIST_CONCURRENCY", d.playlist_concurrency, minimum=1
            ),
        )
        env.check_guard(settings)
        return settings

    def guard_policy(self) -> GuardPolicy:
        """The URL guard these settings describe (ValueError for a host or network that is not
        one); the job manager hands it to yt-dlp and the media download."""
        return GuardPolicy(
            allowed_hosts=self.allowed_hosts,
            allow_private_networks=self.allow_private_networks,
            allowed_networks=self.allowed_networks,
            allow_generic_extractor=self.allow_generic_extractor,
            extra_extractors=self.extra_extractors,
            allowed_ports=self.allowed_ports,
        )

    @property
    def max_download_bytes(self) -> int | None:
        return int(self.max_download_mb * 2**20) or None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "streamscribe.sqlite3"

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"


class _Env:
    """Typed reads of ``STREAMSCRIBE_<NAME>`` with errors that name the variable."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(ENV_PREFIX + name, "").strip()
        return value or None

    def _fail(self, name: str, want: str) -> SettingsError:
        return SettingsError(f"{ENV_PREFIX}{name}={self._raw(name)!r}: expected {want}")

    @overload
    def text(self, name: str, default: str) -> str: ...
    @overload
    def text(self, name: str, default: None) -> str | None: ...
    def text(self, name: str, default: str | None) -> str | None:
        raw = self._raw(name)
        return default if raw is None else raw

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._raw(name) or default
        if raw not in choices:
            raise self._fail(name, "one of " + ", ".join(choices))
        return raw

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        return self._parse(name, default, int, "a whole number", minimum)

    def number(self, name: str, default: float) -> float:
        return self._parse(name, default, float, "a number", 0)

    def _parse(self, name: str, default, convert, want: str, minimum):
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = convert(raw)
        except ValueError:
            raise self._fail(name, want) from None
        if value < minimum:
            raise self._fail(name, f"a number >= {minimum}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise self._fail(name, "0 or 1")

    def items(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._raw(name)
        if raw is None:
            return default
        return tuple(h.strip().lower() for h in raw.split(",") if h.strip())

    def ports(self, name: str, default: tuple[int, ...] | None) -> tuple[int, ...] | None:
        items = self.items(name, ())
        if not items:
            return default
        if ANY_HOST in items:
            return None
        if not all(p.isascii() and p.isdigit() and 0 < int(p) < 65536 for p in items):
            raise self._fail(name, "a comma list of port numbers, or *")
        return tuple(int(p) for p in items)

    def check_guard(self, settings: Settings) -> None:
        """Fail on start-up, naming the variable, rather than on the first request."""
        for network in settings.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise self._fail("ALLOWED_NETWORKS", "a comma list of networks (10.0.0.0/8)") from None
        try:
            settings.guard_policy()
        except ValueError:
            raise self._fail("ALLOWED_HOSTS", "a comma list of host names, or *") from None
