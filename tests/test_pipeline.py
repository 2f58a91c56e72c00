"""The streaming pipeline end to end: real speech, real ffmpeg, real workers and weights.

The input is ~62 s of fixture speech with pauses (``speech_mix``); tiny.en, greedy decoding.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.media_server import MediaServer
from tests.helpers.models import ct2_tiny_en, openai_tiny_en, speech, wer
from tests.helpers.pipeline import (
    BAD_MODEL,
    FAST,
    MIX_CLIPS,
    HeldBack,
    Recording,
    child_processes,
    read_wav,
    speech_mix,
    tiny_pool,
)
from transcriber import SAMPLE_RATE, formats
from transcriber.engine import EngineConfig
from transcriber.events import Done, Failed, Meta, Progress, SegmentDone, SegmentFailed
from transcriber.fanout import InlineMapper, LocalPoolMapper
from transcriber.media import Source
from transcriber.pipeline import PipelineOptions, transcribe_stream
from transcriber.segment import SegmentOptions
from transcriber.subtitles import SubtitleOptions

#: Pipeline WER may exceed the same engine's whole-file WER by at most this much (absolute):
#: segments are cut at pauses, so each is decoded without the text before it.
WER_MARGIN = 0.05
#: Short segments so that a one-minute input has enough of them to reorder and cancel.
SHORT = SegmentOptions(max_seconds=10.0, min_seconds=3.0)
pool = pytest.fixture(tiny_pool, scope="module", name="pool")


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> tuple[Path, str]:
    return speech_mix(tmp_path_factory.mktemp("mix") / "mix.wav")


def run(source, options: PipelineOptions, mapper, **kw) -> list:
    async def go():
        return [event async for event in transcribe_stream(source, options, mapper, **kw)]

    return asyncio.run(go())


def clip_offsets() -> dict[str, float]:
    """Where each clip of the mix starts, seconds (1.5 s pause after each)."""
    offsets, t = {}, 0.0
    for name in MIX_CLIPS:
        offsets[name] = t
        t += len(speech(name)) / SAMPLE_RATE + 1.5
    return offsets


def check_stream_shape(events: list) -> Done:
    """Meta first, Done last, one progress after each segment, committed never decreasing."""
    assert isinstance(events[0], Meta) and isinstance(events[-1], Done)
    committed = 0
    for before, event in zip(events, events[1:], strict=False):
        if isinstance(before, SegmentDone | SegmentFailed):
            assert isinstance(event, Progress)
        if isinstance(event, Progress):
            assert event.committed >= committed
            committed = event.committed
    done = events[-1]
    segments = formats.assemble(events)
    failed = [e.index for e in events if isinstance(e, SegmentFailed)]
    assert sorted([s.index for s in segments] + failed) == list(range(done.segments))
    # Segments tile the input: each starts where the previous ended.
    spans = sorted((e.index, e.start, e.end) for e in events if isinstance(e, SegmentDone | SegmentFailed))
    for (_, _, end), (_, start, _) in zip(spans, spans[1:], strict=False):
        assert start == pytest.approx(end, abs=1e-6)
    assert spans[0][1] == 0.0 and spans[-1][2] == pytest.approx(done.audio_s, abs=1e-3)
    assert committed == done.segments
    return done


def whole_file(engine: str, wav: Path) -> tuple[str, float]:
    """The engine library's own long-form transcription of the whole file (its defaults, greedy)."""
    audio = read_wav(wav)  # openai-whisper would look for ffmpeg on PATH to read a file
    began = time.perf_counter()
    if engine == "faster-whisper":
        from faster_whisper import WhisperModel

        model = WhisperModel(str(ct2_tiny_en()), device="cpu", compute_type="int8", cpu_threads=2)
        pieces, _ = model.transcribe(audio, beam_size=1, language="en")
        text = " ".join(p.text.strip() for p in pieces)
    else:
        import whisper

        model = whisper.load_model(str(openai_tiny_en()), device="cpu")
        text = model.transcribe(audio, fp16=False, language="en")["text"]
    return text, time.perf_counter() - began


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["faster-whisper", "openai-whisper"])
def test_real_speech_against_whole_file(engine, pool, mix, artifacts_dir) -> None:
    wav, reference = mix
    model = "tiny.en" if engine == "faster-whisper" else str(openai_tiny_en())
    options = PipelineOptions(engine=EngineConfig(engine=engine, model=model), transcribe=FAST)
    began = time.perf_counter()
    events = run(str(wav), options, pool)
    wall = time.perf_counter() - began
    done = check_stream_shape(events)
    assert done.failed_segments == [] and done.segments >= 3
    assert events[0].engine == engine and events[0].duration == pytest.approx(62.3, abs=0.1)
    segments = formats.assemble(events)
    pipeline_wer = wer(reference, " ".join(s.text for s in segments))
    whole_text, whole_wall = whole_file(engine, wav)
    whole_wer = wer(reference, whole_text)
    assert pipeline_wer <= whole_wer + WER_MARGIN, (pipeline_wer, whole_wer)
    assert pipeline_wer <= 0.15

    # The captions of a real transcript survive the round trip with their absolute times
    # (unshaped: one cue per piece; tests/test_subtitles.py checks the shaped default).
    cues = formats.cues(segments)
    parsed = formats.parse_srt(formats.write_srt(segments, SubtitleOptions(max_line_width=0)))
    assert [c.text for c in parsed] == [c.text for c in cues] and len(cues) >= done.segments
    for got, want in zip(parsed, cues, strict=True):
        assert abs(got.start - want.start) < 1e-3 and abs(got.end - want.end) < 1e-3
    forward = next(c for c in cues if "forward" in c.text.lower())
    assert abs(forward.start - clip_offsets()["ps_goforward"]) < 1.5

    record = artifacts_dir / "pipeline_vs_whole_file.json"
    results = json.loads(record.read_text()) if record.exists() else {}
    results[engine] = {
        "pipeline_wer": round(pipeline_wer, 4),
        "whole_file_wer": round(whole_wer, 4),
        "pipeline_wall_s": round(wall, 2),
        "pipeline_done_wall_s": done.wall_s,
        "first_segment_s": done.first_segment_s,
        "whole_file_wall_s": round(whole_wall, 2),
        "segments": done.segments,
        "audio_s": done.audio_s,
        "workers_x_threads": f"{pool.workers}x{pool.threads}",
    }
    record.write_text(json.dumps(results, indent=2))


