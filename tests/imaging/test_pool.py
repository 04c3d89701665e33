"""The bounded worker pool: admission, 503 + Retry-After past capacity, places held until the
work really ends, and an event loop left free while jobs run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from app.core.errors import ServerBusy
from app.imaging.pool import WorkerPool


@pytest.fixture
def pool():
    pool = WorkerPool(workers=2, queue_size=1)
    yield pool
    pool.shutdown()


def blocker() -> tuple[threading.Event, threading.Event, Callable[[], str]]:
    started, release = threading.Event(), threading.Event()

    def job() -> str:
        started.set()
        assert release.wait(10)
        return threading.current_thread().name

    return started, release, job


async def test_jobs_run_on_worker_threads(pool: WorkerPool) -> None:
    name = await pool.run(lambda: threading.current_thread().name)
    assert name.startswith("imaging")
    assert pool.in_flight == 0


async def test_past_workers_plus_queue_the_pool_refuses_with_retry_after(pool: WorkerPool) -> None:
    release = threading.Event()
    jobs = [asyncio.create_task(pool.run(release.wait, 10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert pool.in_flight == 3 == pool.capacity
    with pytest.raises(ServerBusy) as refused:
        await pool.run(lambda: None)
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"
    release.set()
    assert await asyncio.gather(*jobs) == [True, True, True]
    assert pool.in_flight == 0
    assert await pool.run(lambda: 42) == 42


async def test_a_reserved_place_is_used_by_run_and_counted_once(pool: WorkerPool) -> None:
    with pool.reserve():
        assert pool.in_flight == 1
        assert await pool.run(lambda: pool.in_flight) == 1
    assert pool.in_flight == 0


async def test_reservations_refuse_before_any_work(pool: WorkerPool) -> None:
    with pool.reserve(), pool.reserve(), pool.reserve():
        with pytest.raises(ServerBusy), pool.reserve():
            pass
        assert pool.in_flight == 3
    assert pool.in_flight == 0


async def test_a_cancelled_request_keeps_its_place_until_its_thread_is_done(
    pool: WorkerPool,
) -> None:
    started, release, job = blocker()
    task = asyncio.create_task(pool.run(job))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.in_flight == 1  # the thread still works on it
    release.set()
    for _ in range(100):
        if pool.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.in_flight == 0


async def test_the_event_loop_stays_free_while_workers_are_busy(pool: WorkerPool) -> None:
    from PIL import Image

    # Made beforehand: effect_noise holds the GIL, which a busy machine stretches past the limit.
    image = Image.effect_noise((1500, 1500), 64).convert("RGB")

    def busy() -> None:  # CPU work in C with the GIL released, as Pillow's resize is
        for _ in range(3):
            image.resize((700, 700), Image.Resampling.LANCZOS)

    jobs = [asyncio.create_task(pool.run(busy)) for _ in range(2)]
    lags = []
    while not all(job.done() for job in jobs):
        start = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - start - 0.005)
    await asyncio.gather(*jobs)
    assert lags, "the jobs finished before the loop ran once"
    assert max(lags) < 0.5
