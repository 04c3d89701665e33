"""Faults under a steady load: what breaks, what holds (``make chaos``; a reduced run is
``tests/cluster/test_chaos.py``).

Every scenario runs the load of ``cluster.load``, injects its fault a moment in, undoes it,
lets the load run on a moment, and then checks:

- the only failures are the documented 503s (problem+json with a code and ``Retry-After``),
  and, when a replica is killed, the requests it was answering at that instant (retried by the
  client with their ``Idempotency-Key``);
- every read agreed with the last write answered 2xx (checked during the load), and afterwards
  every user's document has that version and each of its images can be fetched;
- the reconciler finds no avatar pointing at a missing object, and after ``gc --apply`` no
  orphan either;
- the per-user rate limit holds across the replicas: a burst of uploads by one user through the
  balancer gets exactly the limit, then 429 (during the Redis outage: all let through, the
  documented fail-open).

All traffic goes to 127.0.0.1; every loop is bounded in requests and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from cluster import local
from cluster.load import UNKNOWN, Load, Outcome, User, photo, rate_limit_probe

RATE_LIMIT = 10  # uploads and re-crops per user ...
RATE_WINDOW = 10  # ... per this many seconds
PROBE_EXTRA = 2  # uploads past the limit in a probe
KILL_WINDOW = 1.0  # seconds around a SIGKILL in which a request may lose its connection


@dataclass(frozen=True)
class Timing:
    """Seconds of load before the fault, of the fault, and after it is undone; the pause
    between a user's requests and the size of the photos uploaded."""

    before: float
    during: float
    after: float
    think: float = 0.05
    photo_size: tuple[int, int] = (480, 360)


# The reduced run of the test suite: lighter, so that it stays short on a shared machine.
QUICK = Timing(before=0.5, during=1.5, after=0.5, think=0.1, photo_size=(320, 240))
FULL = Timing(before=5.0, during=10.0, after=5.0)


@dataclass
class Report:
    scenario: str
    outcomes: list[Outcome] = field(default_factory=list)
    fault_at: float = 0.0
    undone_at: float = 0.0
    killed_at: float | None = None
    violations: list[str] = field(default_factory=list)
    probe: list[int | str] = field(default_factory=list)
    outage_probe: list[int | str] = field(default_factory=list)
    orphans_before_gc: int = 0
    users_checked: int = 0
    seconds: float = 0.0

    def allowed_failure(self, outcome: Outcome) -> str | None:
        """Why this failure is allowed, or None when it is a violation."""
        if outcome.documented_503:
            return "documented 503"
        in_flight = self.killed_at is not None and outcome.started <= self.killed_at
        if in_flight and outcome.status in (None, 502) and outcome.ended >= self.killed_at:
            return "in flight on the killed replica"
        # The balancer drops client connections as the replica dies; a request sent on one at
        # that instant gets no answer (and is retried: a write with its Idempotency-Key).
        cut = self.killed_at is not None and abs(outcome.started - self.killed_at) < KILL_WINDOW
        if cut and outcome.status is None:
            return "connection cut as the replica was killed"
        if outcome.code == "idempotency_key_in_use" and outcome.retry:
            return "retry while the killed replica held the key"
        return None

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok and not _expected_404(o)]

    def figures(self) -> dict[str, object]:
        ok = [o for o in self.outcomes if o.ok or _expected_404(o)]
        failures = self.failures
        documented = [o for o in failures if o.documented_503]
        killed = [o for o in failures if self.allowed_failure(o) and not o.documented_503]
        uploads = [o for o in self.outcomes if o.op == "upload" and o.status == 201]
        times = sorted(o.ms for o in ok)
        mutations_ok = [
            o.ended for o in ok if o.op in ("upload", "recrop") and o.started >= self.undone_at
        ]
        return {
            "requests": len(self.outcomes),
            "answered ok": len(ok),
            "uploads 201": len(uploads),
            "client retries": sum(o.retry for o in self.outcomes),
            "replayed retries": sum(o.replayed for o in self.outcomes),
            "documented 503": len(documented),
            "killed in flight": len(killed),
            "violations": len(self.violations),
            "p50 ms": round(statistics.median(times)) if times else None,
            "p95 ms": round(times[int(len(times) * 0.95) - 1]) if len(times) >= 20 else None,
            "recovery s": (round(min(mutations_ok) - self.undone_at, 2) if mutations_ok else None),
            "orphans before gc": self.orphans_before_gc,
            "rate-limit probe": f"{self.probe.count(201)}x201 {self.probe.count(429)}x429",
            "run s": round(self.seconds, 1),
        }


