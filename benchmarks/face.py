"""The automatic crop, measured: accuracy on the labelled set, and what it costs an upload.

    python -m benchmarks.face                 # accuracy, cost per 12 MP photo, whole upload
    python -m benchmarks.face --candidates    # the frontal cascades: LBP and the Haar ones
    python -m benchmarks.face --seed 16 --no-http   # another draw of the labelled set
    python -m benchmarks.face --per-scale 6 --no-http  # twice as many composites

Accuracy (benchmarks/faceset.py: portraits, composites with known faces, pictures without a
face), through the pipeline's own steps (decode, EXIF orientation, colour, proposal):

* face pictures: the whole face box inside the proposed square (the one the 400 px square is
  cut from); target >= 95%
* pictures without a face: a face crop proposed; target <= 5%

Cost, on the 12 MP phone photo of benchmarks/photo.py (a picture without a face: the dearest
case, every step runs): the proposal alone (downscaled copy, LBP pass, profiles, content
fallback) in CPU time of its thread, target <= 25 ms; the pipeline and the
whole HTTP upload with AVATAR_AUTO_CROP=face against centre, target <= 10% added. Runs of the
two settings alternate, so a busy machine slows both alike. This prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from benchmarks.faceset import PER_SCALE, Sample, samples
from benchmarks.photo import phone_photo

FACE_TARGET = 0.95
NO_FACE_TARGET = 0.05
COST_TARGET_MS = 25.0
UPLOAD_TARGET = 0.10


@dataclass
class Accuracy:
    faces: int = 0
    inside: int = 0
    no_face: int = 0
    face_crops: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    misses: list[str] = field(default_factory=list)
    false_faces: list[str] = field(default_factory=list)

    @property
    def inside_rate(self) -> float:
        return self.inside / self.faces if self.faces else 0.0

    @property
    def false_rate(self) -> float:
        return self.face_crops / self.no_face if self.no_face else 0.0


def upright(data: bytes):
    """The decoded, upright, sRGB first frame and the picture's upright full size: the
    pipeline's steps 1-7, as an upload runs them."""
    from app.imaging import pipeline as p

    options = p.PipelineOptions()
    source_format = p.sniff(data, options.formats)
    image = p.open_image(data, source_format)
    full_size = image.size
    p.draft(image, None, options)
    p.decode(image)
    orientation, removed = p.inspect(image)
    first = p.to_srgb(p.orient(image, orientation), removed)
    return first, full_size, orientation


def propose(data: bytes, mode: str = "face"):
    """The square (upright pixels of the full picture) and its source, as an upload gets it."""
    from app.imaging.pipeline import PipelineOptions, choose_square

    first, full_size, orientation = upright(data)
    options = PipelineOptions(auto_crop=mode)  # type: ignore[arg-type]
    return choose_square(first, full_size, orientation, None, options)


def inside(face: tuple[int, int, int, int], square) -> bool:
    x, y, w, h = face
    return (
        square.x <= x
        and square.y <= y
        and x + w <= square.x + square.width
        and y + h <= square.y + square.height
    )


def accuracy(items: Iterable[Sample], mode: str = "face") -> Accuracy:
    result = Accuracy()
    for sample in items:
        square, source = propose(sample.data, mode)
        result.sources[f"{sample.kind}:{source}"] += 1
        if sample.face is not None:
            result.faces += 1
            if inside(sample.face, square):
                result.inside += 1
            else:
                result.misses.append(f"{sample.name} ({source})")
        else:
            result.no_face += 1
            if source == "face":
                result.face_crops += 1
                result.false_faces.append(sample.name)
    return result