@pytest.mark.slow
def test_out_of_order_results_assemble_in_order(pool, mix) -> None:
    wav, reference = mix
    held = HeldBack(pool)
    options = PipelineOptions(transcribe=FAST, segment=SHORT)
    events = run(str(wav), options, held)
    done = check_stream_shape(events)
    arrived = [e.index for e in events if isinstance(e, SegmentDone)]
    assert done.segments >= 6
    assert arrived == sorted(arrived, reverse=True)  # the worst order: last segment first
    commits = [e.committed for e in events if isinstance(e, Progress)]
    # Nothing is committed until segment 0 arrives, which is last; then everything is.
    assert commits[:-2] == [0] * (len(commits) - 2) and commits[-1] == done.segments
    segments = formats.assemble(events)
    assert [s.index for s in segments] == list(range(done.segments))
    assert wer(reference, " ".join(s.text for s in segments)) <= 0.15
    for segment in segments:
        assert all(segment.start <= p["start"] <= p["end"] <= segment.end for p in segment.pieces)
    cues = formats.cues(segments)
    offsets = clip_offsets()
    for clip, word in (("ps_librivox_0920", "married"), ("ps_goforward", "forward")):
        cue = next(c for c in cues if word in c.text.lower())
        # Whisper's first timestamp may fall in the pause before the words (1.5 s long); a
        # segment's offset applied twice or not at all would be off by several seconds.
        assert abs(cue.start - offsets[clip]) <= 1.5


@pytest.mark.slow
def test_first_segment_arrives_while_decoding_continues(pool, mix) -> None:
    wav, _ = mix
    rate = 6 * SAMPLE_RATE * 2  # six times real time: the 62 s file takes ~10 s to arrive
    with MediaServer({"/mix.wav": wav}, throttle_bytes_per_s=rate) as server:
        options = PipelineOptions(transcribe=FAST, segment=SHORT)

        async def go():
            seen, gaps = [], []

            async def heartbeat():  # how long the loop ever went without running it
                while True:
                    began = time.monotonic()
                    await asyncio.sleep(0.01)
                    gaps.append(time.monotonic() - began - 0.01)

            beat = asyncio.create_task(heartbeat())
            async for event in transcribe_stream(server.url("/mix.wav"), options, pool):
                seen.append((time.monotonic(), event))
            beat.cancel()
            return seen, max(gaps)

        timed, longest_stall = asyncio.run(go())
        print(f"longest event-loop stall: {longest_stall * 1000:.0f} ms")
        transfers = [r for r in server.requests("/mix.wav") if r.method == "GET" and r.complete]
    assert transfers, "the whole file was served"
    transfer_end = max(r.finished for r in transfers)
    first_at, first = next((t, e) for t, e in timed if isinstance(e, SegmentDone))
    assert first_at < transfer_end - 2.0  # text came seconds before the download ended
    progress_after_first = next(
        e for t, e in timed if isinstance(e, Progress) and t >= first_at
    )
    assert not progress_after_first.decoding_done
    assert first.text.strip()
    assert isinstance(timed[-1][1], Done)
    # Nothing blocking ran on the loop (a model call or an ffmpeg read there would stall it
    # for seconds); the bound leaves room for a loaded test machine.
    assert longest_stall < 0.5


