"""Ten uploads by one user at once: one complete set of objects wins, every other set is gone,
and no object was deleted while the row pointed at it."""

from __future__ import annotations

import asyncio
import io
from collections import Counter

from PIL import Image

from app.core.config import Settings
from app.core.security import create_token
from app.core.variants import object_key
from app.db.models import Avatar
from app.db.session import create_engine, create_sessionmaker
from app.main import create_app
from app.storage import build_storage
from tests.conftest import serving
from tests.images import jpeg_with_metadata
from tests.services.support import FaultyStorage, store_snapshot, table_snapshot

UPLOADS = 10


def keys_of(document: dict) -> list[str]:
    return [object_key(document["version"], variant["name"]) for variant in document["variants"]]


async def test_ten_concurrent_uploads_leave_exactly_one_complete_set(settings: Settings) -> None:
    inner = build_storage(settings)
    storage = FaultyStorage(inner)
    checker_engine = create_engine(settings.database_url)
    checker = create_sessionmaker(checker_engine)
    deleted_while_referenced: list[str] = []

    async def check_unreferenced(key: str) -> None:
        # Versions are never reused, so a key the row no longer names is never named again:
        # checking just before the delete is enough.
        async with checker() as session:
            avatar = await session.get(Avatar, "alice")
            if avatar is not None and key in avatar.keys:
                deleted_while_referenced.append(key)

    storage.on_delete = check_unreferenced
    try:
        async with serving(create_app(settings, storage=storage)) as client:
            headers = {"Authorization": f"Bearer {create_token(settings, 'alice')}"}
            uploads = [
                client.post(
                    "/users/me/avatar",
                    headers=headers,
                    files={
                        "file": (
                            "a.jpg",
                            jpeg_with_metadata((320, 240), color=(i * 25, 90, 40)),
                            "image/jpeg",
                        )
                    },
                )
                for i in range(UPLOADS)
            ]
            responses = await asyncio.gather(*uploads)
            assert [r.status_code for r in responses] == [201] * UPLOADS, [
                r.text for r in responses if r.status_code != 201
            ]
            documents = [r.json() for r in responses]
            assert len({d["version"] for d in documents}) == UPLOADS

            final = (await client.get("/users/me/avatar", headers=headers)).json()
            winner = next(d for d in documents if d["version"] == final["version"])
            final_keys = keys_of(winner)

            rows = await table_snapshot(settings.database_url)
            assert len(rows) == 1

            # The row's set is complete and every object in it is sound.
            stored = await store_snapshot(storage)
            assert sorted(stored) == sorted(final_keys), "objects other than the winner's remain"
            for variant, key in zip(winner["variants"], final_keys, strict=True):
                assert len(stored[key]) == variant["bytes"]
                with Image.open(io.BytesIO(stored[key])) as image:
                    assert image.format == "WEBP"
                    assert image.size == (variant["width"], variant["height"])

            # Nothing the row pointed at was deleted; every losing set was deleted exactly once.
            assert deleted_while_referenced == []
            losers = [key for d in documents if d is not winner for key in keys_of(d)]
            assert Counter(storage.deleted) == Counter(losers)
    finally:
        await checker_engine.dispose()
        close = getattr(inner, "close", None)
        if close is not None:
            close()
