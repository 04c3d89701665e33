"""Animated GIF, WebP, PNG (and AVIF) in, animated WebP out; the caps checked from headers."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageStat

from app.core.errors import CorruptImage, TooManyFrames, TooManyPixels
from app.imaging.pipeline import PipelineOptions, gif_layout, process_image
from tests.images import assert_clean_webp, encode

COLOURS = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]


def frames_of(data: bytes) -> tuple[list[Image.Image], list[int], int]:
    """Every frame of a WebP, its duration and the loop count, read back with Pillow."""
    frames, durations = [], []
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP"
        loop = image.info.get("loop", 0)
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.load()
            frames.append(image.convert("RGBA"))
            durations.append(image.info.get("duration", 0))
    return frames, durations, loop


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def mean_error(image: Image.Image, colour: tuple[int, ...]) -> float:
    rgb = image.convert("RGB")
    return (
        sum(ImageStat.Stat(ImageChops.difference(rgb, Image.new("RGB", rgb.size, colour))).mean) / 3
    )


def animated_gif(durations=(100, 200, 300), **options) -> bytes:
    frames = [solid(c) for c in COLOURS]
    return encode(
        frames[0],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=list(durations),
        **options,
    )


def test_animated_gif_becomes_animated_webp_with_its_durations_and_loop() -> None:
    result = process_image(animated_gif(loop=0))
    assert result.frames == 3
    for variant in result.variants:
        if variant.name == "still":
            continue
        assert variant.frames == 3, variant.name
        frames, durations, loop = frames_of(variant.data)
        assert durations == [100, 200, 300], variant.name
        assert loop == 0
        for frame, colour in zip(frames, COLOURS, strict=True):
            assert mean_error(frame, colour) < 8, (variant.name, colour)
        assert_clean_webp(variant.data)


def test_animation_offers_a_still_first_frame() -> None:
    result = process_image(animated_gif())
    still = result.variant("still")
    assert still.frames == 1
    assert (still.width, still.height) == (result.variant("thumb").width,) * 2
    frames, _durations, _loop = frames_of(still.data)
    assert len(frames) == 1
    assert mean_error(frames[0], COLOURS[0]) < 8


def test_still_images_have_no_still_variant() -> None:
    result = process_image(encode(solid((1, 2, 3)), "PNG"))
    assert result.frames == 1
    assert "still" not in {v.name for v in result.variants}


@pytest.mark.parametrize(("gif_loop", "webp_loop"), [(None, 1), (0, 0), (2, 3), (65535, 65535)])
def test_gif_loop_count_follows_gif2webp(gif_loop, webp_loop) -> None:
    options = {} if gif_loop is None else {"loop": gif_loop}
    _frames, _durations, loop = frames_of(
        process_image(animated_gif(**options)).variant("original").data
    )
    assert loop == webp_loop


def test_gif_frames_of_zero_or_ten_ms_play_for_100_ms_as_in_browsers() -> None:
    data = animated_gif(durations=(0, 10, 50), loop=0)
    _frames, durations, _loop = frames_of(process_image(data).variant("original").data)
    assert durations == [100, 100, 50]


def test_animated_webp_and_apng_stay_animated() -> None:
    frames = [solid(c).convert("RGBA") for c in COLOURS]
    frames[1].putpixel((0, 0), (0, 0, 0, 0))  # some transparency
    for fmt in ("WEBP", "PNG"):
        data = encode(
            frames[0],
            fmt,
            save_all=True,
            append_images=frames[1:],
            duration=[80, 90, 100],
            loop=3,
        )
        result = process_image(data)
        out, durations, loop = frames_of(result.variant("original").data)
        assert len(out) == 3 and durations == [80, 90, 100] and loop == 3, fmt
        assert out[1].getpixel((0, 0))[3] == 0, fmt
        for frame, colour in zip(out, COLOURS, strict=True):
            assert mean_error(frame.crop((5, 5, 35, 25)), colour) < 8, fmt


def test_transparent_gif_frames_keep_their_alpha() -> None:
    frames = []
    for colour in COLOURS:
        frame = Image.new("P", (20, 20), 0)
        frame.putpalette([0, 0, 0, *colour] + [0] * 762)
        frame.paste(1, (5, 5, 15, 15))
        frames.append(frame)
    data = encode(
        frames[0],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        transparency=0,
        duration=100,
        disposal=2,
    )
    out, _durations, _loop = frames_of(process_image(data).variant("original").data)
    assert len(out) == 3
    for frame, colour in zip(out, COLOURS, strict=True):
        assert frame.getpixel((1, 1))[3] == 0
        assert frame.getpixel((10, 10))[3] == 255
        assert mean_error(frame.crop((6, 6, 14, 14)), colour) < 10


def test_mpo_second_picture_is_not_an_animation() -> None:
    left, right = solid((255, 0, 0), (64, 48)), solid((0, 0, 255), (64, 48))
    data = encode(left, "MPO", save_all=True, append_images=[right])
    result = process_image(data)
    assert result.frames == 1
    assert "still" not in {v.name for v in result.variants}


def test_frame_count_over_the_cap_is_refused_before_decoding() -> None:
    # Frames whose pixel data is garbage: a decode would fail, so refusing with too_many_frames
    # shows the count was checked from the headers first.
    with pytest.raises(TooManyFrames):
        process_image(animated_gif(), PipelineOptions(max_frames=2))
    garbage = gif_with_frames(300, lzw=b"\x02\x05\xff\xff\xff\xff\xff\x00")
    with pytest.raises(TooManyFrames):
        process_image(garbage)


def test_pixels_are_counted_across_all_frames() -> None:
    data = animated_gif()  # 3 frames of 40x30 = 3600 pixels
    with pytest.raises(TooManyPixels):
        process_image(data, PipelineOptions(max_pixels=3599))
    assert process_image(data, PipelineOptions(max_pixels=3600)).frames == 3


def gif_with_frames(count: int, *, lzw: bytes = b"\x02\x02\x44\x01\x00") -> bytes:
    """A 1x1 GIF with ``count`` image descriptors, built by hand."""
    header = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + b"\x00\x00\x00\x00\x01\x00\x01\x00\x00" + lzw
    return header + frame * count + b"\x3b"


def test_gif_frames_are_counted_without_walking_past_the_limit() -> None:
    data = gif_with_frames(100_000)
    assert gif_layout(data, limit=200, blocks=10**6)[0].frames == 201
    assert gif_layout(gif_with_frames(7), limit=200, blocks=10**6)[0] == (7, 7)
    assert gif_layout(b"GIF89a", limit=200, blocks=10**6)[0].frames == 1


def test_a_broken_later_frame_ends_the_animation_there() -> None:
    frames = [solid(c) for c in COLOURS]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    # Cut the file inside the third frame's pixel data.
    third = data.rfind(b"\x2c\x00\x00\x00\x00")
    result = process_image(data[: third + 14])
    assert result.frames == 2
    out, _durations, _loop = frames_of(result.variant("original").data)
    assert all(mean_error(f, c) < 8 for f, c in zip(out, COLOURS[:2], strict=True))


def test_a_broken_first_frame_is_corrupt() -> None:
    data = animated_gif()
    first = data.find(b"\x2c\x00\x00\x00\x00")
    with pytest.raises(CorruptImage):
        process_image(data[: first + 14])
