"""The words every layer shares, defined once: job status, mode, task, engine, transcript format.

They are ``StrEnum``s: each member *is* its string (``Mode.PARALLEL == "parallel"``), so they go
into JSON, SQLite, argparse ``choices`` and pydantic models as they are, and old stored values
read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life (``app.jobs``; stored with the job)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    #: Queued or running when its server died; asking for it again resumes it.
    INTERRUPTED = "interrupted"


#: A job that will produce no more events.
FINISHED = (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED)
#: A job that a server is (or was, before it died) working on.
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


class Mode(StrEnum):
    """How segments reach the engines."""

    #: Segments fan out to every worker at once (fast).
    PARALLEL = "parallel"
    #: One worker in order, each segment's text prompting the next (more consistent, slower).
    SEQUENTIAL = "sequential"


class Task(StrEnum):
    """whisper's ``--task``."""

    TRANSCRIBE = "transcribe"
    #: Into English.
    TRANSLATE = "translate"


class EngineName(StrEnum):
    """The Whisper implementations behind :class:`transcriber.engine.Engine`."""

    #: CTranslate2 (faster-whisper).
    FASTER_WHISPER = "faster-whisper"
    #: PyTorch (openai-whisper).
    OPENAI_WHISPER = "openai-whisper"


class OutputFormat(StrEnum):
    """Transcript documents (:mod:`transcriber.formats`), whisper's ``--output_format`` names."""

    TXT = "txt"
    SRT = "srt"
    VTT = "vtt"
    JSON = "json"
