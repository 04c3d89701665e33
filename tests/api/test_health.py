from __future__ import annotations

import shutil

from tests.conftest import make_settings, running_app


async def test_healthz(client) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {}}


async def test_readyz_checks_database_and_storage(client) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}


async def test_readyz_reports_an_unreachable_database(tmp_path) -> None:
    # The SQLite file's folder vanishes under the running service.
    settings = make_settings(tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/gone/x.db")
    async with running_app(settings) as (client, _auth):
        shutil.rmtree(tmp_path / "gone")
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"].startswith("unavailable")
        assert response.json()["checks"]["storage"] == "ok"


async def test_readyz_reports_unwritable_storage(tmp_path, sqlite_url) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, storage="local")
    async with running_app(settings) as (client, _auth):
        shutil.rmtree(settings.media_path, ignore_errors=True)
        settings.media_path.parent.mkdir(parents=True, exist_ok=True)
        settings.media_path.write_text("a file where the folder should be")
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["storage"].startswith("unavailable")


async def test_deep_readiness_runs_the_bundled_images(client) -> None:
    response = await client.get("/readyz", params={"deep": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["checks"]["imaging"] == "ok"
    assert set(body["images"]) >= {"orientation", "cmyk", "animated", "bomb"}
    assert body["images"]["bomb"]["outcome"] == "too_many_pixels"
    assert body["images"]["orientation"]["outcome"] == "accepted"
    assert all(report["status"] == "ok" for report in body["images"].values())


def test_deep_readiness_notices_a_broken_codec(monkeypatch) -> None:
    from app.imaging.pipeline import PipelineOptions
    from app.services import selftest

    def broken(data, options=None, **kwargs):
        raise OSError("decoder gone")

    monkeypatch.setattr(selftest, "process_image", broken)
    report = selftest.run_selftest(PipelineOptions())
    assert report["cmyk"] == {**report["cmyk"], "status": "failed", "outcome": "crashed (OSError)"}
