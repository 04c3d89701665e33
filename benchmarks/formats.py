"""AVIF and WebP settings for the squares, chosen by measurement, and what a derived AVIF costs.

    python -m benchmarks.formats               # photos from the shared corpus (else generated)
    python -m benchmarks.formats --no-http     # without the first-request timing

For each photo, the pipeline stores its original and squares as at upload (today's squares: WebP
q80, method 6). Each square side (400, 256, 128, 64) is then made again from the stored original
and the avatar's crop, as a rendition is, with each candidate setting, and compared with a
reference: the same crop resized with Lanczos and never encoded. SSIM is scikit-image's (on
RGB, 7x7 windows) when installed, else the same formula in numpy.

A setting passes when every square of every photo is at most as many bytes as today's WebP
square and at least as close to the reference (SSIM). The table lists each candidate's bytes
as a share of today's, its worst SSIM margin and how many squares pass; the chosen settings are
the smallest that pass everywhere. Then: a derived 128 px AVIF's cost, in the worker (decode the
original, resize, encode) and as a first request over HTTP against a real server, beside a
second request for the stored one. Figures are ratios against references measured in the same
run. This prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from app.core.variants import AVIF, WEBP
from app.imaging.pipeline import (
    CropBox,
    PipelineOptions,
    derive_square,
    encode_as,
    process_image,
    resample,
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
# Real camera photos of the corpus (people, landscapes, indoor, a night trap camera, HDR).
PHOTOS = (
    "exif-samples/jpg/gps/DSCN0010.jpg",
    "exif-samples/jpg/gps/DSCN0042.jpg",
    "exif-samples/jpg/Reconyx_HC500_Hyperfire.jpg",
    "exif-samples/jpg/exif-org/canon-ixus.jpg",
    "exif-samples/jpg/exif-org/fujifilm-dx10.jpg",
    "exif-samples/jpg/exif-org/nikon-e950.jpg",
    "exif-samples/jpg/tests/11-tests.jpg",
    "exif-samples/jpg/mobile/jolla.jpg",
    "exif-samples/jpg/hdr/canon_hdr_YES.jpg",
    "exif-orientation-examples/Landscape_0.jpg",
)
SIDES = (400, 256, 128, 64)
# (quality, speed, libaom tune): libaom's default tune, then tuned for SSIM.
AVIF_CANDIDATES = (
    (50, 6, "psnr"),
    (60, 6, "psnr"),
    (70, 6, "psnr"),
    (58, 6, "ssim"),
    (60, 6, "ssim"),
    (62, 6, "ssim"),
    (64, 6, "ssim"),
    (60, 4, "ssim"),
)
WEBP_CANDIDATES = ((75, 6), (80, 6), (85, 6))
_DEFAULTS = PipelineOptions()
CHOSEN = f"AVIF q{_DEFAULTS.avif_quality} speed {_DEFAULTS.avif_speed} tune {_DEFAULTS.avif_tune}"


def ssim(reference: Image.Image, candidate: Image.Image) -> float:
    first = np.asarray(reference.convert("RGB"), dtype=np.float64)
    second = np.asarray(candidate.convert("RGB"), dtype=np.float64)
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return _ssim_numpy(first, second)
    return float(structural_similarity(first, second, channel_axis=2, data_range=255.0))


def _ssim_numpy(first: np.ndarray, second: np.ndarray, window: int = 7) -> float:
    """SSIM as scikit-image computes it by default: uniform 7x7 windows, sample covariance."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    count = window * window
    scale = count / (count - 1)

    def mean(values: np.ndarray) -> np.ndarray:
        view = np.lib.stride_tricks.sliding_window_view(values, (window, window), axis=(0, 1))
        return view.mean(axis=(-2, -1))

    mx, my = mean(first), mean(second)
    vx = scale * (mean(first * first) - mx * mx)
    vy = scale * (mean(second * second) - my * my)
    cov = scale * (mean(first * second) - mx * my)
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


