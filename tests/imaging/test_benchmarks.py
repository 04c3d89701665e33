"""The benchmark scripts run end to end on a tiny photo. They measure; these only show they work
(the figures are in the README, from full-size runs)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from benchmarks import formats, load, pipeline, pool
from benchmarks.photo import phone_photo
from benchmarks.server import spawned_server


def test_phone_photo_is_sideways_with_gps_and_the_same_every_time() -> None:
    data = phone_photo(320, 240)
    assert data == phone_photo(320, 240)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (320, 240)
        exif = image.getexif()
        assert exif[0x0112] == 6
        assert exif.get_ifd(0x8825)


def test_pipeline_benchmark_prints_every_row_and_ratio() -> None:
    out = io.StringIO()
    results = pipeline.run(
        size=(320, 240), runs=1, seed_runs=1, http=False, isolate=False, show_wins=True, out=out
    )
    text = out.getvalue()
    assert {"ours", "seed"} <= set(results)
    assert results["ours"].original_size == (240, 320)  # upright
    assert results["seed"].original_size == (320, 240)  # the seed does not rotate
    assert "seed / ours" in text and "Each win alone" in text and "WebP method" in text
    assert "the original on a second thread meanwhile" in text


def test_seed_pipeline_is_the_tutorial_one() -> None:
    original, thumb, size = pipeline.seed(phone_photo(320, 240))
    assert size == (320, 240)
    with Image.open(io.BytesIO(thumb)) as image:
        assert max(image.size) <= 400


@pytest.mark.server
@pytest.mark.long
def test_whole_upload_and_load_run_against_a_real_server() -> None:
    out = io.StringIO()
    with spawned_server(workers="2") as server:
        phases = load.run(server, clients=[1, 2], uploads=2, size=(320, 240), out=out)
    assert [p.statuses[201] for p in phases] == [2, 4]
    assert all(p.health_ms and p.hwm_mb for p in phases)
    assert "throughput with 2 clients / 1 client" in out.getvalue()


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert load.percentile(values, 50) == 50
    assert load.percentile(values, 99) == 99
    assert load.percentile([7.0], 99) == 7


async def test_pool_benchmark_compares_threads_and_processes(capsys) -> None:
    await pool.main(workers=2, rounds=1, jobs=2, size=(320, 240))
    text = capsys.readouterr().out
    for row in ("threads:", "processes:", "processes / threads:", "the pool adds", "deadline:"):
        assert row in text, text


@pytest.mark.long
def test_formats_benchmark_prints_every_setting_and_the_chosen_one() -> None:
    out = io.StringIO()
    small = [("small phone photo", phone_photo(480, 360))]
    results = formats.run(http=False, runs=1, out=out, pictures=small)
    text = out.getvalue()
    assert formats.CHOSEN in results and "WebP q80 method 6" in results
    assert all(result.total == 4 for result in results.values())  # 400, 256, 128, 64 px
    assert "the service's setting" in text and "derived 128 px AVIF in the worker" in text
