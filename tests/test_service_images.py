"""Uploads to model inputs: formats, colour modes, orientation, resizing, and hostile files."""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
from payloads import encode, halves, photo, png_declaring
from PIL import (
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from service.budget import DecodeBudget
from service.errors import status_of
from service.images import (
    ImageTooLarge,
    UndecodableImage,
    UnsupportedImage,
    decode_image,
    decoding_cost,
    reduction,
)
from service.resizing import MAX_ENLARGEMENT, REDUCING_GAP, NotBuiltYet, to_model_size

SIZE = (32, 32)
MAX_PIXELS = 50_000_000


def decode(data: bytes, size=SIZE, max_pixels=MAX_PIXELS) -> np.ndarray:
    return decode_image(data, size, max_pixels)


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "format, params",
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_lossless_formats_at_model_size_arrive_bit_exact(format, params):
    original = photo()
    assert np.array_equal(decode(encode(original, format, **params)), np.asarray(original))


@pytest.mark.parametrize("format", ["JPEG", "GIF", "WEBP"])
def test_lossy_formats_arrive_as_pillow_decodes_them(format):
    data = encode(photo(), format)
    assert np.array_equal(decode(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("data", [b"hello, world\n" * 10, b'{"features": [1, 2, 3, 4]}', bytes(range(256))])
def test_non_images_are_unsupported(data):
    with pytest.raises(UnsupportedImage):
        decode(data)


@pytest.mark.parametrize("format", ["PPM", "PCX", "ICO", "TGA"])
def test_formats_outside_the_list_are_refused_without_trying_their_decoders(format):
    with pytest.raises(UnsupportedImage):
        decode(encode(photo(), format))


def test_empty_file_is_undecodable():
    with pytest.raises(UndecodableImage, match="empty"):
        decode(b"")


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "WEBP", "TIFF"])
def test_truncated_files_are_undecodable_a_400(format):
    data = encode(photo(size=(256, 256)), format)
    with pytest.raises(
        UndecodableImage, match=f"^cannot (decode the {format} image|read the image): "
    ) as refusal:
        decode(data[: len(data) // 2])
    assert status_of(refusal.value) == 400  # the client's bytes are broken, not of a wrong type (415)


def test_corrupt_data_after_a_valid_header_is_undecodable():
    data = bytearray(encode(photo(size=(64, 64)), "PNG"))
    data[60:400] = bytes(340)  # zeroes over the compressed pixels
    with pytest.raises(UndecodableImage):
        decode(bytes(data))


# --- colour modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK"])
def test_other_colour_modes_become_rgb_as_pillow_converts_them(mode):
    image = photo().convert(mode)
    for format in ("TIFF", "JPEG") if mode == "CMYK" else ("PNG", "TIFF"):
        data = encode(image, format)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(decode(data), expected), format


@pytest.mark.parametrize("mode, format", [("I;16", "PNG"), ("I;16", "TIFF"), ("I", "TIFF")])
def test_16_bit_images_are_scaled_not_clipped(mode, format):
    levels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    image = Image.fromarray(levels).convert(mode) if mode == "I" else Image.fromarray(levels)
    pixels = decode(encode(image, format), size=(4, 4))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # gray stays gray


@pytest.mark.parametrize("size", [(2000, 1500), (3000, 150), (150, 3000), (100, 270)])
def test_a_large_image_is_reduced_as_pillow_resizes_it(size):
    image = photo(size=size)
    pixels = decode(encode(image, "PNG")).astype(int)
    resized = np.asarray(image.resize(SIZE, Image.LANCZOS, reducing_gap=REDUCING_GAP)).astype(int)
    difference = np.abs(pixels - resized)
    assert difference.max() <= 8 and difference.mean() <= 1


@pytest.mark.parametrize(
    "size", [(3000, 150), (150, 3000), (100, 270), (4100, 1000), (257, 257), (3000, 50), (50, 3000)]
)
def test_a_large_image_is_box_reduced_as_far_as_the_reducing_gap_allows_and_no_further(size):
    factor = reduction(size, SIZE)
    kept = [side // f for side, f in zip(size, factor, strict=True)]
    enough = REDUCING_GAP * max(SIZE)
    assert all(k >= min(side, enough) for k, side in zip(kept, size, strict=True))  # never below the gap
    assert all(side // (f + 1) < enough for side, f in zip(size, factor, strict=True))  # as far as it allows


@pytest.mark.parametrize("side, drafted", [(MAX_ENLARGEMENT * 32, False), (MAX_ENLARGEMENT * 32 + 1, True)])
def test_a_jpeg_is_decoded_whole_while_it_may_be_an_enlargement(monkeypatch, side, drafted):
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: drafts.append(a) or draft(self, *a)
    )
    decode(encode(photo(size=(side, side)), "JPEG"))
    assert bool(drafts) == drafted


# Pairs of modes whose strips and results cost alike: only the frame's bytes a pixel differ
# (4 and 2 for 32- and 16-bit levels, 4 and 1 for RGBA and 8-bit gray).
@pytest.mark.parametrize("wide, narrow", [("I", "I;16"), ("RGBA", "L")])
def test_the_decoding_cost_counts_a_frame_in_the_bytes_pillow_stores_it_in(wide, narrow):
    size = (1000, 1000)
    frames = {mode: Image.new(mode, size) for mode in (wide, narrow)}
    cost = {mode: decoding_cost(frame, size, (1, 1)) for mode, frame in frames.items()}
    stored = {mode: len(frame.tobytes()) for mode, frame in frames.items()}
    assert cost[wide] - cost[narrow] == stored[wide] - stored[narrow]


@pytest.mark.parametrize(
    "mode, size",
    # Several strips, blocks that are not square (31x15, ...), images reduced by (1, 2) and (2, 1), and a
    # panorama wider than a strip (a strip of one row).
    [
        ("L", (3000, 1500)),
        ("P", (1500, 3000)),
        ("RGBA", (2500, 1700)),
        ("RGB", (1700, 2500)),
        ("RGB", (100, 270)),
        ("RGB", (270, 100)),
        ("L", (1_100_000, 2)),
    ],
)
def test_converting_a_strip_at_a_time_gives_what_converting_the_whole_image_would(mode, size):
    image = photo(size=size).convert(mode)
    factor = reduction(size, SIZE)
    whole = image.convert("RGBA" if mode == "RGBA" else "RGB")
    if mode == "RGBA":
        whole = Image.alpha_composite(Image.new("RGBA", size, "white"), whole).convert("RGB")
    expected = to_model_size(whole.reduce(factor), SIZE)
    assert np.array_equal(decode(encode(image, "PNG")), expected)


def test_the_decoding_cost_counts_the_reduced_result_at_its_size():
    size = (3000, 1500)
    frame = Image.new("L", size)
    # Factors alike in their rows, so the strips are alike: only the reduced result differs.
    finer, coarser = (31, 15), (62, 15)
    pixels = {f: math.prod(frame.reduce(f).size) for f in (finer, coarser)}
    rgb_bytes = 4  # Pillow holds an RGB image in 4 bytes a pixel
    difference = decoding_cost(frame, size, finer) - decoding_cost(frame, size, coarser)
    assert difference == rgb_bytes * (pixels[finer] - pixels[coarser])


def test_only_a_progressive_jpeg_is_costed_its_coefficients():
    def cost(data):
        image = Image.open(io.BytesIO(data))
        return decoding_cost(image, image.size, (1, 1))

    image = photo(size=(1000, 800))
    baseline, progressive = encode(image, "JPEG"), encode(image, "JPEG", progressive=True)
    coefficients = 1000 * 800 * 2 * 3 // 2  # 2 bytes each; 4:2:0 subsampling: 1 + 1/4 + 1/4
    assert cost(progressive) - cost(baseline) == coefficients


def test_every_16_bit_level_becomes_the_nearest_8_bit_one():
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    pixels = decode(encode(Image.fromarray(levels), "PNG"), size=(256, 256))
    nearest = np.round(levels / (65535 / 255))  # no level is halfway: 65535 / 255 = 257
    assert np.array_equal(pixels[..., 1], nearest)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # opaque red
    rgba[:, 16:24] = (255, 0, 0, 0)  # transparent: white shows through
    rgba[:, 24:] = (0, 0, 0, 128)  # half-transparent black: mid gray
    pixels = decode(encode(Image.fromarray(rgba), "PNG")).astype(int)
    assert (pixels[:, :16] == (255, 0, 0)).all()
    assert (pixels[:, 16:24] == 255).all()
    assert (abs(pixels[:, 24:] - 127) <= 1).all()


@pytest.mark.parametrize("mode, format", [("LA", "PNG"), ("RGBA", "PNG"), ("RGBA", "WEBP"), ("RGBA", "TIFF")])
def test_every_mode_with_alpha_is_composited(mode, format):
    image = Image.new("RGBA", SIZE, (0, 0, 0, 0)).convert(mode)  # fully transparent
    params = {"lossless": True} if format == "WEBP" else {}
    assert (decode(encode(image, format, **params)) == 255).all()


def test_palette_transparency_is_composited():
    image = Image.new("P", SIZE, 0)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.paste(1, (0, 0, 16, 32))
    pixels = decode(encode(image, "GIF", transparency=0))
    assert (pixels[:, :16] == (10, 20, 30)).all()
    assert (pixels[:, 16:] == 255).all()


def test_opaque_rgba_at_model_size_arrives_bit_exact():
    original = photo()
    assert np.array_equal(decode(encode(original.convert("RGBA"), "PNG")), np.asarray(original))


# --- orientation ----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation, top", [(1, None), (6, "red"), (8, "blue"), (3, None)])
def test_exif_orientation_is_applied(orientation, top):
    # Stored wide: red left, blue right. Orientation 6 means "rotate 90 clockwise to view",
    # which brings the left edge to the top; 8 is the other way round.
    image = halves((64, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = decode(encode(image, "JPEG", exif=exif, quality=95)).astype(int)
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])

    def near(region, colour):
        return np.abs(region.mean((0, 1)) - colour).max() < 40

    if top is None:  # upright or upside down: still split left/right
        left, right = (red, blue) if orientation == 1 else (blue, red)
        assert near(pixels[:, :12], left) and near(pixels[:, -12:], right)
    else:
        first, second = (red, blue) if top == "red" else (blue, red)
        assert near(pixels[:12], first) and near(pixels[-12:], second)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_upright_as_pillow_turns_it(orientation):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    data = encode(photo(seed=orientation), "PNG", exif=exif)  # lossless: compared bit for bit
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert np.array_equal(decode(data), np.asarray(upright.convert("RGB")))


@pytest.mark.parametrize("size, inline", [((512, 512), True), ((513, 512), False)])
def test_a_file_of_up_to_512x512_pixels_may_be_decoded_on_the_event_loop(size, inline):
    data = encode(photo(size=size), "PNG")
    built = decode_image(data, SIZE, MAX_PIXELS, undo_enlargements=False)  # its matrices built
    options = {"undo_enlargements": False, "build": False}
    on_the_loop = functools.partial(decode_image, data, SIZE, MAX_PIXELS, **options)
    if inline:
        assert np.array_equal(on_the_loop(), built)
    else:
        with pytest.raises(NotBuiltYet, match=r"^513x512 is decoded off the event loop$"):
            on_the_loop()


# --- hostile files --------------------------------------------------------------------------


def test_huge_declared_canvas_is_refused_from_the_header(monkeypatch):
    def no_decoding(image):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLarge):  # beyond Pillow's own bomb limit
        decode(png_declaring(50_000, 50_000))
    with pytest.raises(ImageTooLarge, match="5000x5000"):  # within it, beyond the configured cap
        decode(png_declaring(5_000, 5_000), max_pixels=1_000_000)


def test_an_image_over_the_pixel_cap_is_refused_naming_its_size_its_pixels_and_the_cap():
    message = r"^4000x2000 image: 8,000,000 pixels, more than the 7,999,999 allowed \(MAX_IMAGE_PIXELS\)$"
    with pytest.raises(ImageTooLarge, match=message):
        decode(png_declaring(4_000, 2_000), max_pixels=7_999_999)
    assert decode(encode(photo(size=(100, 20)), "PNG"), max_pixels=2_000).shape == (
        32,
        32,
        3,
    )  # the cap itself


def test_a_small_file_decoded_on_the_event_loop_never_waits_for_the_budget():
    # No wait allowed: a decode that asked for any of the budget would be DecoderBusy at once.
    budget = DecodeBudget(16 * 2**20, wait_s=0, max_request_pixels=MAX_PIXELS)
    data = encode(photo(), "PNG")
    decode_image(data, SIZE, MAX_PIXELS)  # its matrices built
    with budget.holding(budget.capacity):  # other uploads hold all of it
        pixels = decode_image(data, SIZE, MAX_PIXELS, budget.for_request(), build=False)
        assert pixels.shape == (32, 32, 3)


def test_pixel_cap_is_the_configured_one():
    data = encode(photo(size=(100, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match="100x100"):
        decode(data, max_pixels=9_999)
    assert decode(data, max_pixels=10_000).shape == (32, 32, 3)


MULTI_FRAME = {
    "GIF": GifImagePlugin.GifImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}


@pytest.mark.parametrize("format", MULTI_FRAME)
def test_only_the_first_frame_of_many_is_decoded(format, monkeypatch):
    plugin, frames_visited = MULTI_FRAME[format], set()
    seek = plugin._seek  # every frame change (seek, n_frames, ImageSequence) goes through it

    def spy(self, frame, *args):
        frames_visited.add(frame)
        return seek(self, frame, *args)

    frames = [Image.new("RGB", SIZE, (i % 256, 0, 0)) for i in range(1, 600)]
    data = encode(
        frames[0],
        format,
        save_all=True,
        append_images=frames[1:],
        **({"lossless": True} if format == "WEBP" else {}),
    )
    monkeypatch.setattr(plugin, "_seek", spy)
    pixels = decode(data)
    assert frames_visited <= {0}
    assert (pixels == (1, 0, 0)).all()
