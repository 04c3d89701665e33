"""``avatar-service events list|replay|work`` in child processes, on the suite's databases."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_app
from tests.images import jpeg_with_metadata
from tests.services.support import child_env, run_cli
from tests.webhooks import clear_outbox, new_secret, outbox, receiving, wait_until, webhook_settings


def image() -> dict:
    return {"file": ("a.jpg", jpeg_with_metadata((160, 120)), "image/jpeg")}


@pytest.mark.server
async def test_work_sends_what_servers_without_a_dispatcher_wrote(
    tmp_path: Path, database_url: str
) -> None:
    await clear_outbox(database_url)
    with receiving([new_secret()]) as receiver:
        receiver.mode = "fail"
        settings = make_settings(
            tmp_path,
            database_url=database_url,
            **webhook_settings(receiver, events_dispatcher=False),
        )
        async with running_app(settings) as (client, auth):
            for user in ("ann", "bob"):
                assert (
                    await client.post("/users/me/avatar", headers=auth(user), files=image())
                ).status_code == 201
        code, out, err = await run_cli(settings, "events", "list", "--json", cwd=tmp_path)
        assert code == 0, err
        rows = json.loads(out)
        assert [(r["type"], r["user_id"], r["status"], r["target"]) for r in rows] == [
            ("avatar.updated", "bob", "unrouted", None),
            ("avatar.updated", "ann", "unrouted", None),
        ]

        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "events", "work",
            cwd=tmp_path, env=child_env(settings), stdout=PIPE, stderr=PIPE,
        )  # fmt: skip
        try:
            await wait_until(lambda: len(receiver.snapshot()) >= 2, what="failed attempts")
            receiver.mode = "ok"
            await wait_until(lambda: len(receiver.delivered()) == 2, what="two deliveries")
        finally:
            worker.send_signal(signal.SIGTERM)
            _out, worker_err = await asyncio.wait_for(worker.communicate(), timeout=30)
        assert worker.returncode == 0, worker_err.decode()

        code, out, err = await run_cli(settings, "events", "list", cwd=tmp_path)
        assert code == 0, err
        assert out.count("delivered") == 2 and "webhook:test" in out
        code, out, err = await run_cli(
            settings, "events", "list", "--status", "delivered", "--user", "ann", "--json",
            cwd=tmp_path,
        )  # fmt: skip
        [row] = json.loads(out)
        assert row["user_id"] == "ann" and row["attempts"] >= 1 and row["last_error"] is None


@pytest.mark.server
async def test_replay_marks_events_due_and_refuses_unknown_ones(
    tmp_path: Path, sqlite_url: str
) -> None:
    with receiving([new_secret()]) as receiver:
        settings = make_settings(tmp_path, database_url=sqlite_url, **webhook_settings(receiver))
        async with running_app(settings) as (client, auth):
            await client.post("/users/me/avatar", headers=auth(), files=image())
            await wait_until(lambda: len(receiver.delivered()) == 1, what="the first delivery")
        [event] = await outbox(settings.database_url)

        code, out, err = await run_cli(settings, "events", "replay", event["id"], cwd=tmp_path)
        assert (code, out.strip()) == (0, "1 deliveries due now"), err
        [again] = await outbox(settings.database_url)
        assert again["deliveries"]["webhook:test"]["status"] == "pending"
        assert again["deliveries"]["webhook:test"]["attempts"] == 0

        code, out, err = await run_cli(settings, "events", "replay", "evt_nope", cwd=tmp_path)
        assert code == 1 and "unknown event evt_nope" in err
        code, out, err = await run_cli(settings, "events", "replay", cwd=tmp_path)
        assert code == 2 and "EVENT_IDs or --dead" in err
        code, out, err = await run_cli(
            settings, "events", "replay", "--dead", "--target", "webhook:other", cwd=tmp_path
        )
        assert code == 2 and "no target 'webhook:other'" in err
        code, out, err = await run_cli(settings, "events", "replay", "--dead", cwd=tmp_path)
        assert (code, out.strip()) == (0, "0 deliveries due now"), err

        # The replayed delivery goes out again with the same id.
        async with running_app(settings):
            await wait_until(lambda: len(receiver.delivered()) == 2, what="the replay")
        assert receiver.delivered_ids() == [event["id"], event["id"]]
