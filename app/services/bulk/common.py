"""What the three bulk jobs share: the outcome of one file or user, the reject codes only a
folder of files can have, reading a file under the upload limit, and the fan-out that keeps
every image worker busy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from app.core.errors import AppError, PayloadTooLarge

T = TypeVar("T")


class Code(StrEnum):
    """Codes of outcomes only bulk work has; the others are the API's problem codes."""

    # What only a folder of files can get wrong.
    INVALID_USER_ID = "invalid_user_id"
    DUPLICATE_NAME = "duplicate_name"
    UNREADABLE_FILE = "unreadable_file"
    WRITE_FAILED = "write_failed"  # `process`: the output folder refused the files
    # `reprocess --auto-crop`: the client chose this avatar's crop; it is left as it is.
    CLIENT_CROP = "client_crop"
    # Anything that is not an AppError (a bug, a driver error the service did not wrap).
    UNEXPECTED = "unexpected_error"


@dataclass(frozen=True)
class Outcome:
    """What became of one file or user: ``code`` is None when it was done."""

    name: str
    code: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.code is None


def failure(name: str, exc: BaseException) -> Outcome:
    """The outcome of ``name`` when its work raised ``exc``: the problem code of an AppError,
    ``unexpected_error`` for anything else."""
    if isinstance(exc, AppError):
        return Outcome(name, exc.code, exc.detail)
    return Outcome(name, Code.UNEXPECTED, f"{type(exc).__name__}: {exc}")


def group_by_code(outcomes: Iterable[Outcome]) -> dict[str, list[str]]:
    """{code: [names]} of the outcomes that were not done, codes and names sorted."""
    groups: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.code is not None:
            groups.setdefault(outcome.code, []).append(outcome.name)
    return {code: sorted(names) for code, names in sorted(groups.items())}


class RejectsByCode:
    """For a report with ``rejected`` outcomes: the same grouped by code, for its summary."""

    rejected: list[Outcome]

    @property
    def rejects_by_code(self) -> dict[str, list[str]]:
        return group_by_code(self.rejected)


async def read_limited(path: Path, limit: int) -> bytes | Outcome:
    """The file's bytes; or why not: refused as an upload would be when it is over ``limit``,
    or unreadable."""

    def read() -> bytes | Outcome:
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            return Outcome(str(path), Code.UNREADABLE_FILE, f"{type(exc).__name__}: {exc.strerror}")
        if len(data) > limit:
            too_large = PayloadTooLarge(f"The file is larger than the limit of {limit} bytes.")
            return Outcome(str(path), too_large.code, too_large.detail)
        return data

    return await asyncio.to_thread(read)


async def fan_out(
    items: Sequence[T], work: Callable[[T], Awaitable[None]], *, workers: int
) -> None:
    """``await work(item)`` for every item, ``workers`` at a time (the image pool's size: more
    would only queue in front of it). Each item is taken once, in order, by whichever task is
    free; an exception ``work`` lets through cancels the others (raised in an ExceptionGroup,
    as ``asyncio.TaskGroup`` does), so ``work`` turns what it expects into an outcome."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:  # one iterator shared by the tasks: each item is taken once
            await work(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(workers, len(items)))):
            group.create_task(worker())
