"""Many users' documents: one batch request against one request per user, on a real server.

    python -m benchmarks.batch                    # SQLite; --postgres-url for PostgreSQL
    python -m benchmarks.batch --users 100 --rounds 10 --repeat 5

A server is started here (`avatar-service serve`, local storage) and `--users` users upload a
small photo each. Then one keep-alive client reads all their documents four ways, each
`--repeat` times in a row per round, in rounds that rotate the order: `GET /avatars?user_id=...`
(one request), `POST /avatars/lookup` (one request), the same GET with `If-None-Match` (a
304), and `GET /users/{id}/avatar` for each user one after another, as a client without the
batch route does. For each way it prints the median wall-clock time of one read of them all,
the server process's CPU time per read (user + system from /proc, over the whole run: other
work on the machine does not inflate it, as it does the wall clock) and the bytes received;
then the ratios one-per-user / batch, measured in the same run. Requests go to loopback only
and every loop is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from benchmarks.capacity import cpu_seconds
from benchmarks.photo import phone_photo
from benchmarks.server import (
    Server,
    add_postgres_option,
    scratch_postgres,
    spawned_server,
    upload_avatars,
)


@dataclass
class Way:
    """One way of reading every user's document; a "read" is all of them, once."""

    name: str
    requests: int  # per read
    wall_ms: list[float] = field(default_factory=list)  # per read, one figure per round
    cpu_seconds: float = 0.0  # all reads
    reads: int = 0
    bytes: int = 0  # per read

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def cpu_ms(self) -> float:
        """Server CPU per read: /proc counts in clock ticks (10 ms), so it is the total over
        every round divided, not a median of per-round figures."""
        return self.cpu_seconds / self.reads * 1000


def users_with_avatars(server: Server, count: int) -> list[str]:
    """``count`` users, each with an avatar (a small photo, uploaded one after another)."""
    users = [f"batch-user-{n:03}" for n in range(count)]
    upload_avatars(server, users, phone_photo(320, 240))
    return users


def _exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    expect: int = 200,
) -> tuple[bytes, dict[str, str]]:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    if response.status != expect:
        raise RuntimeError(f"{method} {path[:60]} answered {response.status}: {data[:200]!r}")
    return data, {name.lower(): value for name, value in response.getheaders()}


def ways_of_reading(
    connection: http.client.HTTPConnection, users: list[str]
) -> dict[str, tuple[int, Callable[[], int]]]:
    """Each way: its requests per round, and a round that returns the bytes it received."""
    query = "/avatars?" + urlencode([("user_id", user) for user in users])
    lookup = json.dumps({"user_ids": users}).encode()
    _data, headers = _exchange(connection, "GET", query)
    etag = headers["etag"]

    def batch_get() -> int:
        return len(_exchange(connection, "GET", query)[0])

    def batch_post() -> int:
        data, _headers = _exchange(
            connection,
            "POST",
            "/avatars/lookup",
            body=lookup,
            headers={"Content-Type": "application/json"},
        )
        return len(data)

    def revalidate() -> int:
        data, _headers = _exchange(
            connection, "GET", query, headers={"If-None-Match": etag}, expect=304
        )
        return len(data)

    def one_per_user() -> int:
        return sum(
            len(_exchange(connection, "GET", f"/users/{quote(user, safe='')}/avatar")[0])
            for user in users
        )

    return {
        "GET /avatars?user_id=... (one request)": (1, batch_get),
        "POST /avatars/lookup (one request)": (1, batch_post),
        "GET /avatars with If-None-Match (304)": (1, revalidate),
        "GET /users/{id}/avatar, one per user": (len(users), one_per_user),
    }


def measure(server: Server, users: list[str], rounds: int, repeat: int) -> list[Way]:
    """``rounds`` rounds; in each, every way reads ``repeat`` times in a row (its turn rotates
    from round to round, so no way always follows the same one)."""
    assert server.pid is not None
    connection = http.client.HTTPConnection(*server.host_port, timeout=60)
    try:
        plan = ways_of_reading(connection, users)
        ways = {name: Way(name, requests) for name, (requests, _read) in plan.items()}
        names = list(plan)
        for number in range(rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                read, way = plan[name][1], ways[name]
                cpu_before = cpu_seconds(server.pid)
                start = time.perf_counter()
                for _ in range(repeat):
                    way.bytes = read()
                way.wall_ms.append((time.perf_counter() - start) / repeat * 1000)
                way.cpu_seconds += cpu_seconds(server.pid) - cpu_before
                way.reads += repeat
        return list(ways.values())
    finally:
        connection.close()


def report(ways: list[Way], *, users: int, rounds: int, database: str, out=sys.stdout) -> None:
    print(
        f"every document of {users} users, read {ways[0].reads} times each way ({rounds} "
        f"rounds); {database}, local storage, one keep-alive client",
        file=out,
    )
    print(
        "| way | requests | wall ms per read (median) | server CPU ms per read | bytes |",
        file=out,
    )
    print("|---|---|---|---|---|", file=out)
    for way in ways:
        print(
            f"| {way.name} | {way.requests} | {way.wall_median:.1f} | {way.cpu_ms:.1f} "
            f"| {way.bytes:,} |",
            file=out,
        )
    singles = ways[-1]
    for batch in ways[:-1]:
        cpu = f"{singles.cpu_ms / batch.cpu_ms:.1f}x" if batch.cpu_ms else "n/a (no tick)"
        print(
            f"one per user / {batch.name}: wall {singles.wall_median / batch.wall_median:.1f}x, "
            f"server CPU {cpu}",
            file=out,
        )


def run(
    *, users: int, rounds: int, repeat: int, database_url: str | None = None, out=sys.stdout
) -> list[Way]:
    settings = {"workers": "1", "log_level": "WARNING"}
    if database_url:
        settings["database_url"] = database_url
    with spawned_server(**settings) as server:
        names = users_with_avatars(server, users)
        ways = measure(server, names, rounds, repeat)
    report(
        ways,
        users=users,
        rounds=rounds,
        database="PostgreSQL" if database_url else "SQLite",
        out=out,
    )
    return ways


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__)
    parser.add_argument("--users", type=int, default=100, help="users in the list (at most 100)")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds")
    parser.add_argument("--repeat", type=int, default=5, help="reads of each way per round")
    add_postgres_option(parser)
    args = parser.parse_args(argv)
    with scratch_postgres(args.postgres_url, "avatar_batch") as url:
        run(users=args.users, rounds=args.rounds, repeat=args.repeat, database_url=url)


if __name__ == "__main__":
    main()
