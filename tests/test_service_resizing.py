"""Uploads of other sizes brought to the model's: enlargements undone, the rest resized whole."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from deployments import offline, serving
from payloads import encode, halves, photo
from PIL import Image, JpegImagePlugin

from service import resizing
from service.images import decode_image
from service.resizing import MAX_ENLARGEMENT, NotBuiltYet, undo_enlargement


def decode(data: bytes, size=(32, 32), **options) -> np.ndarray:
    return decode_image(data, size, 50_000_000, **options)


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
        got = decode(encode(image, "PNG")).astype(int)
        # Exact Lanczos, up to the shortcut of a reducing gap (an integer box reduction first)
        # on large reductions: closer to it than Pillow's bicubic is, and never 3 levels off.
        lanczos, bicubic = (
            np.asarray(image.resize((32, 32), f), dtype=int) for f in (Image.LANCZOS, Image.BICUBIC)
        )
        assert np.abs(got - lanczos).max() <= 2
        assert np.abs(got - lanczos).mean() < np.abs(got - bicubic).mean()


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


def test_large_jpeg_is_decoded_reduced_by_libjpeg_and_resized_well(monkeypatch):
    original = photo(seed=3)
    big = encode(original.resize((2000, 2000), Image.BICUBIC), "JPEG", quality=95)
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(draft(self, mode, size))  # None when libjpeg would not reduce
        return drafts[-1]

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    pixels = decode(big)
    assert len(drafts) == 1 and drafts[0] is not None
    assert drafts[0][1][2:] == (250, 250)  # decoded at 1/8 scale: never 2000x2000 pixels
    assert np.abs(pixels.astype(int) - np.asarray(original)).mean() < 6


def test_undoing_enlargements_can_be_turned_off():
    original = photo(seed=5)
    enlarged = original.resize((96, 96), Image.BICUBIC)
    lanczos = np.asarray(enlarged.resize((32, 32), Image.LANCZOS, reducing_gap=resizing.REDUCING_GAP))
    data = encode(enlarged, "PNG")
    assert np.array_equal(decode(data, undo_enlargements=False), lanczos)
    assert np.abs(decode(data).astype(int) - np.asarray(original)).mean() < 0.5


def test_matrices_not_built_yet_are_reported_instead_of_built_when_asked():
    data = encode(photo(seed=6).resize((77, 77), Image.BILINEAR), "PNG")
    resizing.clear_cache()
    with pytest.raises(NotBuiltYet):
        decode(data, build=False)
    built = decode(data)
    assert np.array_equal(decode(data, build=False), built)


def test_a_small_upload_of_a_new_size_builds_its_matrices_off_the_event_loop(
    shared_models, exports, monkeypatch
):
    enlarged = photo(seed=7).resize((71, 71), Image.BICUBIC)
    data = encode(enlarged, "PNG")
    assert len(data) < 16 * 1024  # small enough to be decoded inline
    builders = []
    build = resizing._build_enlargement

    def spy(*key):
        try:
            builders.append(asyncio.get_running_loop())
        except RuntimeError:
            builders.append(None)  # no event loop in this thread: a decoder thread
        return build(*key)

    monkeypatch.setattr(resizing, "_build_enlargement", spy)
    resizing.clear_cache()
    with serving(shared_models) as client:
        response = client.post("/predict/image", files={"file": data})
    assert response.status_code == 200
    assert builders and not any(builders)
    expected = offline(exports["cifar10"], decode(data)[None])[0]
    assert np.allclose(list(response.json()["probabilities"].values()), expected, atol=1e-5)


def test_the_setting_turns_undoing_off_for_uploads(shared_models, exports):
    enlarged = photo(seed=8).resize((64, 64), Image.BICUBIC)
    data = encode(enlarged, "PNG")
    with serving(shared_models, undo_enlargements=False) as client:
        body = client.post("/predict/image", files={"file": data}).json()
    lanczos, undone = decode(data, undo_enlargements=False), decode(data)
    expected = offline(exports["cifar10"], lanczos[None])[0]
    # The tiny model barely tells the two inputs apart: compare closely enough that it must.
    assert np.allclose(list(body["probabilities"].values()), expected, rtol=0, atol=1e-6)
    assert not np.allclose(offline(exports["cifar10"], undone[None])[0], expected, rtol=0, atol=1e-6)


def saturated(size: tuple[int, int], seed: int) -> Image.Image:
    """Noise with black and white pixels in it: an original whose recovery must reach 0 and 255."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[0, 0], pixels[-1, -1] = 0, 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("interpolator", [Image.NEAREST, Image.BILINEAR])
def test_a_non_square_enlargement_comes_back_bit_for_bit_black_and_white_included(interpolator):
    original = saturated((24, 16), seed=11)
    enlarged = original.resize((72, 48), interpolator)
    recovered = resizing.to_model_size(enlarged, (24, 16))  # undoing is the default
    assert recovered.shape == (16, 24, 3)
    assert np.array_equal(recovered, np.asarray(original))


def test_a_tiny_model_size_enlarged_a_few_times_comes_back():
    original = saturated((4, 3), seed=12)
    assert np.array_equal(resizing.to_model_size(original.resize((12, 9), Image.NEAREST), (4, 3)), original)


def test_enlargements_up_to_max_enlargement_are_undone_and_larger_ones_resized():
    assert MAX_ENLARGEMENT == 8  # documented in service.resizing: "enlarged 2-8x"
    original = saturated((32, 32), seed=13)
    at_most = original.resize((32 * 8, 32 * 8), Image.NEAREST)
    assert np.array_equal(resizing.to_model_size(at_most, (32, 32)), original)
    beyond = original.resize((32 * 9, 32 * 9), Image.NEAREST)
    resized = resizing.to_model_size(beyond, (32, 32)).astype(int)
    # Resized, not undone: nearer exact Lanczos (no reducing gap) than Pillow's bicubic is.
    lanczos, bicubic = (
        np.asarray(beyond.resize((32, 32), f), dtype=int) for f in (Image.LANCZOS, Image.BICUBIC)
    )
    assert np.abs(resized - lanczos).mean() < np.abs(resized - bicubic).mean()
    assert not np.array_equal(resized, original)


def test_an_enlargement_along_one_side_only_is_undone():
    original = saturated((32, 32), seed=15)
    taller = original.resize((32, 96), Image.NEAREST)
    assert np.array_equal(resizing.to_model_size(taller, (32, 32)), original)


def test_not_built_yet_names_both_sizes_width_by_height():
    resizing.clear_cache()
    enlarged = saturated((24, 16), seed=14).resize((50, 35), Image.BICUBIC)
    with pytest.raises(NotBuiltYet, match=r"^50x35 to 24x16$"):
        resizing.to_model_size(enlarged, (24, 16), build=False)


def test_the_matrix_cache_keeps_the_newest_256_entries():
    resizing.clear_cache()
    keys = [(2, enlarged, Image.NEAREST) for enlarged in range(2, 2 + 257)]
    for key in keys:
        resizing.enlargement(*key)
    assert len(resizing._matrices) == 256
    assert (
        keys[0] not in resizing._matrices and keys[1] in resizing._matrices and keys[-1] in resizing._matrices
    )
    resizing.clear_cache()
