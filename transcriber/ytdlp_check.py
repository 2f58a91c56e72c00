"""Which yt-dlp streamscribe runs, and the private yt-dlp/urllib3 names the URL guard relies on.

yt-dlp must move with YouTube (a release a few months old stops working), so it is pinned to a
tested *range*, not one version: :data:`YTDLP_REQUIREMENT` is what ``pyproject.toml`` and the
Modal images install. The URL guard (:mod:`transcriber.urlguard`, its pinned-connection and
yt-dlp sections) subclasses and overrides a few private names of yt-dlp's requests handler and
of urllib3; those are listed once here, in :data:`PRIVATE_API`, and :func:`private_api_problems`
says which of them a given install lacks, so a release that moves them fails one test with a
message that names what moved, instead of failing deep inside a download.
"""

from __future__ import annotations

import importlib
import inspect

#: The yt-dlp releases tested here: from the one the suite last ran on, up to (not including)
#: the next year's first, so ``pip``/the image pick up YouTube fixes without an edit.
YTDLP_MIN = "2026.10.26"
YTDLP_BELOW = "2027"
YTDLP_REQUIREMENT = f"yt-dlp[default]>={YTDLP_MIN},<{YTDLP_BELOW}"

#: ``module:Class`` -> {private method the guard overrides or calls: its parameters after self}.
PRIVATE_API: dict[str, dict[str, tuple[str, ...]]] = {
    "yt_dlp.networking._requests:RequestsRH": {
        "_create_instance": ("cookiejar", "legacy_ssl_support"),
        "_get_proxies": ("request",),
        "_send": ("request",),
    },
    "yt_dlp:YoutubeDL": {"build_request_director": ("handlers", "preferences")},
    "urllib3.connection:HTTPConnection": {"_new_conn": ()},
    "urllib3.connectionpool:HTTPConnectionPool": {"ConnectionCls": ()},
}


def private_api_problems() -> list[str]:
    """What this install lacks of :data:`PRIVATE_API`, one line each (empty: all present)."""
    problems = []
    for where, members in PRIVATE_API.items():
        module_name, _, class_name = where.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            problems.append(f"{where} is gone ({err})")
            continue
        for name, params in members.items():
            member = getattr(cls, name, None)
            if member is None:
                problems.append(f"{where}.{name} is gone")
            elif params:
                got = tuple(inspect.signature(member).parameters)[1:]
                if got[: len(params)] != params:
                    problems.append(f"{where}.{name} takes {got}, the guard passes {params}")
    return problems
