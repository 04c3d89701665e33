"""Events from the outbox: written with the change, signed, delivered at least once and in each
user's order, retried, given up, replayed; CDN purges through the same path. Every webhook goes
to a real receiver on loopback that verifies it with the ``standardwebhooks`` library."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import jsonschema
import pytest
from sqlalchemy import text

from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.security import create_token
from app.db.session import create_engine, create_sessionmaker
from app.main import create_app
from app.services.events import EVENT_SCHEMAS
from app.services.outbox import Dispatcher, list_deliveries, replay
from tests.conftest import ROOT, make_settings, running_app, serving
from tests.images import jpeg_with_metadata
from tests.webhooks import (
    HOOK_PATH,
    Receiver,
    clear_outbox,
    new_secret,
    outbox,
    receiving,
    wait_until,
    webhook_settings,
)


def image(color: tuple[int, int, int] = (200, 30, 30)) -> dict:
    return {"file": ("a.jpg", jpeg_with_metadata((320, 240), color=color), "image/jpeg")}


def readme_schemas() -> dict[str, dict]:
    """The JSON Schema of each event as the README shows it."""
    readme = (ROOT / "README.md").read_text()
    found = re.findall(r"#### Schema of `([a-z.]+)`\n\n```json\n(.*?)\n```", readme, re.DOTALL)
    return {name: json.loads(body) for name, body in found}


def test_readme_shows_the_schema_of_every_event() -> None:
    assert readme_schemas() == EVENT_SCHEMAS


@pytest.fixture
async def receiver_settings(tmp_path: Path, database_url: str):
    await clear_outbox(database_url)
    with receiving([new_secret(), new_secret()]) as receiver:
        yield (
            receiver,
            make_settings(tmp_path, database_url=database_url, **webhook_settings(receiver)),
        )


async def test_each_change_writes_one_event_with_its_versions(receiver_settings) -> None:
    receiver, settings = receiver_settings
    async with running_app(settings) as (client, auth):
        first = (await client.post("/users/me/avatar", headers=auth(), files=image())).json()
        # Rejected changes change nothing, so they write no event.
        bad = await client.post(
            "/users/me/avatar",
            headers=auth(),
            files={"file": ("x.jpg", b"not an image", "image/jpeg")},
        )
        assert bad.status_code == 415
        second = (await client.post("/users/me/avatar", headers=auth(), files=image())).json()
        cropped = await client.patch("/users/me/avatar", headers=auth(), json={"crop": None})
        assert cropped.status_code == 200
        assert (await client.delete("/users/me/avatar", headers=auth())).status_code == 204
        assert (await client.delete("/users/me/avatar", headers=auth())).status_code == 404
        await wait_until(lambda: len(receiver.delivered()) == 4, what="four deliveries")

    events = await outbox(settings.database_url)
    versions = [first["version"], second["version"], cropped.json()["version"]]
    assert [(e["type"], e["user_id"], e["previous_version"], e["version"]) for e in events] == [
        ("avatar.updated", "alice", None, versions[0]),
        ("avatar.updated", "alice", versions[0], versions[1]),
        ("avatar.cropped", "alice", versions[1], versions[2]),
        ("avatar.deleted", "alice", versions[2], None),
    ]
    assert len({e["id"] for e in events}) == 4
    assert all(e["deliveries"]["webhook:test"]["status"] == "delivered" for e in events)

    schemas = readme_schemas()
    bodies = [r.payload for r in receiver.delivered()]
    assert [b["id"] for b in bodies] == [e["id"] for e in events]
    for body in bodies:
        jsonschema.validate(body, schemas[body["type"]], format_checker=jsonschema.FormatChecker())
    assert bodies[0]["data"] == {
        "user_id": "alice",
        "version": versions[0],
        "previous_version": None,
        "url": "https://avatars.example.com/users/alice/avatar",
    }
    assert "url" not in bodies[3]["data"]


async def test_a_change_whose_commit_fails_leaves_no_event(
    tmp_path: Path, database_url: str
) -> None:
    from sqlalchemy import event as orm_event
    from sqlalchemy.exc import OperationalError

    await clear_outbox(database_url)
    settings = make_settings(tmp_path, database_url=database_url, events_dispatcher=False)

    def refuse(_connection) -> None:
        raise OperationalError("COMMIT", {}, ConnectionResetError("injected: lost at commit"))

    app = create_app(settings)
    async with serving(app) as client:
        client.headers["Authorization"] = f"Bearer {create_token(settings, 'alice')}"
        assert (await client.post("/users/me/avatar", files=image())).status_code == 201
        before = await outbox(database_url)
        orm_event.listen(app.state.runtime.engine.sync_engine, "commit", refuse)
        try:
            assert (await client.post("/users/me/avatar", files=image())).status_code == 503
            assert (await client.patch("/users/me/avatar", json={"crop": None})).status_code == 503
            assert (await client.delete("/users/me/avatar")).status_code == 503
        finally:
            orm_event.remove(app.state.runtime.engine.sync_engine, "commit", refuse)
    assert await outbox(database_url) == before
    assert [e["type"] for e in before] == ["avatar.updated"]


async def test_every_webhook_verifies_with_each_of_two_secrets(receiver_settings) -> None:
    """Rotation: the old and the new secret both verify the same delivery."""
    receiver, settings = receiver_settings
    async with running_app(settings) as (client, auth):
        for user in ("ann", "bob", "cy"):
            assert (
                await client.post("/users/me/avatar", headers=auth(user), files=image())
            ).status_code == 201
        await wait_until(lambda: len(receiver.delivered()) == 3, what="three deliveries")
    for request in receiver.snapshot():
        assert request.failures == []
        assert request.verified == receiver.secrets
        assert request.headers["webhook-id"] == request.payload["id"]
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        assert len(request.headers["webhook-signature"].split(" ")) == 2

    # A receiver that only has a secret the service does not sign with refuses every one.
    stranger = Receiver([new_secret()])
    for request in receiver.snapshot():
        stranger.verify(request)
        assert request.failures and request.verified == receiver.secrets


async def test_receiver_down_then_back_gets_every_event_once_in_each_users_order(
    receiver_settings,
) -> None:
    receiver, settings = receiver_settings
    receiver.stop()
    users = ["u1", "u2", "u3"]
    async with running_app(settings) as (client, auth):
        for round_ in range(3):
            for user in users:
                response = await client.post(
                    "/users/me/avatar", headers=auth(user), files=image((round_ * 80, 0, 0))
                )
                assert response.status_code == 201
        # Down: attempts fail (connection refused) and are scheduled again; one user's later
        # events wait behind the first.
        deadline = time.monotonic() + 20
        while True:
            down = await outbox(settings.database_url)
            attempts = {
                e["id"]: e["deliveries"].get("webhook:test", {}).get("attempts", 0) for e in down
            }
            if sum(attempts[e["id"]] >= 2 for e in down[:3]) == 3:
                break
            assert time.monotonic() < deadline, down
            await asyncio.sleep(0.1)
        assert all(attempts[e["id"]] == 0 for e in down[3:]), "later events wait their turn"
        assert all(d["status"] == "pending" for e in down for d in e["deliveries"].values())
        receiver.start()
        await wait_until(lambda: len(receiver.delivered()) >= 9, within=30, what="nine")
        await asyncio.sleep(0.5)  # anything more would be a duplicate

    events = await outbox(settings.database_url)
    delivered = receiver.delivered_ids()
    assert sorted(delivered) == sorted(e["id"] for e in events)
    assert len(delivered) == len(set(delivered)), "no duplicates without faults"
    for user in users:
        in_db = [e["id"] for e in events if e["user_id"] == user]
        received = [
            r.event_id for r in receiver.delivered() if r.payload["data"]["user_id"] == user
        ]
        assert received == in_db
    for request in receiver.snapshot():
        assert request.verified == receiver.secrets


async def test_redirects_are_never_followed(receiver_settings) -> None:
    receiver, settings = receiver_settings
    receiver.mode = "redirect"
    async with running_app(settings) as (client, auth):
        assert (await client.post("/users/me/avatar", headers=auth(), files=image())).status_code
        await wait_until(lambda: len(receiver.snapshot()) >= 2, what="two attempts")
    assert {r.path for r in receiver.snapshot()} == {HOOK_PATH}
    [event] = await outbox(settings.database_url)
    delivery = event["deliveries"]["webhook:test"]
    assert delivery["status"] == "pending"
    assert delivery["last_error"] == "HTTP 307 (redirect to /elsewhere, not followed)"


async def test_answers_after_the_timeout_are_the_duplicates_receivers_must_expect(
    receiver_settings,
) -> None:
    """A receiver that did the work but answered too late gets the event again: at least once,
    with the same webhook-id each time."""
    receiver, settings = receiver_settings
    settings = settings.model_copy(update={"events_timeout": 0.3})
    receiver.mode = "late"
    async with running_app(settings) as (client, auth):
        assert (await client.post("/users/me/avatar", headers=auth(), files=image())).status_code
        await wait_until(lambda: len(receiver.snapshot()) >= 2, what="two late attempts")
        receiver.mode = "ok"
        deadline = time.monotonic() + 20
        while (delivery := await _only_delivery(settings))["status"] != "delivered":
            assert time.monotonic() < deadline, delivery
            await asyncio.sleep(0.1)
    [event] = await outbox(settings.database_url)
    # Every attempt reached the receiver; all but the one answered in time are duplicates.
    received = [r.event_id for r in receiver.snapshot()]
    assert received == [event["id"]] * delivery["attempts"]
    assert len(received) >= 3


async def _only_delivery(settings: Settings) -> dict:
    [event] = await outbox(settings.database_url)
    return event["deliveries"].get("webhook:test", {"status": "unrouted"})


async def test_upload_never_waits_for_a_receiver_that_never_answers(
    tmp_path: Path, database_url: str
) -> None:
    await clear_outbox(database_url)
    with receiving([new_secret()]) as receiver:
        receiver.mode = "hang"
        settings = make_settings(
            tmp_path, database_url=database_url, **webhook_settings(receiver, events_timeout=30.0)
        )
        async with running_app(settings) as (client, auth):
            for user in ("a", "b", "c"):
                started = time.monotonic()
                response = await client.post("/users/me/avatar", headers=auth(user), files=image())
                assert response.status_code == 201
                assert time.monotonic() - started < 5
            await wait_until(lambda: len(receiver.snapshot()) == 3, what="three requests held")
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            metrics = (await client.get("/metrics")).text
            # The receiver hangs up: shutdown has no delivery in flight to wait for.
            receiver.release.set()
        assert re.search(r"^avatar_events_pending \d", metrics, re.MULTILINE)


async def test_failures_are_retried_with_backoff_then_dead_and_replay_sends_again(
    tmp_path: Path, sqlite_url: str
) -> None:
    with receiving([new_secret()]) as receiver:
        receiver.mode = "fail"
        settings = make_settings(
            tmp_path,
            database_url=sqlite_url,
            **webhook_settings(receiver, events_dispatcher=False, events_retry_for=2.0),
        )
        async with running_app(settings) as (client, auth):
            assert (
                await client.post("/users/me/avatar", headers=auth(), files=image())
            ).status_code
        engine = create_engine(settings.database_url)
        sessions = create_sessionmaker(engine)
        metrics = Metrics()
        dispatcher = Dispatcher(sessions=sessions, settings=settings, metrics=metrics)

        def sample(name: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(name, labels)

        try:
            deadline = time.monotonic() + 10
            status = None
            while status != "dead":
                assert time.monotonic() < deadline
                await dispatcher.drain(within=2)
                await asyncio.sleep(0.05)
                [event] = await outbox(settings.database_url)
                status = event["deliveries"]["webhook:test"]["status"]
            attempts = [r.started for r in receiver.snapshot()]
            assert 3 <= len(attempts) <= 8
            gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
            # Backoff with jitter: each wait at least half its nominal delay (0.2 s, 0.4 s, ...).
            for n, gap in enumerate(gaps):
                assert gap >= min(0.2 * 2**n, 1.0) / 2 - 0.05, gaps
            [row] = await list_deliveries(sessions, status="dead")
            assert row.last_error == "HTTP 500" and row.attempts == len(attempts)
            counted = "avatar_event_deliveries_total"
            assert sample(counted, target="webhook:test", outcome="retried") == len(attempts) - 1
            assert sample(counted, target="webhook:test", outcome="dead") == 1
            await dispatcher.update_gauges()
            assert (sample("avatar_events_dead"), sample("avatar_events_pending")) == (1, 0)

            receiver.mode = "ok"
            assert await replay(sessions, settings, dead=True) == 1
            await dispatcher.drain(within=5)
            assert len(receiver.delivered()) == 1
            [event] = await outbox(settings.database_url)
            assert event["deliveries"]["webhook:test"]["status"] == "delivered"
            assert receiver.delivered_ids() == [event["id"]]
            # Replaying a delivered event by id sends the same id again.
            assert await replay(sessions, settings, event_ids=[event["id"]]) == 1
            await dispatcher.drain(within=5)
            assert receiver.delivered_ids() == [event["id"], event["id"]]
            assert sample(counted, target="webhook:test", outcome="delivered") == 2
            delay = "avatar_event_delivery_delay_seconds_count"
            assert sample(delay, target="webhook:test") == 2
        finally:
            await dispatcher.close()
            await engine.dispose()


async def test_cdn_purge_requests_follow_the_template(tmp_path: Path, sqlite_url: str) -> None:
    with receiving() as cdn:
        settings = make_settings(
            tmp_path,
            database_url=sqlite_url,
            public_base_url="https://avatars.example.com",
            cdn_purge={
                "method": "POST",
                "url": f"http://127.0.0.1:{cdn.port}/purge?url={{url_quoted}}",
                "headers": {"Fastly-Key": "k-123", "X-Purge-Url": "{url}"},
                "events": ["avatar.updated", "avatar.deleted"],
            },
            events_poll_interval=0.1,
        )
        async with running_app(settings) as (client, auth):
            assert (
                await client.post("/users/me/avatar", headers=auth("a b"), files=image())
            ).status_code == 201
            assert (
                await client.patch("/users/me/avatar", headers=auth("a b"), json={"crop": None})
            ).status_code == 200
            assert (await client.delete("/users/me/avatar", headers=auth("a b"))).status_code == 204
            await wait_until(lambda: len(cdn.snapshot()) == 4, what="four purges")
            await asyncio.sleep(0.3)
    requests = cdn.snapshot()
    assert len(requests) == 4  # cropping is not in the template's events
    urls = [
        "https://avatars.example.com/avatars/a%20b",
        "https://avatars.example.com/users/a%20b/avatar",
    ]
    assert [r.headers["x-purge-url"] for r in requests] == urls * 2
    from urllib.parse import quote

    assert [r.path for r in requests] == [f"/purge?url={quote(u, safe='')}" for u in urls] * 2
    assert {r.method for r in requests} == {"POST"}
    assert {r.headers["fastly-key"] for r in requests} == {"k-123"}
    events = await outbox(settings.database_url)
    assert [e["type"] for e in events] == ["avatar.updated", "avatar.cropped", "avatar.deleted"]
    assert [sorted(e["deliveries"]) for e in events] == [["cdn-purge"], [], ["cdn-purge"]]


async def test_varnish_purge_method_with_the_url_itself(tmp_path: Path, sqlite_url: str) -> None:
    """``PURGE {url}``, as Fastly and Varnish take it: here the base URL is the receiver."""
    with receiving() as cdn:
        base = f"http://127.0.0.1:{cdn.port}"
        settings = make_settings(
            tmp_path,
            database_url=sqlite_url,
            public_base_url=base,
            cdn_purge={"method": "PURGE", "url": "{url}"},
            events_poll_interval=0.1,
        )
        async with running_app(settings) as (client, auth):
            await client.post("/users/me/avatar", headers=auth(), files=image())
            await wait_until(lambda: len(cdn.snapshot()) == 2, what="two purges")
    assert [(r.method, r.path) for r in cdn.snapshot()] == [
        ("PURGE", "/avatars/alice"),
        ("PURGE", "/users/alice/avatar"),
    ]


def test_outbox_tables_migrate_up_and_down(tmp_path: Path) -> None:
    import sqlite3

    from app.db.migrate import downgrade, upgrade

    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"

    def tables() -> set[str]:
        with sqlite3.connect(path) as db:
            return {name for (name,) in db.execute("SELECT name FROM sqlite_master")}

    upgrade(url, "0003")
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO avatars (user_id, version, width, height, source_format, variants, "
            "created_at, updated_at) VALUES ('u', 'v', 1, 1, 'JPEG', '[]', '2026-01-01', "
            "'2026-01-01')"
        )
    upgrade(url, "0004")
    assert {"outbox_events", "outbox_deliveries"} <= tables()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO outbox_events (id, type, user_id, occurred_at) "
            "VALUES ('evt_1', 'avatar.deleted', 'u', '2026-01-01')"
        )
        db.execute(
            "INSERT INTO outbox_deliveries (event_seq, target, user_id, status, attempts, "
            "next_attempt_at) VALUES (1, 'cdn-purge', 'u', 'pending', 0, '2026-01-01')"
        )
    downgrade(url, "0003")
    assert not {"outbox_events", "outbox_deliveries"} & tables()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT user_id FROM avatars").fetchall() == [("u",)]
    upgrade(url)
    assert {"outbox_events", "outbox_deliveries"} <= tables()


@pytest.mark.postgres
async def test_outbox_tables_migrate_up_and_down_on_postgres(postgres_url: str) -> None:
    from app.db.migrate import downgrade, upgrade

    async def tables() -> set[str]:
        engine = create_engine(postgres_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
                return {name for (name,) in rows}
        finally:
            await engine.dispose()

    await asyncio.to_thread(downgrade, postgres_url, "0003")
    try:
        assert not {"outbox_events", "outbox_deliveries"} & await tables()
    finally:
        await asyncio.to_thread(upgrade, postgres_url)
    assert {"outbox_events", "outbox_deliveries"} <= await tables()
