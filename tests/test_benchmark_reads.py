"""benchmarks/reads.py runs end to end in reduced mode (a few users, short loads, the slower
Python load generator): this only shows it works, with one server process and with two of the
service and of the minimal app (the figures are in the README, from full runs)."""

from __future__ import annotations

import io

import pytest

from benchmarks import reads
from benchmarks.nginx import nginx_binary
from tests.conftest import missing


@pytest.mark.server
@pytest.mark.long
@pytest.mark.parametrize("processes", [1, 2])
def test_reads_benchmark_loads_every_read_and_prints_the_ratios(processes: int) -> None:
    if nginx_binary() is None:
        missing("nginx is not installed (make install-nginx)")
    out = io.StringIO()
    results = reads.run(
        users=3,
        seconds=0.3,
        connections=4,
        postgres_url=None,
        loader="python",
        rounds=1,
        processes=processes,
        out=out,
    )
    text = out.getvalue()
    assert f"{processes} server process" in text
    for row in ("| document  | service ", "| media     | nginx ", "3 avatars uploaded"):
        assert row in text, text
    ratios = results["SQLite"]
    assert set(ratios) == {
        "document service / minimal app",
        "size=64 service / minimal app",
        "size=64 service / nginx (/media)",
        "media service / nginx",
    }
    assert all(ratio > 0 for ratio in ratios.values())
    # Every load answered without an error (the errors column is the sixth).
    rows = [line for line in text.splitlines() if line.startswith("| ") and "req/s" not in line]
    assert len(rows) == 7 and all(row.split("|")[6].strip() == "0" for row in rows)