@dataclass
class Square:
    photo: str
    side: int
    today_bytes: int
    today_ssim: float
    reference: Image.Image
    original: bytes
    box: CropBox


def photos(corpus: Path) -> list[tuple[str, bytes]]:
    found = [(name, (corpus / name).read_bytes()) for name in PHOTOS if (corpus / name).is_file()]
    if found:
        return found
    from benchmarks.photo import phone_photo

    return [("generated phone photo", phone_photo(2016, 1512))]


def squares_of(name: str, data: bytes) -> list[Square]:
    processed = process_image(data, PipelineOptions(auto_crop="centre"))
    original = processed.variant("original").data
    box = processed.crop
    assert box is not None
    decoded = Image.open(io.BytesIO(original)).convert("RGB")
    region = (box.x, box.y, box.x + box.width, box.y + box.height)
    found = []
    for variant in processed.variants:
        if variant.name == "original" or variant.name == "still":
            continue
        reference = resample(decoded, (variant.width, variant.width), region)
        today = Image.open(io.BytesIO(variant.data)).convert("RGB")
        found.append(
            Square(
                name,
                variant.width,
                len(variant.data),
                ssim(reference, today),
                reference,
                original,
                box,
            )
        )
    return found


@dataclass
class Result:
    label: str
    bytes_share: float  # of today's WebP bytes, all squares together
    worst_margin: float  # the smallest SSIM(candidate) - SSIM(today's WebP)
    passed: int
    total: int
    by_side: dict[int, float]  # bytes share per side
    passed_by_side: dict[int, int]
    ms: float  # median time to derive one square


def evaluate(label: str, squares: Sequence[Square], options: PipelineOptions, fmt: str) -> Result:
    total_new = total_today = 0
    margins, passed, times = [], 0, []
    side_new: dict[int, int] = {}
    side_today: dict[int, int] = {}
    side_passed: dict[int, int] = {}
    for square in squares:
        start = time.perf_counter()
        made = derive_square(
            square.original, square.box, square.side, fmt, still=True, options=options
        )
        times.append((time.perf_counter() - start) * 1000)
        picture = Image.open(io.BytesIO(made.data)).convert("RGB")
        margin = ssim(square.reference, picture) - square.today_ssim
        size = len(made.data)
        margins.append(margin)
        good = size <= square.today_bytes and margin >= 0
        passed += good
        side_passed[square.side] = side_passed.get(square.side, 0) + good
        total_new += size
        total_today += square.today_bytes
        side_new[square.side] = side_new.get(square.side, 0) + size
        side_today[square.side] = side_today.get(square.side, 0) + square.today_bytes
    return Result(
        label,
        total_new / total_today,
        min(margins),
        passed,
        len(squares),
        {side: side_new[side] / side_today[side] for side in sorted(side_new, reverse=True)},
        {side: side_passed[side] for side in sorted(side_passed, reverse=True)},
        statistics.median(times),
    )


def median_ms(func: Callable[[], object], runs: int) -> float:
    func()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def first_request(data: bytes, runs: int, out) -> None:
    """A derived 128 px AVIF over HTTP: the first request (derive, store, answer) beside the
    next one (stored), against a real server with one worker."""
    from benchmarks.server import Client, multipart, spawned_server

    body, content_type = multipart(data)
    firsts, seconds = [], []
    with spawned_server(workers="1") as server:
        for index in range(runs + 1):
            user = f"formats-{index}"
            client = Client(server, user)
            status, _document, _ms = client.upload(body, content_type)
            assert status == 201, status
            connection = client.connection
            timings = []
            for _ in range(2):
                start = time.perf_counter()
                connection.request("GET", f"/avatars/{user}?size=128", headers={"Accept": AVIF})
                response = connection.getresponse()
                response.read()
                timings.append((time.perf_counter() - start) * 1000)
                assert response.status == 200, response.status
            client.close()
            if index:  # the first user warms the worker
                firsts.append(timings[0])
                seconds.append(timings[1])
    first, second = statistics.median(firsts), statistics.median(seconds)
    print(
        f"first request for a derived 128 px AVIF over HTTP: {first:.1f} ms "
        f"(the stored one next: {second:.1f} ms; {first / second:.1f}x), median of {runs}",
        file=out,
    )


