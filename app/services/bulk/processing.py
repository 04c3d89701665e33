"""``avatar-service process``: the pure pipeline on local files, what it makes written to a
folder (``out/<stem>/<variant>.webp`` and ``out/<stem>/report.json``); no database, no
storage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.imaging.pipeline import CropBox, PipelineOptions, ProcessedImage, process_image
from app.imaging.pool import WorkerPool
from app.services.bulk.common import Code, Outcome, RejectsByCode, failure, fan_out, read_limited


@dataclass(frozen=True)
class Processed:
    """One input's result: where its files went and the report written beside them."""

    name: str
    folder: Path
    report: dict[str, Any]


@dataclass
class ProcessReport(RejectsByCode):
    processed: list[Processed] = field(default_factory=list)
    rejected: list[Outcome] = field(default_factory=list)


REPORT_FILE = "report.json"


def describe(name: str, processed: ProcessedImage) -> dict[str, Any]:
    """The JSON report of one processed input."""
    placeholder = processed.placeholder
    return {
        "input": name,
        "source_format": processed.source_format,
        "width": processed.width,
        "height": processed.height,
        "frames": processed.frames,
        "orientation_applied": processed.orientation,
        "metadata_removed": list(processed.metadata_removed),
        "placeholder": (
            {"blurhash": placeholder.blurhash, "dominant_color": placeholder.dominant_color}
            if placeholder
            else None
        ),
        "variants": [
            {
                "name": variant.name,
                "file": f"{variant.name}.webp",
                "width": variant.width,
                "height": variant.height,
                "bytes": len(variant.data),
                "content_type": variant.content_type,
                "frames": variant.frames,
            }
            for variant in processed.variants
        ],
    }


async def process_files(
    paths: Sequence[Path],
    out: Path,
    *,
    pool: WorkerPool,
    options: PipelineOptions,
    max_bytes: int,
    crop: CropBox | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> ProcessReport:
    """Run the pipeline on each file and write ``out/<stem>/<variant>.webp`` and
    ``out/<stem>/report.json``; as many files at a time as the pool has workers."""
    report = ProcessReport()
    seen: dict[str, str] = {}
    jobs: list[tuple[Path, Path]] = []
    for path in paths:
        stem = path.stem
        if stem in ("", ".", "..") or stem in seen:
            detail = (
                f"{seen[stem]} writes {out / stem} already"
                if stem in seen
                else "the name gives no folder"
            )
            report.rejected.append(Outcome(str(path), Code.DUPLICATE_NAME, detail))
            continue
        seen[stem] = str(path)
        jobs.append((path, out / stem))

    async def work(job: tuple[Path, Path]) -> None:
        path, folder = job
        outcome = await _process_one(path, folder, report, pool, options, max_bytes, crop)
        if on_done is not None:
            on_done(outcome)

    await fan_out(jobs, work, workers=pool.workers)
    report.processed.sort(key=lambda item: item.name)
    report.rejected.sort(key=lambda outcome: outcome.name)
    return report


async def _process_one(
    path: Path,
    folder: Path,
    report: ProcessReport,
    pool: WorkerPool,
    options: PipelineOptions,
    max_bytes: int,
    crop: CropBox | None,
) -> Outcome:
    name = str(path)
    data = await read_limited(path, max_bytes)
    if isinstance(data, Outcome):
        report.rejected.append(data)
        return data
    try:
        processed = await pool.run(process_image, data, options, crop=crop)
    except Exception as exc:
        outcome = failure(name, exc)
        report.rejected.append(outcome)
        return outcome
    described = describe(path.name, processed)
    try:
        await asyncio.to_thread(_write_outputs, folder, processed, described)
    except OSError as exc:
        outcome = Outcome(
            name, Code.WRITE_FAILED, f"{folder}: {type(exc).__name__}: {exc.strerror}"
        )
        report.rejected.append(outcome)
        return outcome
    report.processed.append(Processed(name, folder, described))
    return Outcome(name, detail=str(folder))


def _write_outputs(folder: Path, processed: ProcessedImage, described: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for variant in processed.variants:
        (folder / f"{variant.name}.webp").write_bytes(variant.data)
    (folder / REPORT_FILE).write_text(json.dumps(described, indent=2) + "\n")
