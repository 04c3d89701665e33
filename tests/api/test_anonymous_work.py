"""Work anonymous clients can cause never takes a place in the upload pool: generated default
images and the deep self-test are done once and kept, and rate-limited per client address;
renditions made on first request run on a pool of their own."""

from __future__ import annotations

import asyncio
from collections import Counter

from app.services import defaults as defaults_module
from app.services import renditions as renditions_module
from app.services.defaults import SIDE_QUEUE, SIDE_WORKERS
from tests.client import assert_problem, files
from tests.conftest import make_settings, running_app
from tests.images import jpeg_with_metadata
from tests.workers import Hold


def blocked_renders(monkeypatch, tmp_path) -> Hold:
    """Every default render (in a side-pool worker process) waits for the hold's release: the
    side pool stays full until then."""
    hold = Hold(tmp_path / "renders")
    monkeypatch.setattr(defaults_module, "default_avatar", hold.job(defaults_module.default_avatar))
    return hold


async def test_a_flood_of_anonymous_renders_leaves_uploads_their_pool(
    tmp_path, sqlite_url, monkeypatch
) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, workers=1, queue_size=0, default_rate_limit="20/minute"
    )
    renders = blocked_renders(monkeypatch, tmp_path)
    async with running_app(settings) as (client, auth):
        flood = [
            asyncio.ensure_future(
                client.get(f"/avatars/anon-{index}", params={"default": "identicon", "size": 512})
            )
            for index in range(40)
        ]
        deep = [asyncio.ensure_future(client.get("/readyz", params={"deep": 1})) for _ in range(5)]
        await renders.wait_started()
        try:
            # Every place of the side pool is taken, and the upload pool has one place only.
            response = await client.post(
                "/users/me/avatar", headers=auth(), files=files(jpeg_with_metadata())
            )
            assert response.status_code == 201, response.text
        finally:
            renders.release()
        answers = Counter(r.status_code for r in await asyncio.gather(*flood))
        assert set(answers) <= {200, 429, 503}, answers
        assert answers[429] == 40 - 20  # past the per-client limit: nothing rendered
        assert answers[503] >= 20 - (SIDE_WORKERS + SIDE_QUEUE)  # the side pool was full
        assert answers[200] >= 1
        for ready in await asyncio.gather(*deep):
            assert ready.status_code in (200, 503)
            assert ready.json()["checks"]["database"] == "ok"


async def test_generated_images_are_rendered_once_and_cached_ones_are_not_limited(
    tmp_path, sqlite_url, monkeypatch
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, default_rate_limit="3/minute")
    renders = blocked_renders(monkeypatch, tmp_path)
    renders.release()
    async with running_app(settings) as (client, _auth):
        for user in ("ann", "bob", "cyd"):  # mp is the same picture for everyone
            response = await client.get(f"/avatars/{user}", params={"default": "mp", "size": 64})
            assert response.status_code == 200
        assert renders.calls() == 1
        for user in ("ann", "bob"):
            response = await client.get(f"/avatars/{user}", params={"default": "initials"})
            assert response.status_code == 200
        assert renders.calls() == 3
        refused = await client.get("/avatars/dee", params={"default": "initials"})
        assert_problem(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        again = await client.get("/avatars/ann", params={"default": "initials"})
        assert again.status_code == 200  # already made: served past the limit
        assert renders.calls() == 3


async def test_the_deep_selftest_runs_at_most_once_per_interval(
    tmp_path, sqlite_url, monkeypatch
) -> None:
    runs = Hold(tmp_path / "selftests")
    runs.release()  # counted, never held
    monkeypatch.setattr(defaults_module, "run_selftest", runs.job(defaults_module.run_selftest))
    settings = make_settings(tmp_path, database_url=sqlite_url, selftest_interval=3600)
    async with running_app(settings) as (client, _auth):
        answers = await asyncio.gather(
            *(client.get("/readyz", params={"deep": 1}) for _ in range(20))
        )
        assert {a.status_code for a in answers} == {200}
        assert len({a.text for a in answers}) == 1  # one report, shared
        assert runs.calls() == 1
    settings = make_settings(tmp_path, database_url=sqlite_url, selftest_interval=0)
    async with running_app(settings) as (client, _auth):
        for _ in range(2):
            assert (await client.get("/readyz", params={"deep": 1})).status_code == 200
        assert runs.calls() == 3


async def test_a_flood_of_first_requests_for_renditions_leaves_uploads_their_pool(
    tmp_path, sqlite_url, monkeypatch
) -> None:
    """Anyone can ask for a size or format an avatar does not have yet: the renditions are made
    on a pool of their own, the upload pool's size, and never take an upload's place."""
    settings = make_settings(tmp_path, database_url=sqlite_url, workers=1, queue_size=1)
    hold = Hold(tmp_path / "renditions")
    monkeypatch.setattr(
        renditions_module, "derive_square", hold.job(renditions_module.derive_square)
    )
    async with running_app(settings) as (client, auth):
        first = await client.post(
            "/users/me/avatar", headers=auth(), files=files(jpeg_with_metadata())
        )
        assert first.status_code == 201, first.text
        flood = [
            asyncio.ensure_future(
                client.get("/avatars/alice", params={"size": size, "format": "avif"})
            )
            for size in (16, 24, 32, 48, 64, 96)
        ]
        await hold.wait_started()
        try:
            response = await client.post(
                "/users/me/avatar", headers=auth("bob"), files=files(jpeg_with_metadata())
            )
            assert response.status_code == 201, response.text
        finally:
            hold.release()
        answers = Counter(r.status_code for r in await asyncio.gather(*flood))
        assert answers[503] == 6 - 2, answers  # one worker and one waiting place
        assert answers[200] + answers[302] == 2, answers  # served, or redirected to (S3)
