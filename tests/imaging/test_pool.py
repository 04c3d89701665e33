"""The bounded worker pool: admission, 503 + Retry-After past capacity, jobs in worker processes
under a deadline, places held until the work really stops, and an event loop left free while
jobs run."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from app.core.errors import CorruptImage, ImageTooComplex, ServerBusy, TooManyPixels
from app.imaging.pool import WorkerPool, WorkerTraceback
from tests.workers import (
    Hold,
    busy_with_pillow,
    crash,
    fail,
    is_running,
    readiness,
    spin,
    worker_pid,
)


@pytest.fixture
def pool():
    pool = WorkerPool(workers=2, queue_size=1, job_timeout=5)
    yield pool
    pool.shutdown()


@pytest.fixture
def hold(tmp_path) -> Hold:
    return Hold(tmp_path / "hold")


async def test_jobs_run_in_worker_processes_that_are_reused(pool: WorkerPool) -> None:
    pids = {await pool.run(worker_pid) for _ in range(6)}
    assert os.getpid() not in pids
    assert len(pids) <= pool.workers  # not a process a job
    assert all(is_running(pid) for pid in pids)
    assert pool.in_flight == 0


async def test_a_new_worker_starts_with_pillow_and_the_face_detector_ready(
    pool: WorkerPool,
) -> None:
    from app.imaging import face

    cascades = sorted([face.HAAR, face.PROFILE, face.LBP])
    assert await pool.run(readiness) == (True, cascades, True)


async def test_past_workers_plus_queue_the_pool_refuses_with_retry_after(
    pool: WorkerPool, hold: Hold
) -> None:
    jobs = [asyncio.create_task(pool.run(hold.job(worker_pid))) for _ in range(3)]
    await hold.wait_started(2)
    assert pool.in_flight == 3 == pool.capacity
    with pytest.raises(ServerBusy) as refused:
        await pool.run(worker_pid)
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"
    hold.release()
    assert len(set(await asyncio.gather(*jobs))) == 2  # two workers ran the three jobs
    assert pool.in_flight == 0
    assert is_running(await pool.run(worker_pid))


async def test_a_reserved_place_is_used_by_run_and_counted_once(pool: WorkerPool) -> None:
    with pool.reserve():
        assert pool.in_flight == 1
        await pool.run(worker_pid)
        assert pool.in_flight == 1
    assert pool.in_flight == 0


async def test_reservations_refuse_before_any_work(pool: WorkerPool) -> None:
    with pool.reserve(), pool.reserve(), pool.reserve():
        with pytest.raises(ServerBusy), pool.reserve():
            pass
        assert pool.in_flight == 3
    assert pool.in_flight == 0


async def test_a_job_past_its_deadline_is_stopped_and_its_worker_replaced() -> None:
    pool = WorkerPool(workers=1, queue_size=0, job_timeout=0.5)
    try:
        before = await pool.run(worker_pid)
        start = time.perf_counter()
        with pytest.raises(ImageTooComplex) as stopped:
            await pool.run(spin, 60)
        assert time.perf_counter() - start < 5
        assert stopped.value.status == 422
        # The place came back only once the worker was killed and reaped.
        assert pool.in_flight == 0
        assert not is_running(before)
        after = await pool.run(worker_pid)
        assert after != before and is_running(after)
    finally:
        pool.shutdown()


async def test_a_cancelled_request_stops_its_job_and_frees_its_place_once_stopped(
    pool: WorkerPool, hold: Hold
) -> None:
    task = asyncio.create_task(pool.run(hold.job(spin), 60))
    (pid,) = await hold.wait_started()
    hold.release()  # now spinning for a minute
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if pool.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.in_flight == 0
    assert not is_running(pid)  # killed, not left to spin
    assert is_running(await pool.run(worker_pid))


async def test_a_worker_that_dies_mid_job_fails_that_job_only(pool: WorkerPool) -> None:
    with pytest.raises(CorruptImage):
        await pool.run(crash)
    assert pool.in_flight == 0
    assert is_running(await pool.run(worker_pid))


async def test_errors_come_back_as_raised(pool: WorkerPool) -> None:
    with pytest.raises(TooManyPixels, match="declared 9 pixels"):
        await pool.run(fail, TooManyPixels("declared 9 pixels"))
    with pytest.raises(KeyError) as bug:
        await pool.run(fail, KeyError("lost"))
    assert isinstance(bug.value.__cause__, WorkerTraceback)
    assert "in fail" in str(bug.value.__cause__)


async def test_shutdown_stops_every_worker() -> None:
    pool = WorkerPool(workers=2, queue_size=0)
    pids = set(await asyncio.gather(pool.run(spin, 0.2), pool.run(spin, 0.2)))
    pool.shutdown()
    assert not any(is_running(pid) for pid in pids)


async def test_the_event_loop_stays_free_while_workers_are_busy(pool: WorkerPool) -> None:
    jobs = [asyncio.create_task(pool.run(busy_with_pillow)) for _ in range(2)]
    lags = []
    while not all(job.done() for job in jobs):
        start = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - start - 0.005)
    await asyncio.gather(*jobs)
    assert lags, "the jobs finished before the loop ran once"
    assert max(lags) < 0.5