def run(
    corpus: Path = CORPUS,
    *,
    http: bool = True,
    runs: int = 9,
    out=sys.stdout,
    pictures: list[tuple[str, bytes]] | None = None,
) -> dict:
    """Print the table and timings; ``pictures`` (name, bytes) instead of the corpus's."""
    pictures = pictures or photos(corpus)
    squares = [square for name, data in pictures for square in squares_of(name, data)]
    print(
        f"{len(pictures)} photos, {len(squares)} squares ({', '.join(map(str, SIDES))} px); "
        f"today: WebP q80 method 6",
        file=out,
    )
    base = PipelineOptions()
    results: dict[str, Result] = {}
    for quality, speed, tune in AVIF_CANDIDATES:
        options = replace(base, avif_quality=quality, avif_speed=speed, avif_tune=tune)
        label = f"AVIF q{quality} speed {speed} tune {tune}"
        results[label] = evaluate(label, squares, options, AVIF)
    for quality, method in WEBP_CANDIDATES:
        options = replace(base, thumbnail_quality=quality, square_method=method)
        label = f"WebP q{quality} method {method}"
        results[label] = evaluate(label, squares, options, WEBP)

    print(
        "| setting | bytes / today's WebP | by side (400, 256, 128, 64) | worst SSIM margin "
        "| squares passing (400, 256, 128, 64) | ms a square |",
        file=out,
    )
    print("|---|---|---|---|---|---|", file=out)
    for result in results.values():
        sides = ", ".join(f"{share:.2f}" for share in result.by_side.values())
        passing = ", ".join(str(count) for count in result.passed_by_side.values())
        print(
            f"| {result.label} | {result.bytes_share:.2f} | {sides} | "
            f"{result.worst_margin:+.4f} | {result.passed}/{result.total} ({passing}) | "
            f"{result.ms:.0f} |",
            file=out,
        )
    chosen = next(r for r in results.values() if r.label == CHOSEN)
    shares = ", ".join(
        f"{side} px {(1 - share) * 100:+.0f}%" for side, share in chosen.by_side.items()
    )
    print(
        f"the service's setting, {CHOSEN}: bytes saved against today's WebP by side: {shares}; "
        f"{chosen.passed}/{chosen.total} squares at most as many bytes at an equal or better SSIM",
        file=out,
    )
    everywhere = [r for r in results.values() if r.passed == r.total and "AVIF" in r.label]
    print(
        "AVIF settings that pass on every square: "
        + (", ".join(r.label for r in everywhere) or "none"),
        file=out,
    )

    name, data = pictures[0]
    square = next(s for s in squares if s.photo == name and s.side == 128)
    options = PipelineOptions()
    avif_ms = median_ms(
        lambda: derive_square(square.original, square.box, 128, AVIF, still=True, options=options),
        runs,
    )
    webp_ms = median_ms(
        lambda: derive_square(square.original, square.box, 128, WEBP, still=True, options=options),
        runs,
    )
    encode_ms = median_ms(lambda: encode_as([square.reference], AVIF, options), runs)
    print(
        f"derived 128 px AVIF in the worker ({name}, {square.box.width} px crop of its stored "
        f"original): {avif_ms:.1f} ms, of which the AVIF encode {encode_ms:.1f} ms; the same as "
        f"WebP: {webp_ms:.1f} ms (AVIF / WebP {avif_ms / webp_ms:.2f})",
        file=out,
    )
    if http:
        first_request(data, runs, out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--no-http", action="store_true", help="skip the first-request timing")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    run(args.corpus, http=not args.no_http, runs=args.runs)


if __name__ == "__main__":
    main()