def _median_ms(
    func: Callable[[], object], runs: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    func()
    times = []
    for _ in range(runs):
        start = clock()
        func()
        times.append((clock() - start) * 1000)
    return statistics.median(times)


def _alternating_ms(
    funcs: list[Callable[[], object]], runs: int, clock: Callable[[], float]
) -> list[float]:
    """The median ms of each of ``funcs``, run in turn, so that a busy machine slows each
    alike."""
    times: list[list[float]] = [[] for _ in funcs]
    for func in funcs:
        func()
    for _ in range(runs):
        for func, measured in zip(funcs, times, strict=True):
            start = clock()
            func()
            measured.append((clock() - start) * 1000)
    return [statistics.median(measured) for measured in times]


def cost(data: bytes, runs: int) -> list[str]:
    from app.imaging.autocrop import propose_square
    from app.imaging.pipeline import PipelineOptions, process_image

    first, _full, _orientation = upright(data)
    # CPU time of this thread: what the work costs, however busy the machine is.
    cpu = time.thread_time
    decode_ms = _median_ms(lambda: upright(data), runs, cpu)
    face_ms = _median_ms(lambda: propose_square(first, "face"), runs * 3, cpu)
    content_ms = _median_ms(lambda: propose_square(first, "content"), runs * 3, cpu)
    centre_ms = _median_ms(lambda: propose_square(first, "centre"), runs * 3, cpu)
    on, off = PipelineOptions(auto_crop="face"), PipelineOptions(auto_crop="centre")
    # The pipeline releases the GIL into Pillow's and OpenCV's own code on this thread only:
    # its thread CPU time is the work done.
    with_face, without = _alternating_ms(
        [lambda: process_image(data, on), lambda: process_image(data, off)], runs, cpu
    )
    return [
        f"  decoded upright picture: {first.width}x{first.height}; CPU ms of one thread:",
        f"  decode to upright (reference)     {decode_ms:8.1f} ms",
        f"  proposal, face mode (+ content)   {face_ms:8.1f} ms   (target <= {COST_TARGET_MS:.0f})",
        f"  proposal, content mode            {content_ms:8.1f} ms",
        f"  proposal, centre mode             {centre_ms:8.1f} ms",
        f"  pipeline, AVATAR_AUTO_CROP=face   {with_face:8.1f} ms",
        f"  pipeline, AVATAR_AUTO_CROP=centre {without:8.1f} ms",
        f"  added to the pipeline             {(with_face / without - 1) * 100:7.1f} %",
    ]


def _tree_cpu_ms(pid: int) -> float:
    """User + system CPU time of a process and every process under it, all their threads, in
    ms (Linux /proc): the server, its forkserver and the image worker processes."""
    import os
    from pathlib import Path

    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # ended meanwhile
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree = {pid}
    for _ in range(4):  # server -> forkserver -> workers
        tree |= {child for child, (parent, _cpu) in stats.items() if parent in tree}
    ticks = sum(stats[p][1] for p in tree if p in stats)
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def upload_cost(data: bytes, runs: int) -> list[str]:
    """The whole HTTP upload against two real servers, one with each setting, side by side:
    uploads alternate between them, so a busy machine slows both alike. Wall-clock ms (one
    client, one upload after another) and the CPU ms per upload of the server and its image
    worker processes (HTTP, pipeline, storage, database)."""
    from benchmarks.server import Client, multipart, spawned_server

    body, content_type = multipart(data)
    settings = ("face", "centre")
    times: dict[str, list[float]] = {setting: [] for setting in settings}
    cpu: dict[str, float] = dict.fromkeys(settings, 0.0)
    with contextlib.ExitStack() as stack:
        clients = {}
        for setting in settings:
            server = stack.enter_context(spawned_server(auto_crop=setting))
            clients[setting] = (server, Client(server, "bench-user"))
            stack.callback(clients[setting][1].close)
        # Warm-up: each worker process loads its own cascades on its first upload.
        for _ in range(4):
            for _server, client in clients.values():
                client.upload(body, content_type)
        for _ in range(runs):
            for setting, (server, client) in clients.items():
                assert server.pid is not None
                before = _tree_cpu_ms(server.pid)
                status, document, ms = client.upload(body, content_type)
                cpu[setting] += _tree_cpu_ms(server.pid) - before
                assert status == 201, document
                times[setting].append(ms)
    face_ms, centre_ms = (statistics.median(times[s]) for s in settings)
    face_cpu, centre_cpu = (cpu[s] / runs for s in settings)
    return [
        f"  whole upload (HTTP), face       {face_ms:8.1f} ms   server CPU {face_cpu:7.1f} ms",
        f"  whole upload (HTTP), centre     {centre_ms:8.1f} ms   server CPU {centre_cpu:7.1f} ms",
        f"  added to the whole upload, CPU    {(face_cpu / centre_cpu - 1) * 100:7.1f} %"
        f"   (target <= {UPLOAD_TARGET * 100:.0f})",
        f"  added to the whole upload, wall   {(face_ms / centre_ms - 1) * 100:7.1f} %",
    ]


def candidates(items: list[Sample], runs: int) -> list[str]:
    """The frontal face cascades, alone (no confirmation, no profiles, no content fallback), on
    the detector's copy: faces found (the largest detection's centre inside the true face),
    pictures without a face where one was found, and the detection time on the 12 MP photo's
    copy (CPU time of this thread)."""
    import cv2
    import numpy as np

    from app.imaging import face as detector

    def grey_copy(image):
        small = detector.small_copy(image, detector.DETECT_SIDE, detector.DETECT_LONG)
        return cv2.equalizeHist(np.asarray(small.convert("L"))), small.width / image.width

    copies = []
    for sample in items:
        first, _full, _orientation = upright(sample.data)
        copies.append((sample, *grey_copy(first)))
    photo, _full, _orientation = upright(phone_photo())
    photo_grey, _factor = grey_copy(photo)
    lines = ["  cascade                              found   false   ms (12 MP copy)"]
    names = [
        detector.LBP,
        *(f"haarcascade_frontalface_{n}.xml" for n in ("default", "alt", "alt2", "alt_tree")),
    ]
    for name in names:
        cascade = detector.classifier(name)
        window = detector.LBP_WINDOW if name == detector.LBP else detector.WINDOW

        def detect(grey, cascade=cascade, window=window):
            return cascade.detectMultiScale(
                grey,
                scaleFactor=detector.LBP_STEP,
                minNeighbors=detector.LBP_NEIGHBOURS,
                minSize=(window, window),
            )

        found = false = faces = empty = 0
        for sample, grey, factor in copies:
            boxes = detect(grey)
            if sample.face is None:
                empty += 1
                false += len(boxes) > 0
                continue
            faces += 1
            if len(boxes):
                x, y, w, h = max(boxes, key=lambda b: b[2] * b[3]) / factor
                fx, fy, fw, fh = sample.face
                found += fx <= x + w / 2 <= fx + fw and fy <= y + h / 2 <= fy + fh
        ms = _median_ms(lambda d=detect: d(photo_grey), runs * 3, time.thread_time)
        lines.append(
            f"  {name.removesuffix('.xml'):<36} {found / faces:6.1%}  {false / empty:6.1%}"
            f"   {ms:6.1f}"
        )
    return lines


def report(result: Accuracy, title: str) -> list[str]:
    lines = [
        f"{title}",
        f"  face inside the square: {result.inside}/{result.faces} = {result.inside_rate:.1%}"
        f"   (target >= {FACE_TARGET:.0%})",
        f"  face crop without a face: {result.face_crops}/{result.no_face} = "
        f"{result.false_rate:.1%}   (target <= {NO_FACE_TARGET:.0%})",
        "  chosen by: " + ", ".join(f"{k} {v}" for k, v in sorted(result.sources.items())),
    ]
    lines += [f"  miss: {name}" for name in result.misses]
    lines += [f"  face crop without a face: {name}" for name in result.false_faces]
    return lines


def main(argv: list[str] | None = None, out=sys.stdout) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement")
    parser.add_argument("--http-runs", type=int, default=20, help="uploads per setting")
    parser.add_argument("--reduced", action="store_true", help="the reduced set (as the test)")
    parser.add_argument("--seed", type=int, default=15, help="another draw of the composites")
    parser.add_argument(
        "--per-scale", type=int, default=PER_SCALE, help="composites of each head at each scale"
    )
    parser.add_argument("--candidates", action="store_true", help="compare the cascades")
    parser.add_argument("--no-http", action="store_true", help="skip the whole-upload rows")
    args = parser.parse_args(argv)
    items = list(samples(reduced=args.reduced, seed=args.seed, per_scale=args.per_scale))
    kinds = Counter(sample.kind for sample in items)
    print("Labelled set: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())), file=out)
    if args.candidates:
        for line in ["", "Detectors (alone):", *candidates(items, args.runs)]:
            print(line, file=out)
        return
    face_items = [s for s in items if s.face is not None]
    print("", file=out)
    for line in report(accuracy(items), "AVATAR_AUTO_CROP=face:"):
        print(line, file=out)
    centre = accuracy(face_items, "centre")
    print(f"  (the centre square alone: {centre.inside_rate:.1%} of the faces inside)", file=out)
    data = phone_photo()
    print("", file=out)
    print("Cost on the 12 MP phone photo (medians):", file=out)
    for line in cost(data, args.runs):
        print(line, file=out)
    if not args.no_http:
        for line in upload_cost(data, args.http_runs):
            print(line, file=out)


if __name__ == "__main__":
    main()
