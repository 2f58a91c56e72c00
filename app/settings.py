"""Service settings, read once from ``STREAMSCRIBE_*`` environment variables.

Every field documents its variable and default; the README's table is generated from the same
words. Nothing here runs at import time: :meth:`Settings.from_env` is called by the entry point
(``app.local``, ``app.modal_app``) or by a test that builds its own settings.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: The hosts a URL may name by default: YouTube's, and nothing else.
YOUTUBE_HOSTS: tuple[str, ...] = (
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtu.be",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
)

ENV_PREFIX = "STREAMSCRIBE_"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used; the message names it."""


@dataclass
class Settings:
    #: ``STREAMSCRIBE_MODEL``: Whisper model name (``tiny.en`` ... ``large-v3``) or a local path.
    model: str = "tiny.en"
    #: ``STREAMSCRIBE_ENGINE``: ``faster-whisper`` or ``openai-whisper``.
    engine: str = "faster-whisper"
    #: ``STREAMSCRIBE_WORKERS``: local worker processes (0 = one per core, up to cores/threads).
    workers: int = 0
    #: ``STREAMSCRIBE_THREADS``: intra-op threads per worker (0 = the engine's default).
    threads: int = 0
    #: ``STREAMSCRIBE_DATA_DIR``: where the job database and uploads live.
    data_dir: Path = field(default_factory=lambda: Path("./data"))
    #: ``STREAMSCRIBE_ALLOWED_HOSTS``: comma list of URL hosts that may be transcribed (``*`` = any).
    allowed_hosts: tuple[str, ...] = YOUTUBE_HOSTS
    #: ``STREAMSCRIBE_ALLOW_PRIVATE_NETWORKS``: 1 lets URLs name loopback/private hosts (tests).
    allow_private_networks: bool = False
    #: ``STREAMSCRIBE_BEAM_SIZE``: default beam size (a request may ask for another, 1-10).
    beam_size: int = 5
    #: ``STREAMSCRIBE_TOKEN``: when set, API calls need ``Authorization: Bearer <token>``.
    token: str | None = None
    #: ``STREAMSCRIBE_COOKIES_FILE``: a Netscape cookies.txt handed to yt-dlp (bot checks).
    cookies_file: str | None = None
    #: ``STREAMSCRIBE_MAX_DURATION_S``: longest media accepted, seconds (0 = no limit).
    max_duration_s: float = 4 * 3600
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Settings from ``STREAMSCRIBE_*`` variables; unset or empty ones keep the default."""
        env = _Env(environ)
        d = cls()
        return cls(
            model=env.text("MODEL", d.model),
            engine=env.choice("ENGINE", d.engine, ("faster-whisper", "openai-whisper")),
            workers=env.integer("WORKERS", d.workers, minimum=0),
            threads=env.integer("THREADS", d.threads, minimum=0),
            data_dir=Path(env.text("DATA_DIR", str(d.data_dir))),
            allowed_hosts=env.items("ALLOWED_HOSTS", d.allowed_hosts),
            allow_private_networks=env.flag("ALLOW_PRIVATE_NETWORKS", d.allow_private_networks),
            beam_size=env.integer("BEAM_SIZE", d.beam_size, minimum=1),
            token=env.text("TOKEN", None),
            cookies_file=env.text("COOKIES_FILE", None),
            max_duration_s=env.number("MAX_DURATION_S", d.max_duration_s),
            max_upload_mb=env.number("MAX_UPLOAD_MB", d.max_upload_mb),
            max_body_kb=env.integer("MAX_BODY_KB", d.max_body_kb, minimum=1),
            max_concurrent_jobs=env.integer("MAX_CONCURRENT_JOBS", d.max_concurrent_jobs, minimum=1),
            job_grace_s=env.number("JOB_GRACE_S", d.job_grace_s),
            max_job_wall_s=env.number("MAX_JOB_WALL_S", d.max_job_wall_s),
            heartbeat_s=env.number("HEARTBEAT_S", d.heartbeat_s),
        )

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


class ForbiddenURL(ValueError):
    """A URL the service refuses to fetch; ``str(err)`` says why in plain words."""

    code = "forbidden_url"


def _is_private_host(host: str) -> bool:
    """True for ``localhost`` and IP literals that are not globally routable."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False


def check_url(url: str, settings: Settings) -> str:
    """Return ``url`` if the service may fetch it, else raise :class:`ForbiddenURL`.

    Today: http/https only, and the host must be on the allow-list — except loopback/private
    hosts when ``allow_private_networks`` is on (how tests reach their loopback servers). The
    hardening work replaces this with a resolving SSRF guard; callers only know this function.
    """
    if len(url) > 2048:
        raise ForbiddenURL("The URL is too long (over 2048 characters).")
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ForbiddenURL("That is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise ForbiddenURL("Only http:// and https:// links can be transcribed.")
    if not host:
        raise ForbiddenURL("The URL has no host name.")
    if settings.allow_private_networks and _is_private_host(host):
        return url
    if _is_private_host(host):
        raise ForbiddenURL("Links to private or local network addresses are not allowed.")
    if "*" in settings.allowed_hosts or host in settings.allowed_hosts:
        return url
    if set(settings.allowed_hosts) == set(YOUTUBE_HOSTS):
        raise ForbiddenURL(f"Links to {host} are not allowed here: this server transcribes YouTube links.")
    allowed = ", ".join(settings.allowed_hosts) or "none"
    raise ForbiddenURL(f"Links to {host} are not allowed here (allowed hosts: {allowed}).")