class BreakOne(Recording):
    """Runs the real pool, but segment ``index`` gets an engine config whose model path does
    not exist: its real engine load raises in the worker (twice: it is retried once)."""

    def __init__(self, inner, index: int) -> None:
        super().__init__(inner)
        self.index = index

    async def _seen(self, jobs):
        async for job in super()._seen(jobs):
            yield dataclasses.replace(job, engine=BAD_MODEL) if job.index == self.index else job


@pytest.mark.slow
def test_a_failing_segment_is_reported_and_the_job_finishes(pool, mix) -> None:
    wav, reference = mix
    options = PipelineOptions(transcribe=FAST, segment=SHORT)
    events = run(str(wav), options, BreakOne(pool, 1))
    done = check_stream_shape(events)
    (failed,) = [e for e in events if isinstance(e, SegmentFailed)]
    assert failed.index == 1 and "/nonexistent/whisper-model" in failed.message
    assert done.failed_segments == [1]
    segments = formats.assemble(events)
    assert len(segments) == done.segments - 1 and all(s.index != 1 for s in segments)
    assert sum(bool(s.text) for s in segments) >= done.segments - 2


@pytest.mark.slow
def test_resume_transcribes_only_missing_segments(pool, mix) -> None:
    wav, _ = mix
    options = PipelineOptions(transcribe=FAST, segment=SHORT)
    first = formats.assemble(run(str(wav), options, pool))
    kept = {s.index: s for s in first if s.index % 2 == 0}
    recording = Recording(pool)
    events = run(str(wav), options, recording, completed=kept)
    done = check_stream_shape(events)
    assert done.reused_segments == len(kept)
    sent = sorted(j.index for j in recording.jobs)
    assert sent and all(i % 2 == 1 for i in sent)
    again = formats.assemble(events)
    assert [s.index for s in again] == [s.index for s in first]
    for old, new in zip(first, again, strict=True):
        if old.index in kept:
            assert new is kept[old.index]
        assert new.text == old.text  # greedy decoding of the same audio is deterministic


@pytest.mark.slow
def test_sequential_mode_streams_in_order_with_context(pool, mix) -> None:
    wav, reference = mix
    recording = Recording(pool)
    options = PipelineOptions(transcribe=FAST, segment=SHORT, mode="sequential")
    events = run(str(wav), options, recording)
    done = check_stream_shape(events)
    assert events[0].mode == "sequential"
    arrived = [e.index for e in events if isinstance(e, SegmentDone)]
    assert arrived == sorted(arrived)
    prompts = [j.options.initial_prompt for j in recording.jobs]
    assert prompts[0] is None and all(prompts[1:])
    texts = {s.index: s.text for s in formats.assemble(events)}
    second = recording.jobs[1]
    assert texts[recording.jobs[0].index] in second.options.initial_prompt
    assert done.failed_segments == []
    sequential_wer = wer(reference, " ".join(texts[i] for i in sorted(texts)))
    parallel = formats.assemble(run(str(wav), dataclasses.replace(options, mode="parallel"), pool))
    parallel_wer = wer(reference, " ".join(s.text for s in parallel))
    # Context helps or does not matter on these unrelated clips; it must not cost accuracy.
    assert sequential_wer <= parallel_wer + WER_MARGIN, (sequential_wer, parallel_wer)


