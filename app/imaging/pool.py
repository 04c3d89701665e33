"""A bounded pool of image worker processes, each job under a deadline.

A hostile file can keep a decoder busy for minutes, inside C code that no Python thread can be
made to leave. So each job runs in a worker *process* that can be stopped: one past the
deadline (``job_timeout`` seconds of its own run, queueing excluded) is killed, its caller gets
422 ``image_too_complex``, and a fresh worker takes the next job. A worker that dies mid-job
(a decoder crash, the kernel's OOM killer) costs that job only: 422 ``corrupt_image``.

The pool admits at most ``workers + queue_size`` jobs; one more is refused at once with
``ServerBusy`` (503 + Retry-After) instead of piling request bodies up in memory. A request takes
its place with ``with pool.reserve():`` *before* it reads the upload body, so a refused request
has read nothing; ``place.run()`` runs its job in the place taken. A place is given back only
when its job has really stopped: finished, or its worker killed and reaped. A request cancelled
mid-job has its worker killed at once rather than left to finish work nobody will read.

Each worker is owned by one dispatcher thread, with a pipe of its own: a worker killed mid-job
can leave no shared lock or queue behind (Pebble's process pool shares one channel between its
workers, and a worker killed inside it has hung the whole pool). Workers are forked from a
forkserver that has imported the pipeline once, so replacing one costs a fork, not an
interpreter start; nothing is forked from the server process itself, which runs threads.
Measured against the former thread pool in the README ("Performance").
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import pickle
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, ParamSpec, Protocol, TypeVar

from app.core.errors import (
    AppError,
    ClientDisconnected,
    CorruptImage,
    ImageTooComplex,
    ServerBusy,
)

P = ParamSpec("P")
T = TypeVar("T")

# Modules the forkserver imports once, so that every worker forked from it has them (``warm``
# also does once what each worker's first job would: the face detector and smartcrop, which the
# pipeline imports only when it first proposes a crop); the program's main module too
# (``preload``), or each fork would import it again.
PRELOAD = ["__main__", "app.imaging.pool", "app.imaging.pipeline", "app.imaging.warm"]
# How often a dispatcher thread waiting on its worker looks whether the request was cancelled.
CANCEL_POLL_SECONDS = 0.05


# A worker forked from the forkserver runs the ``python -m`` main module's own lines again (as
# ``__mp_main__``) after ``preload`` imported it under its name; runpy warns about exactly that.
warnings.filterwarnings(
    "ignore",
    message=r"'.*' found in sys\.modules after import of package",
    category=RuntimeWarning,
    module="runpy",
)


def preload() -> list[str]:
    """``PRELOAD``, and the main module when the program runs as ``python -m NAME``: a fork
    then runs only that module's own lines again, its imports already done."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    name = getattr(spec, "name", None)
    if name and not name.endswith("__main__"):
        return [*PRELOAD, name]
    return PRELOAD


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``."""


class Place:
    """A request's place in the pool, held from before its body is read until its job stops."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.job: Future[Any] | None = None
        self.cancelled = threading.Event()

    def abandon(self) -> None:
        """Nobody will read this place's work (its client went away): a job running in it is
        stopped and its worker replaced, and one not started yet never starts. Either raises
        ``ClientDisconnected`` in the request, whose compensation then runs as for any failure."""
        self.cancelled.set()

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func(*args, **kwargs)`` in a worker process, in this place (it holds one job; a
        second one takes a place of its own). ``func`` and its arguments travel by pickle: a
        module-level function."""
        if self.job is not None:
            return await self.pool.run(func, *args, **kwargs)
        self.job = self.pool._submit(functools.partial(func, *args, **kwargs), self.cancelled)
        return await asyncio.wrap_future(self.job)


class JobRunner(Protocol):
    """What the services run image jobs on: the pool (a place taken per job) or a place a
    request reserved before reading its body."""

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(
        self,
        context: multiprocessing.context.BaseContext,
        initializer: Callable[..., None] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.connection, child = context.Pipe()
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_serve,
            args=(child, initializer, initargs),
            name="imaging-worker",
            daemon=True,
        )
        self.process.start()
        child.close()

    def stop(self, *, kill: bool) -> None:
        """Stop the process and reap it: killed at once, or asked to leave (end of its pipe)."""
        if kill:
            self.process.kill()
        self.connection.close()
        self.process.join(None if kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process.close()


class WorkerPool:
    def __init__(
        self,
        workers: int,
        queue_size: int,
        *,
        retry_after: int = 1,
        job_timeout: float = 30.0,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
        observe: Callable[[float], None] | None = None,
        warm: bool = True,
    ) -> None:
        """``initializer(*initargs)`` runs once in every worker process (settings that are
        process-wide globals); ``observe(seconds)`` gets each job's run time. ``warm``: start
        the forkserver now, in the background, rather than with the first job."""
        self.workers = workers
        self.capacity = workers + queue_size
        self.retry_after = retry_after
        self.job_timeout = job_timeout
        self._initializer, self._initargs = initializer, initargs
        self._observe = observe
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(preload())
        if warm:
            # The forkserver (one a process) starts in the background: the first job only forks.
            threading.Thread(target=forkserver.ensure_running, daemon=True).start()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imaging")
        self._lock = threading.Lock()
        self._admitted = 0
        self._local = threading.local()  # the worker of each dispatcher thread
        self._started: set[_Worker] = set()

    @property
    def in_flight(self) -> int:
        return self._admitted

    @contextmanager
    def reserve(self) -> Iterator[Place]:
        """Take a place or raise ``ServerBusy``. It is held until the block ends and the job
        started in it (by ``run``) has stopped."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise ServerBusy(
                    "The server is processing too many images; retry shortly.",
                    retry_after=self.retry_after,
                )
            self._admitted += 1
        place = Place(self)
        try:
            yield place
        finally:
            job = place.job
            if job is not None and not job.done():  # cancelled while its worker still works
                place.cancelled.set()  # its dispatcher kills the worker, then the job ends
                job.add_done_callback(lambda _job: self._release())
            else:
                self._release()

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func(*args, **kwargs)`` in a worker process, in a place of its own (or
        ``ServerBusy``)."""
        with self.reserve() as place:
            return await place.run(func, *args, **kwargs)

    def _submit(self, call: functools.partial[T], cancelled: threading.Event) -> Future[T]:
        return self._executor.submit(self._dispatch, call, cancelled)

    def shutdown(self) -> None:
        """Wait for the jobs in flight, then stop every worker."""
        self._executor.shutdown(wait=True, cancel_futures=False)
        with self._lock:
            started, self._started = self._started, set()
        for worker in started:
            worker.stop(kill=False)

    # In a dispatcher thread -----------------------------------------------------------------

    def _dispatch(self, call: functools.partial[Any], cancelled: threading.Event) -> Any:
        if cancelled.is_set():  # abandoned before it started
            raise ClientDisconnected("The client went away before its image was processed.")
        worker = self._worker()
        start = time.perf_counter()
        try:
            worker.connection.send(call)
        except (BrokenPipeError, ConnectionResetError, EOFError):  # it died while idle
            self._replace(worker, kill=True)
            worker = self._worker()
            start = time.perf_counter()
            worker.connection.send(call)
        deadline = start + self.job_timeout
        ready: list[Any] = []
        while not ready:
            if cancelled.is_set():
                self._replace(worker, kill=True)
                self._observed(start)
                raise ClientDisconnected("The client went away; its image job was stopped.")
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self._replace(worker, kill=True)
                self._observed(start)
                raise ImageTooComplex(
                    f"Processing the image took longer than {self.job_timeout:g} s; it was stopped."
                )
            ready = wait(
                [worker.connection, worker.process.sentinel],
                timeout=min(remaining, CANCEL_POLL_SECONDS),
            )
        try:
            status, value, remote_traceback = worker.connection.recv()
        except (EOFError, OSError):  # the worker died mid-job
            self._replace(worker, kill=True)
            self._observed(start)
            raise CorruptImage("The image could not be processed: its decoder stopped.") from None
        self._observed(start)
        if status == "ok":
            return value
        if not isinstance(value, AppError):  # a bug, not an answer: keep where it happened
            value.__cause__ = WorkerTraceback(remote_traceback)
        raise value

    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is None:
            worker = _Worker(self._context, self._initializer, self._initargs)
            self._local.worker = worker
            with self._lock:
                self._started.add(worker)
        return worker

    def _replace(self, worker: _Worker, *, kill: bool) -> None:
        """Stop ``worker`` and reap it; the next job of this thread starts a fresh one."""
        with self._lock:
            self._started.discard(worker)
        self._local.worker = None
        worker.stop(kill=kill)

    def _observed(self, start: float) -> None:
        if self._observe is not None:
            self._observe(time.perf_counter() - start)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1


# In a worker process ----------------------------------------------------------------------------


def _serve(
    connection: Connection, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> None:
    """Run jobs until the server closes its end of the pipe."""
    # Ctrl-C reaches the whole process group: the server stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            call = connection.recv()
        except (EOFError, OSError):
            return
        except BaseException as exc:  # a job that cannot be unpickled here
            connection.send(("error", _portable(exc), traceback.format_exc()))
            continue
        try:
            answer = ("ok", call(), "")
        except BaseException as exc:
            answer = ("error", _portable(exc), traceback.format_exc())
        try:
            connection.send(answer)
        except Exception as exc:  # a result that cannot be pickled
            connection.send(("error", _portable(exc), traceback.format_exc()))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
