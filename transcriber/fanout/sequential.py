"""Sequential mode: one segment at a time, in index order, each prompted with the text before
it. :class:`PromptCarry` holds the rules (shared with the Modal GPU generator);
:class:`SequentialMapper` runs them over any other mapper's workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from transcriber.engine import TranscribeOptions
from transcriber.fanout.jobs import InlineMapper, Mapper, SegmentJob, SegmentResult

#: Whisper conditions on at most 223 previous tokens; ~800 characters of English is about that.
MAX_PROMPT_CHARS = 800


def bounded_prompt(text: str, limit: int = MAX_PROMPT_CHARS) -> str | None:
    """The last ``limit`` characters of ``text`` as a prompt (whitespace folded, never starting
    mid-word), or None when nothing is left."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[-limit:]
        text = text.split(" ", 1)[1] if " " in text else text  # do not start mid-word
    return text or None


def tripped_guard(result: SegmentResult, options: TranscribeOptions) -> bool:
    """Whether ``result`` looks like a hallucination loop (whisper's guards) or failed.

    Carrying such text as the next prompt invites the loop to continue, so the prompt resets.
    """
    if result.error:
        return True
    for piece in result.pieces:
        ratio, logprob = options.compression_ratio_threshold, options.log_prob_threshold
        if ratio is not None and piece.compression_ratio > ratio:
            return True
        if logprob is not None and piece.avg_logprob < logprob:
            return True
    return False


@dataclass
class PromptCarry:
    """The sequential mode's context, and the one place its rules live.

    Like whisper inside one long file: the previous segments' final text (the last
    ``max_chars`` characters) becomes the next job's ``initial_prompt``; a segment that trips
    :func:`tripped_guard` resets it; a segment with no text carries it over. The first job keeps
    the ``initial_prompt`` it came with (the pipeline seeds it with stored text when resuming).

    :class:`SequentialMapper` and the Modal GPU generator (``app/modal_app.py``) both run
    ``job = carry.apply(job)``, transcribe, ``carry.advance(job, result)``. The fields are
    plain, so the state can travel to a GPU container and back (``asdict`` / ``PromptCarry(**d)``).
    """

    max_chars: int = MAX_PROMPT_CHARS
    #: The text the next job is prompted with (None: nothing yet, or reset).
    prompt: str | None = None
    #: False until a segment is done: until then a job keeps its own ``initial_prompt``.
    carrying: bool = False

    def apply(self, job: SegmentJob) -> SegmentJob:
        """``job`` with the carried text as its ``initial_prompt``."""
        if not self.carrying:
            return job
        options = dataclasses.replace(job.options, initial_prompt=self.prompt)
        return dataclasses.replace(job, options=options)

    def advance(self, job: SegmentJob, result: SegmentResult) -> None:
        """Move past ``result``; ``job`` is the one :meth:`apply` returned for it."""
        if tripped_guard(result, job.options):
            self.prompt = None
        elif result.text:
            self.prompt = bounded_prompt(f"{job.options.initial_prompt or ''} {result.text}",
                                          self.max_chars)
        else:
            self.prompt = job.options.initial_prompt  # silence carries the context over
        self.carrying = True


class SequentialMapper:
    """One segment at a time, in index order, each prompted with the text before it
    (:class:`PromptCarry`, at most ``max_prompt_chars`` of it).

    Jobs must come in index order; gaps (silent or resumed segments the caller kept to itself)
    carry the prompt over.
    ``base`` runs the jobs (default: an :class:`InlineMapper`); it is borrowed, not closed,
    unless ``close_base``.
    """

    def __init__(
        self,
        base: Mapper | None = None,
        *,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        close_base: bool | None = None,
    ) -> None:
        self.base: Mapper = base if base is not None else InlineMapper()
        self.max_prompt_chars = max_prompt_chars
        self.close_base = base is None if close_base is None else close_base

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncIterator[SegmentResult]:
        carry = PromptCarry(self.max_prompt_chars)
        async for job in jobs:
            job = carry.apply(job)
            result = await self._one(job)
            carry.advance(job, result)
            yield result

    async def _one(self, job: SegmentJob) -> SegmentResult:
        async def single() -> AsyncIterator[SegmentJob]:
            yield job

        results = self.base.map(single())
        try:
            return await anext(results)
        finally:
            await results.aclose()

    async def aclose(self) -> None:
        if self.close_base:
            await self.base.aclose()