@pytest.mark.slow
def test_fatal_errors_end_the_stream_with_a_message(pool, mix, tmp_path) -> None:
    wav, _ = mix
    missing = run(str(tmp_path / "nope.wav"), PipelineOptions(transcribe=FAST), pool)
    assert len(missing) == 1 and isinstance(missing[0], Failed)
    assert missing[0].code == "not_found" and "nope.wav" in missing[0].message

    too_long = run(str(wav), PipelineOptions(transcribe=FAST, max_duration=30), pool)
    assert [type(e) for e in too_long] == [Failed] and too_long[0].code == "too_long"

    # Unknown duration: the limit is enforced while decoding; what came before it is kept.
    unknown = Source(id="x", title="x", duration=None, media=str(wav))
    options = PipelineOptions(transcribe=FAST, segment=SHORT, max_duration=25)
    events = run(unknown, options, pool)
    assert isinstance(events[0], Meta) and isinstance(events[-1], Failed)
    assert events[-1].code == "too_long"
    kept = formats.assemble(events)
    assert kept and max(s.end for s in kept) == pytest.approx(25.0, abs=1e-3)

    # A transfer that dies half-way: the first half is transcribed, then the error.
    size = wav.stat().st_size
    with MediaServer({"/cut.wav": wav}, truncate_at=size // 2) as server:
        events = run(server.url("/cut.wav"), PipelineOptions(transcribe=FAST, segment=SHORT), pool)
    assert isinstance(events[-1], Failed) and events[-1].code in ("truncated", "undecodable")
    assert len(formats.assemble(events)) >= 2


@pytest.mark.slow
def test_cancelling_stops_ffmpeg_and_workers(mix) -> None:
    wav, _ = mix
    before = {p.pid for p in child_processes()}
    mapper = LocalPoolMapper(workers=2, threads=1, preload=EngineConfig())
    rate = 2 * SAMPLE_RATE * 2  # twice real time: ffmpeg is still reading when we cancel

    async def go(url: str) -> tuple[float, list]:
        seen: list = []

        async def consume():
            async for event in transcribe_stream(
                url, PipelineOptions(transcribe=FAST, segment=SHORT), mapper
            ):
                seen.append(event)

        task = asyncio.create_task(consume())
        while not any(isinstance(e, SegmentDone) for e in seen):
            await asyncio.sleep(0.05)
        ffmpeg = [p for p in child_processes() if "ffmpeg" in p.name()]
        assert ffmpeg, "ffmpeg is still decoding"
        began = time.monotonic()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        while any(p.is_running() and p.status() != "zombie" for p in ffmpeg):
            await asyncio.sleep(0.02)
        stopped = time.monotonic() - began
        await mapper.aclose()
        return stopped, seen

    with MediaServer({"/mix.wav": wav}, throttle_bytes_per_s=rate) as server:
        stopped, seen = asyncio.run(go(server.url("/mix.wav")))
        assert not server.completed("/mix.wav")
    assert stopped < 1.0
    assert not isinstance(seen[-1], Done)
    assert {p.pid for p in child_processes()} - before == set()
    assert mapper.stats()["submitted"] < 7  # the rest of the file was never dispatched


def test_cancelling_kills_ffmpeg_even_while_its_input_stalls(mix) -> None:
    """A transfer that crawls (a stalled network) leaves ffmpeg and the decode thread blocked in
    a read; cancelling the stream kills ffmpeg from the cancelling side, so both end at once
    rather than when the next bytes (or the read timeout) come."""
    wav, _ = mix
    before = {p.pid for p in child_processes()}
    options = PipelineOptions(transcribe=FAST, chunk_seconds=2.0)  # a read waits for 64 KB

    async def go(url: str) -> float:
        seen: list = []

        async def consume():
            source = Source(id="mix", title="mix", duration=None, media=url)  # no probe
            async for event in transcribe_stream(source, options, InlineMapper()):
                seen.append(event)

        task = asyncio.create_task(consume())
        while not any(isinstance(e, Meta) for e in seen):
            await asyncio.sleep(0.05)
        assert [p for p in child_processes() if "ffmpeg" in p.name()], "ffmpeg is reading"
        await asyncio.sleep(1.0)  # ffmpeg and the decode thread are now waiting for bytes
        began = time.monotonic()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return time.monotonic() - began

    with MediaServer({"/mix.wav": wav}, throttle_bytes_per_s=4000) as server:
        stopped = asyncio.run(go(server.url("/mix.wav")))
    assert stopped < 1.0
    assert not [t for t in threading.enumerate() if t.name == "streamscribe-decode"]
    assert {p.pid for p in child_processes()} - before == set()


def test_a_broken_mapper_is_a_fatal_error(tmp_path) -> None:
    wav, _ = speech_mix(tmp_path / "short.wav", ("ps_librivox_0870",))
    closed = LocalPoolMapper(workers=1, threads=1)
    closed.close()  # a pool that was shut down (a server stopping) refuses work
    events = run(str(wav), PipelineOptions(transcribe=FAST), closed)
    assert isinstance(events[0], Meta) and isinstance(events[-1], Failed)
    assert events[-1].code == "error" and "closed" in events[-1].message
    assert not any(isinstance(e, SegmentDone) for e in events)
