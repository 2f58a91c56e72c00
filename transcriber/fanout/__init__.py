"""Fan segment jobs out to Whisper workers; results come back as they complete (out of order).

Three local mappers implement :class:`Mapper`; the Modal mappers live in ``app/`` and implement
the same protocol around the same :func:`run_job`:

- :class:`InlineMapper`: this process, one segment at a time in a thread (tests, tiny inputs).
- :class:`LocalPoolMapper`: a pool of worker processes, shareable by concurrent jobs.
- :class:`SequentialMapper`: one segment at a time in index order over any other mapper, each
  with the previous text as ``initial_prompt`` (``mode="sequential"``).

The modules, in the order a job meets them:

- :mod:`~transcriber.fanout.jobs`: the job and result types, the :class:`Mapper` protocol,
  :func:`run_job` (shared by every worker, local and Modal) and :class:`InlineMapper`;
- :mod:`~transcriber.fanout.pool`: the local process pool (the parent side);
- :mod:`~transcriber.fanout.worker`: one of its worker processes (thread and memory settings,
  the job loop);
- :mod:`~transcriber.fanout.sequential`: the sequential mapper and its prompt carry.

The fault-injection test hook (``STREAMSCRIBE_FAULTS``) lives in :mod:`transcriber.faults`.
"""

from transcriber.fanout.jobs import (
    ABANDON,
    InlineMapper,
    Mapper,
    SegmentJob,
    SegmentResult,
    batchable,
    mapper_for_mode,
    run_batch,
    run_job,
    run_job_retrying,
)
from transcriber.fanout.pool import LocalPoolMapper, default_split
from transcriber.fanout.sequential import (
    MAX_PROMPT_CHARS,
    PromptCarry,
    SequentialMapper,
    bounded_prompt,
    tripped_guard,
)

__all__ = [
    "ABANDON",
    "MAX_PROMPT_CHARS",
    "InlineMapper",
    "LocalPoolMapper",
    "Mapper",
    "PromptCarry",
    "SegmentJob",
    "SegmentResult",
    "SequentialMapper",
    "batchable",
    "bounded_prompt",
    "default_split",
    "mapper_for_mode",
    "run_batch",
    "run_job",
    "run_job_retrying",
    "tripped_guard",
]
