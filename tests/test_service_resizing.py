"""Uploads of other sizes brought to the model's: enlargements undone, the rest resized whole."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from test_service_images import decode, encode, halves, photo

from service.resizing import MAX_ENLARGEMENT, undo_enlargement


def round_trip_error(
    original: Image.Image, size: tuple[int, int], interpolator, format="PNG", **params
) -> float:
    """Mean absolute difference, out of 255, between an image and its enlarged copy decoded."""
    enlarged = encode(original.resize(size, interpolator), format, **params)
    return float(np.abs(decode(enlarged).astype(int) - np.asarray(original)).mean())


@pytest.mark.parametrize("factor", [2, 2.5, 3, 4, 5.3, 8])
@pytest.mark.parametrize("interpolator", [Image.NEAREST, Image.BILINEAR, Image.BICUBIC, Image.LANCZOS])
def test_enlargements_are_undone(factor, interpolator):
    side = int(32 * factor)
    # Measured about 0.05; a downscaling filter, even Lanczos, leaves 1.5 to 3.5 here.
    assert round_trip_error(photo(seed=int(factor * 10)), (side, side), interpolator) < 0.5


def test_uneven_enlargements_are_undone():
    assert round_trip_error(photo(seed=7), (64, 128), Image.BICUBIC) < 0.5
    assert round_trip_error(photo(seed=8), (256, 40), Image.NEAREST) < 0.5


def lanczos_error(original: Image.Image, enlarged: bytes) -> float:
    shrunk = Image.open(io.BytesIO(enlarged)).convert("RGB").resize(original.size, Image.LANCZOS)
    return float(np.abs(np.asarray(shrunk).astype(int) - np.asarray(original)).mean())


@pytest.mark.parametrize("factor", [4, 8])
def test_compressed_enlargements_come_back_closer_than_lanczos_would(factor):
    original = photo(seed=9)
    enlarged = encode(original.resize((32 * factor,) * 2, Image.BICUBIC), "JPEG", quality=90)
    error = float(np.abs(decode(enlarged).astype(int) - np.asarray(original)).mean())
    assert error < 0.85 * lanczos_error(original, enlarged)


def test_photos_that_are_not_enlargements_are_resized_with_lanczos():
    # Detail at every scale, like a photo: no 32x32 image enlarges to it.
    noise = np.random.default_rng(0).integers(-40, 41, (256, 256, 3))
    scene = Image.fromarray(
        np.clip(np.asarray(photo(seed=1, size=(256, 256))) + noise, 0, 255).astype(np.uint8)
    )
    for size in [(256, 256), (100, 60), (1000, 700), (20, 20)]:
        image = scene.resize(size, Image.LANCZOS)
        if min(size) >= 32 and max(size) <= 32 * MAX_ENLARGEMENT:
            assert undo_enlargement(np.asarray(image), (32, 32)) is None
        expected = np.asarray(image.resize((32, 32), Image.LANCZOS, reducing_gap=3.0))
        assert np.array_equal(decode(encode(image, "PNG")), expected)


def test_beyond_the_enlargement_range_lanczos_still_does_well():
    side = 32 * (MAX_ENLARGEMENT + 2)
    assert round_trip_error(photo(seed=4), (side, side), Image.BICUBIC) < 2.5


def test_whole_frame_is_squashed_not_cropped():
    # A wide image keeps both ends: a centre crop would lose most of the red and blue.
    pixels = decode(encode(halves((200, 50)), "PNG")).astype(int)
    red, blue = pixels[:, :13], pixels[:, -13:]  # away from the edge, where the filter rings
    assert (abs(red - (255, 0, 0)) <= 2).all() and (abs(blue - (0, 0, 255)) <= 2).all()


def test_non_square_model_sizes_are_width_by_height():
    pixels = decode(encode(halves((48, 32), vertical_split=False), "PNG"), size=(24, 16))
    assert pixels.shape == (16, 24, 3)
    top, bottom = pixels[:6].astype(int), pixels[-6:].astype(int)
    assert (abs(top - (255, 0, 0)) <= 2).all() and (abs(bottom - (0, 0, 255)) <= 2).all()


def test_large_jpeg_is_reduced_quickly_and_well():
    original = photo(seed=3)
    big = encode(original.resize((2000, 2000), Image.BICUBIC), "JPEG", quality=95)
    started = time.perf_counter()
    pixels = decode(big)
    assert time.perf_counter() - started < 1.0
    assert np.abs(pixels.astype(int) - np.asarray(original)).mean() < 6
