"""Jobs for the image worker processes, and a hold that keeps jobs running until released.

Jobs travel to the workers by pickle, so they are module-level functions (or partials of them);
a worker process shares no memory with the test, so a hold is a folder of marker files."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def worker_pid() -> int:
    return os.getpid()


def spin(seconds: float) -> int:
    """Busy the CPU in Python, as a decoder busies it in C."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return os.getpid()


def crash() -> None:
    """Die as a decoder that dereferences a bad pointer does."""
    os.kill(os.getpid(), signal.SIGSEGV)


def fail(exception: BaseException) -> None:
    raise exception


def busy_with_pillow() -> None:
    """CPU work in C, as the pipeline's."""
    from PIL import Image

    image = Image.effect_noise((1500, 1500), 64).convert("RGB")
    for _ in range(3):
        image.resize((700, 700), Image.Resampling.LANCZOS)


def _held(folder: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    hold = Path(folder)
    (hold / f"started-{os.getpid()}").touch()
    (hold / f"call-{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + 30
    while not (hold / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the hold was never released")
        time.sleep(0.005)
    return func(*args, **kwargs)


class Hold:
    """Jobs made by ``hold.job(func)`` start, say so, and wait for ``release()``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def job(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return functools.partial(_held, str(self.folder), func)

    def started(self) -> list[int]:
        """Process ids of the workers running a held job."""
        return [int(path.name.split("-")[1]) for path in self.folder.glob("started-*")]

    async def wait_started(self, count: int = 1) -> list[int]:
        async with asyncio.timeout(20):
            # Files written by other processes: polled. # noqa below: no asyncio.Event reaches them.
            while len(self.started()) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return self.started()

    def calls(self) -> int:
        """How many held jobs have started, in any worker."""
        return len(list(self.folder.glob("call-*")))

    def release(self) -> None:
        (self.folder / "release").touch()


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def readiness() -> tuple[bool, list[str], bool]:
    """Whether Pillow's plugins are registered here, which face cascades this thread has, and
    whether smartcrop is made."""
    from PIL import Image

    from app.imaging import autocrop, face

    return (
        bool(Image._initialized >= 2),
        sorted(face._local.__dict__.get("classifiers", {})),
        autocrop._smartcrop.cache_info().currsize == 1,
    )