def _expected_404(outcome: Outcome) -> bool:
    return outcome.status == 404 and outcome.code == "avatar_not_found" and not outcome.problem


class Chaos:
    def __init__(self, cluster: local.Cluster, *, users: int, timing: Timing) -> None:
        self.cluster = cluster
        self.settings = cluster.settings()
        self.timing = timing
        self.user_count = users
        self.photos = [photo(seed, size=timing.photo_size) for seed in range(8)]
        self.tiny = [photo(100 + seed, size=(64, 64)) for seed in range(4)]

    def token(self, user_id: str) -> str:
        from app.core.security import create_token

        return create_token(self.settings, user_id)

    async def scenario(
        self,
        name: str,
        fault: Callable[[Report], None],
        undo: Callable[[Report], None],
        *,
        during_fault: Callable[[Report], object] | None = None,
    ) -> Report:
        report = Report(name)
        began = time.monotonic()
        run = uuid.uuid4().hex[:6]
        users = [
            User(f"{name}-{run}-{i}", self.token(f"{name}-{run}-{i}"), RATE_LIMIT, RATE_WINDOW)
            for i in range(self.user_count)
        ]
        load = Load(
            self.cluster.base_url,
            users,
            photos=self.photos,
            think=self.timing.think,
            max_requests=int(400 * (self.timing.before + self.timing.during + self.timing.after)),
        )
        running = asyncio.create_task(load.run(deadline_seconds=120))
        await asyncio.sleep(self.timing.before)
        report.fault_at = time.monotonic()
        await asyncio.to_thread(fault, report)
        if during_fault is not None:
            await during_fault(report)
        remaining = self.timing.during - (time.monotonic() - report.fault_at)
        await asyncio.sleep(max(0.0, remaining))
        await asyncio.to_thread(undo, report)
        report.undone_at = time.monotonic()
        # The per-user limit, across the replicas, while the others' load goes on.
        report.probe, _ = await asyncio.gather(
            rate_limit_probe(
                self.cluster.base_url,
                self.token(f"{name}-{run}-probe"),
                attempts=RATE_LIMIT + PROBE_EXTRA,
                photos=self.tiny,
            ),
            asyncio.sleep(self.timing.after),
        )
        load.stop.set()
        report.outcomes = await running

        await asyncio.to_thread(local.wait_balanced, self.cluster)
        for outcome in report.failures:
            if report.allowed_failure(outcome) is None:
                report.violations.append(_describe(outcome))
        await self._check_final_state(report, users)
        await self._check_storage(report)
        if report.probe != [201] * RATE_LIMIT + [429] * PROBE_EXTRA:
            report.violations.append(f"rate limit across replicas: {report.probe}")
        report.seconds = time.monotonic() - began
        return report

    async def _check_final_state(self, report: Report, users: list[User]) -> None:
        async with httpx.AsyncClient(base_url=self.cluster.base_url, timeout=30) as http:
            for user in users:
                response = await http.get(f"/users/{user.user_id}/avatar")
                if user.state is None or (user.state is UNKNOWN and response.status_code == 404):
                    if response.status_code != 404:
                        report.violations.append(
                            f"{user.user_id}: {response.status_code}, no avatar expected"
                        )
                    continue
                if response.status_code != 200:
                    report.violations.append(
                        f"{user.user_id}: {response.status_code} after the run"
                    )
                    continue
                document = response.json()
                if user.state is not UNKNOWN and document["version"] != user.state:
                    report.violations.append(
                        f"{user.user_id}: version {document['version']}, last 2xx was {user.state}"
                    )
                for variant in document["variants"]:
                    image = await http.get(variant["url"])
                    if image.status_code != 200 or not image.content.startswith(b"RIFF"):
                        report.violations.append(
                            f"{user.user_id}: {variant['name']} unreadable ({image.status_code})"
                        )
                report.users_checked += 1

    async def _check_storage(self, report: Report) -> None:
        """No row points at a missing object; after gc --apply, no orphan is left."""
        from app.services.gc import reconcile
        from app.services.runtime import open_runtime

        with local.s3_credentials():
            async with open_runtime(self.settings) as runtime:
                stores = {"sessions": runtime.sessions, "storage": runtime.storage}
                found = await reconcile(**stores, grace=timedelta(0))
                report.orphans_before_gc = len(found.orphans)
                for missing in found.missing:
                    report.violations.append(f"missing object {missing.key} of {missing.user_id}")
                await reconcile(**stores, grace=timedelta(0), apply=True)
                after = await reconcile(**stores, grace=timedelta(0))
        if after.orphans or after.missing or after.failed:
            report.violations.append(
                f"after gc: {len(after.orphans)} orphans, {len(after.missing)} missing"
            )

    # -- the scenarios ----------------------------------------------------------------------

    async def kill_a_replica(self) -> Report:
        victim = self.cluster.replicas[0].name

        def fault(report: Report) -> None:
            report.killed_at = time.monotonic()
            self.cluster.kill(victim)

        def undo(report: Report) -> None:
            self.cluster.start_replica(victim)

        return await self.scenario("sigkill", fault, undo)

    async def rolling_restart(self) -> Report:
        def fault(report: Report) -> None:
            for replica in list(self.cluster.replicas):
                local.drain(self.cluster, replica.name)
                self.cluster.stop_process(replica.name)  # SIGTERM: in-flight requests finish
                self.cluster.start_replica(replica.name)
                local.undrain(self.cluster, replica.name)
                local.wait_balanced(self.cluster)

        return await self.scenario("rolling", fault, lambda report: None)

    async def redis_outage(self) -> Report:
        async def probe(report: Report) -> None:
            report.outage_probe = await rate_limit_probe(
                self.cluster.base_url,
                self.token(f"outage-probe-{uuid.uuid4().hex[:6]}"),
                attempts=RATE_LIMIT + PROBE_EXTRA,
                photos=self.tiny,
            )
            if report.outage_probe != [201] * (RATE_LIMIT + PROBE_EXTRA):
                report.violations.append(f"Redis down, not fail-open: {report.outage_probe}")

        return await self.scenario(
            "redis",
            lambda report: self.cluster.stop_redis(),
            lambda report: self.cluster.start_redis(),
            during_fault=probe,
        )

    async def database_cut(self) -> Report:
        return await self.scenario(
            "postgres",
            lambda report: self.cluster.cut("pg-proxy"),
            lambda report: self.cluster.restore("pg-proxy"),
        )

    async def s3_outage(self) -> Report:
        return await self.scenario(
            "s3",
            lambda report: self.cluster.cut("s3-proxy"),
            lambda report: self.cluster.restore("s3-proxy"),
        )

    async def run_all(self, names: list[str]) -> list[Report]:
        scenarios = {
            "sigkill": self.kill_a_replica,
            "rolling": self.rolling_restart,
            "redis": self.redis_outage,
            "postgres": self.database_cut,
            "s3": self.s3_outage,
        }
        return [await scenarios[name]() for name in names]


