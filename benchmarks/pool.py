"""The image worker processes against the thread pool they replaced, on the same jobs.

    python -m benchmarks.pool                  # 2 workers, 5 rounds of 8 jobs each way
    python -m benchmarks.pool --workers 2 --rounds 5 --jobs 8

Each round runs ``jobs`` pipelines of the 12 MP phone photo (benchmarks/photo.py), ``workers``
at a time, once on a ThreadPoolExecutor (the former pool: Pillow releases the GIL) and once on
``app.imaging.pool.WorkerPool`` (a process per worker, the photo and the variants pickled
through a pipe each way); the two alternate so that both see the same machine. Then, one job at
a time, what the pool adds to the pipeline's own time (measured inside the worker), and the
cost of a deadline: a job killed at it and the next job, on the replacement worker. Prints
medians and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from app.core.errors import ImageTooComplex
from app.imaging.pipeline import process_image
from app.imaging.pool import WorkerPool
from benchmarks.photo import HEIGHT, WIDTH, phone_photo


async def on_threads(executor: ThreadPoolExecutor, data: bytes, jobs: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    await asyncio.gather(
        *(loop.run_in_executor(executor, process_image, data) for _ in range(jobs))
    )
    return time.perf_counter() - start


async def on_processes(pool: WorkerPool, data: bytes, jobs: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(pool.run(process_image, data) for _ in range(jobs)))
    return time.perf_counter() - start


def timed_pipeline(data: bytes) -> float:
    """The pipeline's own run time, measured where it runs."""
    start = time.perf_counter()
    process_image(data)
    return time.perf_counter() - start


async def overhead(data: bytes, runs: int) -> tuple[float, float]:
    """(median seconds of the pipeline inside a worker, median seconds the pool adds to it:
    pickling, the pipe both ways, dispatch), one job at a time."""
    pool = WorkerPool(1, 0)
    inside, added = [], []
    try:
        await pool.run(timed_pipeline, data)
        for _ in range(runs):
            start = time.perf_counter()
            own = await pool.run(timed_pipeline, data)
            inside.append(own)
            added.append(time.perf_counter() - start - own)
    finally:
        pool.shutdown()
    return statistics.median(inside), statistics.median(added)


async def replacement(data: bytes) -> tuple[float, float]:
    """(seconds to stop a job at a 50 ms deadline, seconds of the next job, on the worker
    forked to replace the killed one)."""
    pool = WorkerPool(1, 0)
    try:
        await pool.run(process_image, data)  # the worker is up and warm
        pool.job_timeout = 0.05
        start = time.perf_counter()
        with contextlib.suppress(ImageTooComplex):
            await pool.run(time.sleep, 5)
        stopped = time.perf_counter() - start
        pool.job_timeout = 60
        start = time.perf_counter()
        await pool.run(process_image, data)
        return stopped, time.perf_counter() - start
    finally:
        pool.shutdown()


async def main(
    workers: int, rounds: int, jobs: int, size: tuple[int, int] = (WIDTH, HEIGHT)
) -> None:
    data = phone_photo(*size)
    print(f"Photo: {len(data):,} bytes; {workers} workers; {rounds} rounds of {jobs} jobs each way")
    executor = ThreadPoolExecutor(workers)
    pool = WorkerPool(workers, jobs)
    await on_threads(executor, data, workers)  # warm both
    await on_processes(pool, data, workers)
    threads, processes = [], []
    for _ in range(rounds):
        threads.append(await on_threads(executor, data, jobs) / jobs)
        processes.append(await on_processes(pool, data, jobs) / jobs)
    executor.shutdown()
    pool.shutdown()
    t, p = statistics.median(threads) * 1000, statistics.median(processes) * 1000
    print(f"  threads:   {t:7.1f} ms a job (median of rounds), {1000 / t:5.2f} jobs/s")
    print(f"  processes: {p:7.1f} ms a job (median of rounds), {1000 / p:5.2f} jobs/s")
    print(f"  processes / threads: {p / t:5.3f}x the time a job")
    inside, added = await overhead(data, rounds * 2)
    print(
        f"  one job at a time: the pipeline {inside * 1000:.1f} ms inside the worker, the pool "
        f"adds {added * 1000:.1f} ms ({added / inside:.1%})"
    )
    stopped, fresh = await replacement(data)
    print(
        f"  deadline: job stopped {stopped * 1000:.0f} ms after it began (deadline 50 ms); "
        f"next job, on the new worker, {fresh * 1000:.0f} ms ({fresh / inside:.2f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.workers, args.rounds, args.jobs))
