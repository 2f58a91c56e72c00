"""Fan segment jobs out to the Modal GPU ``Transcriber`` class, one spawned call per group of ready segments.

Two things live here, both shared by the CPU web container and the GPU containers:

* the **payload codec**: a :class:`~transcriber.fanout.SegmentJob` becomes a small dict of
  primitives (the segment's audio as little-endian int16 PCM bytes, the decode options, the
  segment's index and absolute offset) and a :class:`~transcriber.fanout.SegmentResult` comes
  back the same way. Only a few segments' audio travels per input — 30 s x 16 kHz x 2 bytes =
  960 KB per full segment, a group bounded by :data:`MAX_GROUP_PCM_BYTES`, under Modal's 2 MiB
  inline payload limit — never the whole file. Plain dicts (not
  our dataclasses) cross the wire so a container built from an older commit still reads them.
* :class:`ModalMapper`, the :class:`~transcriber.fanout.Mapper` that sends a lone payload with
  ``Transcriber(engine=..., model=...).transcribe.spawn.aio(payload)`` and a group of ready
  segments with ``.transcribe_batch.spawn.aio(payloads)`` (one batched engine call on the GPU,
  :func:`transcribe_group`), turns what comes back into ``SegmentResult``\\s, and cancels the
  calls still out when the job stops;
* the sequential mode's two halves: :func:`transcribe_in_order`, the body of the GPU generator
  ``Transcriber.transcribe_sequential``, and :class:`ModalSequentialMapper`, which iterates it
  with ``remote_gen.aio``.

This module and ``app/modal_app.py`` are the only ones that touch Modal; the codec itself
needs nothing from it, which is what lets tests run the GPU method's body through ``.local()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from dataclasses import asdict, fields
from typing import Any, Protocol, cast

import numpy as np

from transcriber import SAMPLE_RATE
from transcriber.engine import EngineConfig, Piece, TranscribeOptions, Word
from transcriber.fanout import MAX_PROMPT_CHARS, PromptCarry, SegmentJob, SegmentResult
from transcriber.fanout.jobs import batchable
from transcriber.vad import SpeechMap

#: Bumped when the payload layout changes incompatibly; a mismatch is an error, not a guess.
PAYLOAD_VERSION = 1
#: Modal sends inputs up to 2 MiB inline; leave room for the few other fields.
MAX_PCM_BYTES = 2 * 1024 * 1024 - 64 * 1024
#: A group of segments shares one input only while their audio stays this small: 1.5 MiB of
#: int16 PCM is 49 s of audio, so a call stays well under the 2 MiB limit, and a full 30 s
#: segment (960 KB) pairs only with a segment of up to 19 s. Shorter segments (speech cut at
#: pauses, the end of a source) group up to the batch size.
MAX_GROUP_PCM_BYTES = 3 * 512 * 1024


class PayloadError(ValueError):
    """A payload this code cannot read (wrong version, missing field, oversize audio)."""


# -- codec -------------------------------------------------------------------------------------


#: ffmpeg's scale between int16 and float samples: audio decoded from a 16-bit source (most
#: sources) crosses the wire exactly, so a GPU container sees what a local worker sees.
PCM_SCALE = 32768.0


def encode_pcm(audio: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian int16 bytes (the decoder's own sample format)."""
    scaled = np.round(np.asarray(audio, dtype=np.float32) * PCM_SCALE)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def decode_pcm(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / PCM_SCALE


def encode_job(job: SegmentJob) -> dict[str, Any]:
    """What one GPU input carries. The engine config stays behind: the container has its own
    (its device, its weight cache), chosen by the ``Transcriber`` parameters."""
    pcm = b"" if job.silent else encode_pcm(job.audio)
    if len(pcm) > MAX_PCM_BYTES:
        seconds = len(pcm) / 2 / SAMPLE_RATE
        raise PayloadError(
            f"segment {job.index} is {seconds:.0f} s long; a Modal input carries at most "
            f"{MAX_PCM_BYTES / 2 / SAMPLE_RATE:.0f} s of audio (segments span at most 60 s)"
        )
    return {
        "v": PAYLOAD_VERSION,
        "index": job.index,
        "start": job.start,
        "end": job.end,
        "silent": job.silent,
        "samples": len(job.audio),
        "pcm": pcm,
        "options": asdict(job.options),
        # The speech gate's map, computed where the segment was cut; the container decodes
        # only its speech regions (see transcriber.vad).
        "speech": None if job.speech is None else job.speech.to_payload(),
    }


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Drop keys a dataclass does not have (a payload from a newer sender stays readable)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def decode_job(payload: dict[str, Any], engine: EngineConfig) -> SegmentJob:
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        got = payload.get("v") if isinstance(payload, dict) else type(payload).__name__
        raise PayloadError(f"expected a version {PAYLOAD_VERSION} segment payload, got {got!r}")
    try:
        silent = bool(payload["silent"])
        audio = (
            np.zeros(int(payload["samples"]), dtype=np.float32)
            if silent
            else decode_pcm(payload["pcm"])
        )
        return SegmentJob(
            index=int(payload["index"]),
            start=float(payload["start"]),
            end=float(payload["end"]),
            audio=audio,
            engine=engine,
            options=TranscribeOptions(**_known(TranscribeOptions, payload["options"])),
            silent=silent,
            speech=None if payload.get("speech") is None else SpeechMap.from_payload(payload["speech"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise PayloadError(f"malformed segment payload: {err}") from err


def encode_result(result: SegmentResult) -> dict[str, Any]:
    plain = {f.name: getattr(result, f.name) for f in fields(SegmentResult) if f.name != "pieces"}
    return {"v": PAYLOAD_VERSION, **plain, "pieces": [asdict(p) for p in result.pieces]}


def _piece(data: dict[str, Any]) -> Piece:
    words = data.get("words")
    piece = Piece(**_known(Piece, {**data, "words": None}))
    if words is not None:
        piece.words = [Word(**_known(Word, w)) for w in words]
    return piece


def decode_result(payload: dict[str, Any]) -> SegmentResult:
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        got = payload.get("v") if isinstance(payload, dict) else type(payload).__name__
        raise PayloadError(f"expected a version {PAYLOAD_VERSION} result payload, got {got!r}")
    try:
        plain = _known(SegmentResult, {k: v for k, v in payload.items() if k != "pieces"})
        return SegmentResult(**plain, pieces=[_piece(p) for p in payload["pieces"]])
    except (KeyError, TypeError) as err:
        raise PayloadError(f"malformed result payload: {err}") from err


def _decode_carry(state: Any) -> PromptCarry:
    if not isinstance(state, dict):
        raise PayloadError(f"expected the prompt state as a dict, got {type(state).__name__}")
    try:
        return PromptCarry(**_known(PromptCarry, state))
    except TypeError as err:
        raise PayloadError(f"malformed prompt state: {err}") from err


def transcribe_in_order(
    payloads: Iterable[dict[str, Any]], carry: dict[str, Any], engine: EngineConfig
) -> Iterator[dict[str, Any]]:
    """The GPU side of the sequential mode: segments one after another on this container.

    Each segment is prompted with the text before it by the same :class:`PromptCarry` rules as
    the local :class:`~transcriber.fanout.SequentialMapper`, starting from ``carry`` (the state
    the previous call ended with), and its result payload is yielded the moment it is done,
    with the state after it under ``"carry"`` for the next call to start from.
    """
    from transcriber.fanout import run_job_retrying

    state = _decode_carry(carry)
    for payload in payloads:
        job = state.apply(decode_job(payload, engine))
        result = run_job_retrying(job)
        state.advance(job, result)
        yield {**encode_result(result), "carry": asdict(state)}


def transcribe_group(payloads: list[dict[str, Any]], engine: EngineConfig) -> list[dict[str, Any]]:
    """The GPU side of a grouped call: several segment payloads -> their result payloads, in order.

    The segments go through :func:`transcriber.fanout.run_batch`, the batched path a local pool
    worker runs (one engine call, each segment's speech gate, a lone re-decode for a segment that
    fails whisper's thresholds, each alone if the batch raises). A group that
    :func:`~transcriber.fanout.jobs.batchable` would not have formed (a sender that does not
    follow the rule) runs one segment at a time rather than with the wrong options.
    """
    from transcriber.fanout import run_batch, run_job_retrying

    jobs = [decode_job(payload, engine) for payload in payloads]
    if jobs and all(batchable(jobs[0], job) for job in jobs[1:]):
        results = run_batch(jobs)
    else:
        results = [run_job_retrying(job) for job in jobs]
    return [encode_result(result) for result in results]


def pcm_bytes(job: SegmentJob) -> int:
    """The size of ``job``'s audio in a payload (:func:`encode_job`: int16, none when silent)."""
    return 0 if job.silent else 2 * len(job.audio)


# -- the mapper --------------------------------------------------------------------------------


class _Call(Protocol):
    """The slice of ``modal.FunctionCall`` the mapper uses."""

    get: Any  # .get.aio() -> the result; raises what the input raised after its retries
    cancel: Any  # .cancel.aio(): queued inputs never start, running ones are terminated


class _SpawnMethod(Protocol):
    """The slice of a ``modal.Function`` (a method of a ``modal.Cls`` instance) the mapper uses."""

    spawn: Any  # .spawn.aio(payload) -> a _Call


class _Instance(Protocol):
    """The slice of a ``Transcriber(engine=..., model=...)`` instance the mapper uses."""

    transcribe: _SpawnMethod  # one segment payload -> its result payload
    transcribe_batch: _SpawnMethod  # a list of payloads -> their result payloads, in order


def _failure_message(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return f"the GPU worker failed on this segment after its retries ({type(err).__name__}: {text})"


def pinned_refusal(pinned: tuple[str, str] | None, engine: str, model: str) -> str | None:
    """Why a deployment pinned to ``pinned`` (engine, model) cannot run ``engine``/``model``."""
    if pinned is None or (engine, model) == pinned:
        return None
    return (
        f"This deployment runs {pinned[0]} with the model {pinned[1]} only (one GPU pool, one "
        f"cost cap); {engine} {model} needs its own deployment (STREAMSCRIBE_ENGINE, "
        "STREAMSCRIBE_MODEL at deploy time)."
    )


class ModalMapper:
    """:class:`~transcriber.fanout.Mapper` over a Modal class with a ``transcribe`` method.

    ``transcriber_cls`` is the ``Transcriber`` from ``app.modal_app`` (anything called as
    ``transcriber_cls(engine=..., model=...)`` whose ``.transcribe.spawn.aio`` behaves like
    Modal's). The first job's :class:`~transcriber.engine.EngineConfig` picks the instance;
    every job of one map shares it (one pipeline run has one engine). ``pinned`` (engine,
    model): the only pair this deployment serves; :meth:`refusal` says why another is refused,
    and the job manager turns that into a 400 before any job starts.

    Each call carries a group of the segments that are ready when it is sent, by the rule the
    local pool follows (:func:`~transcriber.fanout.jobs.batchable`): up to the job's
    ``batch_size`` segments, never a job's first segment (it goes alone, so the first text never
    waits for a batch) or a silent one, and never waiting for more to arrive; a group also stops
    at :data:`MAX_GROUP_PCM_BYTES` of audio. A lone segment goes to ``transcribe``, a group to
    ``transcribe_batch`` (one batched engine call on the GPU). Results are taken as each call
    finishes (completion order; each result payload's index maps it back to its segment, and a
    call that failed after Modal's retries is an error result for each of its segments).

    Cancelling: ``max_in_flight`` bounds the *segments* sent and not yet answered (so a fast
    decoder does not queue a whole 2-hour file ahead of the GPUs; a group only takes the slots
    that are free), and closing the returned generator (a cancelled or abandoned job) cancels
    every call still out with ``FunctionCall.cancel()``: the queued ones never start, and Modal
    terminates the ones already running. The GPU work billed after a cancel is therefore at most
    the calls that had already started (one per GPU container, each at most ``batch_size``
    segments), and in practice what Modal takes to stop them.

    ``mode="sequential"``: :func:`transcriber.fanout.mapper_for_mode` asks :meth:`sequential`
    for the :class:`ModalSequentialMapper` on the same class (one GPU generator streaming
    segments in order), so a web app holds one ModalMapper and serves both modes.
    """

    def __init__(
        self,
        transcriber_cls: Any,
        *,
        max_in_flight: int = 32,
        pinned: tuple[str, str] | None = None,
    ):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.transcriber_cls = transcriber_cls
        self.max_in_flight = max_in_flight
        self.pinned = pinned

    def refusal(self, engine: str, model: str) -> str | None:
        """Why this mapper will not run ``engine``/``model`` (None: it will)."""
        return pinned_refusal(self.pinned, engine, model)

    def _instance(self, config: EngineConfig) -> _Instance:
        refused = self.refusal(config.engine, config.model)
        if refused:
            raise ValueError(refused)
        return self.transcriber_cls(engine=config.engine, model=config.model)

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncGenerator[SegmentResult, None]:
        source = aiter(jobs)
        first = await anext(source, None)
        if first is None:
            return
        config = first.engine
        gpu = self._instance(config)
        slots = asyncio.Semaphore(self.max_in_flight)
        #: Every call spawned and not yet answered, with its segments.
        outstanding: dict[asyncio.Task, tuple[list[SegmentJob], _Call]] = {}
        results: asyncio.Queue[SegmentResult | BaseException | None] = asyncio.Queue()
        #: Jobs the source has ready: what a group may take without waiting. Bounded, so the
        #: decoder is not run ahead of the GPUs by more than one batch.
        ready: asyncio.Queue[Any] = asyncio.Queue(  # jobs, then _END or the source's error
            maxsize=max(1, first.options.batch_size)
        )

        async def pull() -> None:
            try:
                job: SegmentJob | None = first
                while job is not None:
                    await ready.put(job)
                    job = await anext(source, None)
            except Exception as err:  # the job source broke: the map raises it
                await ready.put(err)
            else:
                await ready.put(_END)

        async def answer(group: list[SegmentJob], call: _Call) -> None:
            try:
                got = await call.get.aio()
                answered = [decode_result(p) for p in (got if len(group) > 1 else [got])]
                if [r.index for r in answered] != [j.index for j in group]:
                    raise PayloadError(f"results for segments {[r.index for r in answered]}")
            except Exception as err:  # what the input raised after Modal's retries
                message = _failure_message(err)
                answered = [SegmentResult(j.index, j.start, j.end, error=message) for j in group]
            finally:
                # Settled before its results are queued, so the loop below sees it gone.
                outstanding.pop(cast(asyncio.Task, asyncio.current_task()), None)  # run as a task
                for _ in group:
                    slots.release()
            for result in answered:
                results.put_nowait(result)

        async def feed() -> None:
            held: Any = None  # taken from `ready`, not yet sent
            try:
                while True:
                    item, held = (held if held is not None else await ready.get()), None
                    if item is _END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    if (item.engine.engine, item.engine.model) != (config.engine, config.model):
                        # Cannot happen from one pipeline run; refuse rather than mis-transcribe.
                        error = "engine changed mid-job"
                        results.put_nowait(SegmentResult(item.index, item.start, item.end, error=error))
                        continue
                    await slots.acquire()
                    group, size = [item], pcm_bytes(item)
                    # Ready mates, while slots are free: never waiting for more to arrive.
                    while len(group) < item.options.batch_size and not ready.empty() and not slots.locked():
                        mate = ready.get_nowait()
                        if not isinstance(mate, SegmentJob) or not batchable(item, mate) or (
                            size + pcm_bytes(mate) > MAX_GROUP_PCM_BYTES
                        ):
                            held = mate  # it starts the next call instead
                            break
                        await slots.acquire()  # free: not locked, so this does not wait
                        group.append(mate)
                        size += pcm_bytes(mate)
                    if len(group) == 1:
                        call = await gpu.transcribe.spawn.aio(encode_job(item))
                    else:
                        call = await gpu.transcribe_batch.spawn.aio([encode_job(j) for j in group])
                    outstanding[asyncio.create_task(answer(group, call))] = (group, call)
            except Exception as err:  # the job source broke, or spawning did: the map raises it
                results.put_nowait(err)
            results.put_nowait(None)

        puller, feeder = asyncio.create_task(pull()), asyncio.create_task(feed())
        fed = False
        try:
            while not (fed and not outstanding and results.empty()):
                item = await results.get()
                if item is None:
                    fed = True
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in (puller, feeder):
                task.cancel()
            await asyncio.gather(puller, feeder, return_exceptions=True)
            await self._cancel(outstanding)

    @staticmethod
    async def _cancel(outstanding: dict[asyncio.Task, tuple[list[SegmentJob], _Call]]) -> None:
        """Cancel every call still out (queued ones never start; Modal stops running ones)."""
        pending = list(outstanding.items())
        for task, _ in pending:
            task.cancel()
        await asyncio.gather(
            *(call.cancel.aio() for _, (_, call) in pending), *(t for t, _ in pending),
            return_exceptions=True,
        )  # fmt: skip

    def sequential(self) -> ModalSequentialMapper:
        """The sequential mode on the same ``Transcriber`` class (see :func:`mapper_for_mode`)."""
        return ModalSequentialMapper(self.transcriber_cls, pinned=self.pinned)

    async def aclose(self) -> None:
        """Nothing to release here: Modal scales the GPU containers down by itself."""


class _GenMethod(Protocol):
    """The slice of a generator ``modal.Function`` the sequential mapper uses."""

    def aio(self, payloads: list[dict], carry: dict) -> AsyncGenerator[Any, None]: ...


#: Marks the end of the jobs in :class:`ModalSequentialMapper`'s buffer.
_END = object()


class ModalSequentialMapper:
    """Sequential mode on Modal: ``Transcriber(...).transcribe_sequential.remote_gen.aio``.

    One GPU generator call transcribes segments in order on one container, each prompted with
    the text before it (:func:`transcribe_in_order`), and yields each result as it is done.
    Segments, though, arrive while the source is still decoding, and a generator cannot be fed
    more input once called. Sending the whole job in one call would wait for the end of the
    decode (a 2-hour download) before the first word. So the segments are sent in *chunks of
    what is ready*, and the prompt state travels from call to call: jobs are pulled into a
    buffer as they come; each call takes everything waiting (at least one segment, at most
    ``max_batch``), starting from the :class:`PromptCarry` the previous call's last result came
    back with. While the decoder is the slow side, calls hold one segment and text follows each
    segment's decode at once; while the GPU is, calls fill to ``max_batch`` and a call's cost
    (scheduling it, perhaps on another warm container, which the carried state makes harmless)
    is paid once per batch. ``max_batch`` = 4 keeps a call far inside the class's 180 s timeout
    (4 x 30 s of audio, ~1 s each on a GPU, 10 s even for a full temperature fallback) and
    bounds what a cancelled job leaves running: closing a generator call's stream does not stop
    the generator on Modal's side, so a cancelled job bills at most the rest of one call, 4
    segments (2 minutes of audio, a few GPU-seconds). The buffer bounds memory: at most
    ``2 x max_batch`` segments of audio are held here.

    The carried text is the GPU's: each result payload brings the state after it, so this side
    never re-derives it. A call that fails (a container lost after Modal's retries, an input
    timeout) fails the segment it was on (the first one not answered), which becomes an error
    result and resets the prompt, as a failed segment does locally; the segments after it go
    out again in the next call. Results that a call Modal retried replays are skipped by index.
    Closing the returned generator closes the call and stops pulling jobs; the segment running
    on the GPU finishes there and its result is dropped.

    Every job of one map uses the first job's engine config (one pipeline run has one engine).
    """

    def __init__(
        self,
        transcriber_cls: Any,
        *,
        max_batch: int = 4,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        pinned: tuple[str, str] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.transcriber_cls = transcriber_cls
        self.max_batch = max_batch
        self.max_prompt_chars = max_prompt_chars
        self.pinned = pinned

    def refusal(self, engine: str, model: str) -> str | None:
        return pinned_refusal(self.pinned, engine, model)

    def _method(self, config: EngineConfig) -> _GenMethod:
        refused = self.refusal(config.engine, config.model)
        if refused:
            raise ValueError(refused)
        instance = self.transcriber_cls(engine=config.engine, model=config.model)
        return instance.transcribe_sequential.remote_gen

    async def map(self, jobs: AsyncIterator[SegmentJob]) -> AsyncGenerator[SegmentResult, None]:
        source = aiter(jobs)
        buffer: asyncio.Queue[Any] = asyncio.Queue()  # jobs, then _END or the source's error
        room = asyncio.Semaphore(self.max_batch)

        async def pull() -> None:
            try:
                while True:
                    await room.acquire()
                    job = await anext(source, None)
                    if job is None:
                        break
                    buffer.put_nowait(job)
            except Exception as err:  # the caller's job source broke: the map raises it
                buffer.put_nowait(err)
            else:
                buffer.put_nowait(_END)

        puller = asyncio.create_task(pull())
        carry = PromptCarry(self.max_prompt_chars)
        method: _GenMethod | None = None
        try:
            ended = False
            while not ended:
                chunk: list[SegmentJob] = []
                item = await buffer.get()
                while True:
                    if item is _END:
                        ended = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    room.release()
                    chunk.append(item)
                    if len(chunk) == self.max_batch or buffer.empty():
                        break
                    item = buffer.get_nowait()
                if not chunk:
                    continue
                method = method or self._method(chunk[0].engine)
                async for result in self._run(method, chunk, carry):
                    yield result
        finally:
            puller.cancel()
            await asyncio.gather(puller, return_exceptions=True)
            if hasattr(source, "aclose"):
                await source.aclose()

    async def _run(
        self, method: _GenMethod, chunk: list[SegmentJob], carry: PromptCarry
    ) -> AsyncGenerator[SegmentResult, None]:
        """One chunk's results in order, ``carry`` kept up to date; after a failure, another
        call for the segments still unanswered."""
        todo = list(chunk)
        while todo:
            failure: BaseException | None = None
            stream = method.aio([encode_job(j) for j in todo], asdict(carry))
            try:
                async for output in stream:
                    result = decode_result(output)
                    if not todo or result.index != todo[0].index:
                        continue  # a replay from a call Modal retried: already here
                    todo.pop(0)
                    after = _decode_carry(output.get("carry"))
                    carry.prompt, carry.carrying = after.prompt, after.carrying
                    yield result
            except Exception as err:  # Modal raises what the call raised after its retries
                failure = err
            finally:
                await stream.aclose()
            if todo:
                lost = carry.apply(todo.pop(0))
                failure = failure or RuntimeError("the GPU call ended before this segment")
                result = SegmentResult(lost.index, lost.start, lost.end, error=_failure_message(failure))
                carry.advance(lost, result)  # a failed segment resets the prompt
                yield result

    async def aclose(self) -> None:
        """Nothing to release: the generator calls end with their map."""
