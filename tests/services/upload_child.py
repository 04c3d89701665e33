"""A process that uploads an avatar and stops at a chosen point, there to be killed.

    python -m tests.services.upload_child POINT IMAGE_FILE

Settings come from the AVATAR_* environment. POINT is ``after-puts`` (every object written, no
transaction begun), ``at-commit`` (the row updated inside the transaction, COMMIT not yet
sent) or ``mid-write`` (local storage: the first object's temp file written and synced, not yet
renamed to its key). At the point it prints ``ready`` and waits; the test kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from sqlalchemy import event

from app.core.config import load_settings
from app.db.session import create_engine, create_sessionmaker
from app.imaging.pipeline import process_image
from app.imaging.pool import WorkerPool
from app.services.avatars import AvatarWrites, replace_avatar
from app.services.runtime import pipeline_options
from app.storage import build_storage
from tests.services.support import FaultyStorage

POINTS = ("after-puts", "at-commit", "mid-write")


def ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


async def main(point: str, data: bytes) -> None:
    settings = load_settings(_env_file=None)
    options = pipeline_options(settings)
    storage = FaultyStorage(build_storage(settings))
    engine = create_engine(settings.database_url)
    if point == "after-puts":
        # Pause once the last variant is written (the pipeline decides how many there are).
        storage.pause_after_puts = len(process_image(data, options).variants)
    elif point == "mid-write":
        rename = os.replace

        def hold_before_rename(source, destination) -> None:
            if Path(source).name.startswith(".tmp-"):
                ready()
                time.sleep(3600)
            rename(source, destination)

        os.replace = hold_before_rename  # type: ignore[assignment]
    else:

        @event.listens_for(engine.sync_engine, "commit")
        def hold(_connection) -> None:
            ready()
            time.sleep(3600)

    upload = asyncio.create_task(
        replace_avatar(
            AvatarWrites(create_sessionmaker(engine), storage, WorkerPool(1, 0), options),
            user_id="alice",
            upload=data,
        )
    )
    if point == "after-puts":
        await storage.paused.wait()
        ready()
    await upload
    sys.exit("the upload finished; it should have been killed first")


if __name__ == "__main__":
    point, image = sys.argv[1], Path(sys.argv[2])
    if point not in POINTS:
        sys.exit(f"POINT must be one of {POINTS}")
    asyncio.run(main(point, image.read_bytes()))
