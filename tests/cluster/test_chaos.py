"""The reduced chaos run (``make chaos`` is the full one): two replicas behind HAProxy on
loopback, a small steady load, and each fault in turn (SIGKILL, rolling SIGTERM restart,
Redis stopped, PostgreSQL cut, S3 cut). Every promise of ``cluster.chaos`` is checked there;
here, that none was broken and that each fault really happened."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid

import pytest
from sqlalchemy.engine import make_url

from cluster import chaos, local
from tests.conftest import POSTGRES_URL, TEST_STORAGE, missing

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.server,
    pytest.mark.long,
    # The cluster stores on S3 (moto's server) in every run: `make test-s3` need not repeat it.
    pytest.mark.skipif(TEST_STORAGE == "s3", reason="the cluster always runs on S3"),
]


@pytest.fixture
def admin_url() -> str:
    for command in ("haproxy", "redis-server"):
        if shutil.which(command) is None:
            missing(f"{command} is not installed (make install-haproxy)")
    try:
        asyncio.run(local.drop_database(POSTGRES_URL, "avatar_cluster_probe_absent"))
    except Exception as exc:
        missing(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}: {exc}")
    return make_url(POSTGRES_URL).render_as_string(hide_password=False)


def test_faults_under_load_keep_the_promises(tmp_path, admin_url: str) -> None:
    database = f"avatar_chaos_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with local.running(
            replicas=2,
            state_dir=tmp_path / "cluster",
            postgres_url=admin_url,
            database=database,
            rate_limit=f"{chaos.RATE_LIMIT}/{chaos.RATE_WINDOW} seconds",
        ) as cluster:
            processes = list(cluster.processes.values())
            run = chaos.Chaos(cluster, users=2, timing=chaos.QUICK)
            reports = {r.scenario: r for r in asyncio.run(run.run_all(chaos.SCENARIOS))}
        assert not any(process.alive() for process in processes)
    finally:
        asyncio.run(local.drop_database(admin_url, database))

    for report in reports.values():
        assert not report.violations, (report.scenario, report.violations)
        uploads = [o for o in report.outcomes if o.op == "upload" and o.status == 201]
        assert uploads, f"{report.scenario}: the load uploaded nothing"
        assert report.probe.count(429) == chaos.PROBE_EXTRA
    # Each fault was felt, and only as documented.
    assert all(o.ok or o.status == 404 for o in reports["rolling"].outcomes)
    assert all(o.ok or o.status == 404 for o in reports["redis"].outcomes)
    assert reports["redis"].outage_probe.count(201) == chaos.RATE_LIMIT + chaos.PROBE_EXTRA
    for name, code in (("postgres", "database_unavailable"), ("s3", "storage_unavailable")):
        codes = {o.code for o in reports[name].outcomes if o.status == 503}
        assert code in codes, (name, codes)
