"""What the commands print: summaries on stdout (a Rich table, or JSON with ``--json``), the
progress bar on stderr. Nothing here decides an exit code (``exits`` does)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.services.bulk import ImportReport, Outcome, ProcessReport, ReprocessReport
    from app.services.gc import GcReport
    from app.services.outbox import DeliveryRow

TABLE_NAMES = 5  # names shown per reason in a summary table; every one gets a line below it


def stdout(width: int | None = None) -> Console:
    # File names, user ids and errors are printed as they are: "[b]" or ":x:" in one is not
    # markup.
    return Console(highlight=False, soft_wrap=True, markup=False, emoji=False, width=width)


def print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2))


class ProgressBar:
    """A Rich progress bar on stderr; its line appears once the total is known (``start``), so
    a run that fails before any work shows only its error."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def start(self, total: int) -> None:
        self.task = self.progress.add_task(self.label, total=total)
        self.progress.start()

    def advance(self, _outcome: object = None) -> None:
        if self.task is not None:
            self.progress.advance(self.task)


def _plain_table() -> Table:
    return Table(show_edge=False, box=None, pad_edge=False)


def _counts_table(rows: list[tuple[str, int]], what: str) -> Table:
    table = _plain_table()
    table.add_column("")
    table.add_column(what, justify="right")
    for label, count in rows:
        table.add_row(label, f"{count:,}")
    return table


def _print_rejects(
    console: Console, rejected: list[Outcome], by_code: dict[str, list[str]]
) -> None:
    """The rejects by reason (a few names each), then every reject on a line of its own."""
    if not rejected:
        return
    table = Table(
        title="rejects by reason",
        title_justify="left",
        show_edge=False,
        box=None,
        pad_edge=False,
    )
    table.add_column("code")
    table.add_column("files", justify="right")
    table.add_column("names")
    for code, names in by_code.items():
        shown = ", ".join(names[:TABLE_NAMES])
        if len(names) > TABLE_NAMES:
            shown += f" and {len(names) - TABLE_NAMES:,} more"
        table.add_row(code, f"{len(names):,}", shown)
    console.print(table)
    for outcome in rejected:
        console.print(f"rejected {outcome.name}: {outcome.code}: {outcome.detail}")


def _outcomes_json(outcomes: list[Outcome], name: str) -> list[dict[str, str | None]]:
    return [{name: o.name, "code": o.code, "detail": o.detail} for o in outcomes]


# gc ----------------------------------------------------------------------------------------------


def gc_report(report: GcReport, settings: Settings, *, expired: int, show_orphans: bool) -> None:
    where = (
        f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        if settings.storage == "s3"
        else str(settings.media_path)
    )
    console = stdout()
    mode = "apply" if report.applied else "dry run"
    console.print(f"gc ({mode}) on {settings.storage} storage {where}")
    console.print(f"grace period: {int(report.grace.total_seconds())} s")
    table = _plain_table()
    table.add_column("")
    table.add_column("objects", justify="right")
    table.add_column("bytes", justify="right")
    rows = [
        ("scanned", report.scanned.count, report.scanned.bytes),
        ("referenced", report.referenced.count, report.referenced.bytes),
        ("recent, kept (within grace)", report.recent.count, report.recent.bytes),
        ("orphans", len(report.orphans), report.orphan_bytes),
        ("unfinished writes", len(report.partial), report.partial_bytes),
    ]
    if report.applied:
        rows.append(("deleted", report.deleted.count, report.deleted.bytes))
    for label, count, size in rows:
        table.add_row(label, f"{count:,}", f"{size:,}")
    console.print(table)
    if show_orphans:
        for obj in report.orphans:
            console.print(f"orphan {obj.key} {obj.size} bytes {obj.modified.isoformat()}")
        for obj in report.partial:
            console.print(f"unfinished {obj.key} {obj.size} bytes {obj.modified.isoformat()}")
    for item in report.missing:
        console.print(f"missing {item.key} (avatar of user {item.user_id!r})")
    console.print(f"avatars with missing objects: {len(report.missing)}")
    if report.failed:
        console.print(f"orphans that could not be deleted: {len(report.failed)}")
    leftovers = len(report.orphans) + len(report.partial)
    if not report.applied and leftovers:
        console.print(f"dry run: nothing deleted; run with --apply to delete {leftovers}")
    console.print(f"expired Idempotency-Keys {'deleted' if report.applied else 'found'}: {expired}")


# Bulk work ---------------------------------------------------------------------------------------


