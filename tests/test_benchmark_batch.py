"""benchmarks/batch.py runs end to end in reduced mode (a few users, few rounds): it measures,
this only shows it works and that its reads get what the routes answer (the figures are in the
README, from full runs)."""

from __future__ import annotations

import io

import pytest

from benchmarks import batch


@pytest.mark.server
def test_batch_benchmark_reads_every_document_each_way_and_prints_the_ratios() -> None:
    out = io.StringIO()
    ways = batch.run(users=3, rounds=2, repeat=1, out=out)
    text = out.getvalue()
    assert [way.requests for way in ways] == [1, 1, 1, 3]
    batch_get, batch_post, revalidated, singles = ways
    assert batch_get.bytes == batch_post.bytes > singles.bytes > 0  # three documents each
    assert revalidated.bytes == 0  # 304
    assert all(way.reads == 2 and len(way.wall_ms) == 2 for way in ways)
    assert text.count("one per user / ") == 3 and "server CPU" in text