SCENARIOS = ["sigkill", "rolling", "redis", "postgres", "s3"]


def _describe(outcome: Outcome) -> str:
    what = outcome.problem or f"{outcome.status} {outcome.code}"
    return f"{outcome.user} {outcome.op}: {what}"


def print_reports(reports: list[Report], out=sys.stdout) -> None:
    rows = [report.figures() for report in reports]
    columns = list(rows[0])
    print("| scenario | " + " | ".join(columns) + " |", file=out)
    print("|---" * (len(columns) + 1) + "|", file=out)
    for report, row in zip(reports, rows, strict=True):
        cells = ["—" if row[c] is None else str(row[c]) for c in columns]
        print(f"| {report.scenario} | " + " | ".join(cells) + " |", file=out)
    for report in reports:
        if report.outage_probe:
            probe = report.outage_probe
            print(
                f"{report.scenario}: during the outage the probe got {probe.count(201)}x201 "
                f"{probe.count(429)}x429 (fail-open)",
                file=out,
            )
        for violation in report.violations:
            print(f"VIOLATION {report.scenario}: {violation}", file=out)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.chaos", description=__doc__)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the reduced timing of the tests")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--postgres-url", default=local.DEFAULT_POSTGRES_URL)
    parser.add_argument("--state-dir", type=Path, default=local.DEFAULT_STATE_DIR / "chaos")
    args = parser.parse_args()
    database = f"avatar_chaos_{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with local.running(
        replicas=args.replicas,
        state_dir=args.state_dir,
        postgres_url=args.postgres_url,
        database=database,
        rate_limit=f"{RATE_LIMIT}/{RATE_WINDOW} seconds",
    ) as cluster:
        chaos = Chaos(cluster, users=args.users, timing=QUICK if args.quick else FULL)
        reports = asyncio.run(chaos.run_all(args.scenario or SCENARIOS))
    asyncio.run(local.drop_database(args.postgres_url, database))
    print(f"{args.replicas} replicas, {args.users} users, {time.monotonic() - started:.0f} s")
    print_reports(reports)
    return 1 if any(report.violations for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