def import_summary(report: ImportReport, directory: Path, *, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "dry_run": report.dry_run,
                "imported": [{"file": o.name, "user_id": o.detail} for o in report.imported],
                "skipped": [{"file": o.name, "detail": o.detail} for o in report.skipped],
                "rejected": _outcomes_json(report.rejected, "file"),
                "rejects_by_code": report.rejects_by_code,
                "ignored": report.ignored,
            }
        )
        return
    console = stdout()
    dry_run = report.dry_run
    console.print(f"import from {directory}" + (" (dry run: nothing stored)" if dry_run else ""))
    console.print(
        _counts_table(
            [
                ("would be imported" if dry_run else "imported", len(report.imported)),
                ("skipped (has an avatar)", len(report.skipped)),
                ("rejected", len(report.rejected)),
                ("ignored (hidden files, folders)", report.ignored),
            ],
            "files",
        )
    )
    _print_rejects(console, report.rejected, report.rejects_by_code)


def reprocess_summary(report: ReprocessReport, *, checkpoint: Path | None, as_json: bool) -> None:
    """``checkpoint``: the one kept for a rerun (some users failed), else None."""
    if as_json:
        print_json(
            {
                "resumed_after": report.resumed_after,
                "done": len(report.done),
                "skipped": _outcomes_json(report.skipped, "user_id"),
                "failed": _outcomes_json(report.failed, "user_id"),
                "checkpoint": str(checkpoint) if checkpoint else None,
            }
        )
        return
    console = stdout()
    console.print(
        _counts_table(
            [
                ("reprocessed", len(report.done)),
                ("skipped (gone, replaced meanwhile, or a client's crop)", len(report.skipped)),
                ("failed", len(report.failed)),
            ],
            "users",
        )
    )
    for outcome in report.failed:
        console.print(f"failed {outcome.name!r}: {outcome.code}: {outcome.detail}")
    if checkpoint:
        console.print(f"run again to retry the failed users (checkpoint: {checkpoint})")


def process_summary(
    report: ProcessReport, files: Sequence[Path], out: Path, *, as_json: bool
) -> None:
    if as_json:
        print_json(
            {
                "processed": [
                    {"file": item.name, "folder": str(item.folder), **item.report}
                    for item in report.processed
                ],
                "rejected": _outcomes_json(report.rejected, "file"),
                "rejects_by_code": report.rejects_by_code,
            }
        )
        return
    console = stdout()
    table = _plain_table()
    for column in ("file", "size", "variants", "bytes", "orientation", "removed"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for item in report.processed:
        variants = item.report["variants"]
        table.add_row(
            item.name,
            f"{item.report['width']}x{item.report['height']}",
            str(len(variants)),
            f"{sum(v['bytes'] for v in variants):,}",
            str(item.report["orientation_applied"]),
            ", ".join(item.report["metadata_removed"]) or "-",
        )
    console.print(f"processed {len(report.processed)} of {len(files)} into {out}")
    if report.processed:
        console.print(table)
    _print_rejects(console, report.rejected, report.rejects_by_code)


# Events ------------------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str | None:
    from app.services.outbox import as_utc

    return as_utc(moment).isoformat(timespec="seconds") if moment is not None else None


def deliveries(rows: Sequence[DeliveryRow], *, limit: int, as_json: bool) -> None:
    if as_json:
        print_json(
            [
                {
                    "event_id": row.event_id,
                    "type": row.type,
                    "user_id": row.user_id,
                    "occurred_at": _when(row.occurred_at),
                    "target": row.target,
                    "status": row.status,
                    "attempts": row.attempts,
                    "next_attempt_at": _when(row.next_attempt_at),
                    "delivered_at": _when(row.delivered_at),
                    "last_error": row.last_error,
                }
                for row in rows
            ]
        )
        return
    table = _plain_table()
    for column in ("event", "type", "user", "at", "target", "status", "tries", "next", "error"):
        table.add_column(column, justify="right" if column == "tries" else "left")
    for row in rows:
        table.add_row(
            row.event_id,
            row.type,
            row.user_id,
            _when(row.occurred_at),
            row.target or "-",
            row.status,
            str(row.attempts),
            _when(row.next_attempt_at) if row.status == "pending" else "-",
            row.last_error or "",
        )
    # Ids and errors are printed whole, for copying and grepping, however narrow the terminal.
    console = stdout(width=max(Console().width, 240))
    console.print(table)
    console.print(f"{len(rows)} rows" + (" (--limit reached)" if len(rows) == limit else ""))
