"""Uploaded image bytes to a model input: an [H, W, 3] uint8 RGB array of the model's size.

* Formats: JPEG, PNG, GIF, BMP, WebP and TIFF, and only their decoders are tried, which keeps
  Pillow's many other parsers away from untrusted bytes. Multi-frame files give their first
  frame; nothing else is decoded.
* Size: the pixel count is checked from the header, before any decoding, so a small file
  declaring a huge canvas costs nothing. JPEGs too large to be enlargements of the model's
  input (see `service.resizing`) are decoded at 1/2 to 1/8 scale by libjpeg (draft mode),
  fast and itself an antialiased reduction, down to REDUCING_GAP times the model's size.
* Orientation: EXIF orientation is applied, so a phone photo arrives upright.
* Colour: grayscale, palette, CMYK and 16-bit images become RGB; 16-bit values are scaled
  (Pillow's own conversion would clip them at 255); transparency is composited on white.
* Resizing: to the model's input size, by `service.resizing`.
"""

from __future__ import annotations

import base64
import io
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from service.resizing import MAX_ENLARGEMENT, REDUCING_GAP, NotBuiltYet, to_model_size

if TYPE_CHECKING:
    from service.budget import RequestBudget

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# Pillow guards against decompression bombs with a process-wide limit of its own (refusing over
# about 179 M pixels, with its own message). Every image here is checked against the service's
# limit (MAX_IMAGE_PIXELS) from its header before anything is decoded, so that one applies
# alone: lower or higher than Pillow's, and with the service's message.
Image.MAX_IMAGE_PIXELS = None

# Larger files are decoded on a decoder thread, never on the event loop (a 512x512 PNG: ~2 ms).
INLINE_PIXELS = 512 * 512
# Conversions to RGB run on strips of about this many pixels, each copied at most a few times
# (16- and 32-bit levels as int64 are the widest: measured 40 MB for a strip of 32-bit ones;
# compositing transparency makes five 4-byte copies).
STRIP_PIXELS = 1 << 20
# Decoders that hold more than Pillow's frame buffer while they decode, as multiples of it:
# Pillow's WebP decoder goes through libwebp's animation decoder (RGBA canvases) and copies
# (measured: a 7000x7000 WebP peaks at 756 MiB, 16 bytes a pixel, for a 196 MB frame).
DECODER_COPIES = {"WEBP": 4}
# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageRejected(ValueError):
    """An upload that cannot become a model input."""


class UndecodableImage(ImageRejected):
    """Empty, truncated or corrupt."""


class UnsupportedImage(ImageRejected):
    """Not an image in one of the accepted formats."""


class ImageTooLarge(ImageRejected):
    """More pixels than allowed."""


def decode_image(
    data: bytes,
    size: tuple[int, int],
    max_pixels: int,
    budget: RequestBudget | None = None,
    undo_enlargements: bool = True,
    build: bool = True,
) -> np.ndarray:
    """The image in `data` as uint8 RGB pixels, `size` = (width, height), or ImageRejected.
    `budget`: what this request may still spend (service.budget; None: unbounded).
    `undo_enlargements` and `build`: see `service.resizing.to_model_size`; with `build=False`
    (on the event loop) a file of more than INLINE_PIXELS raises NotBuiltYet as well."""
    if not data:
        raise UndecodableImage("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImage(
            f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except Exception as error:  # a corrupt header can fail inside any of the format parsers
        raise UndecodableImage(f"cannot read the image: {error}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"{width}x{height} image: {width * height:,} pixels, more than the {max_pixels:,} allowed"
                " (MAX_IMAGE_PIXELS)"
            )
        factor = (1, 1)
        if max(image.size) > MAX_ENLARGEMENT * max(size):  # too large to be an enlargement
            image.draft(None, (round(REDUCING_GAP * max(size)),) * 2)
            factor = reduction(image.size, size)
        if not build and width * height > INLINE_PIXELS:
            raise NotBuiltYet(f"{width}x{height} is decoded off the event loop")
        # On the event loop (build=False) only the pixels count: an inline file holds little
        # memory, and the loop must never wait for the worker's budget.
        cost = decoding_cost(image, (width, height), factor) if build else 0
        holding = budget.holding(width * height, cost) if budget else nullcontext()
        with holding:
            try:
                image.load()
                rgb = _upright(_to_rgb(image, factor), image.getexif().get(ExifTags.Base.Orientation, 1))
            except Exception as error:  # truncated or corrupt data fails inside the decoders
                raise UndecodableImage(f"cannot decode the {image.format} image: {error}") from None
    return to_model_size(rgb, size, undo_enlargements, build)


def reduction(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The integer factors a large image is box-reduced by as it is decoded: as Pillow's
    `resize(reducing_gap=REDUCING_GAP)` would, against the model's longer side so that either
    orientation keeps enough pixels."""
    side = max(size)
    return (
        max(1, int(image_size[0] / side / REDUCING_GAP)),
        max(1, int(image_size[1] / side / REDUCING_GAP)),
    )


def decoding_cost(image: Image.Image, header_size: tuple[int, int], factor: tuple[int, int]) -> int:
    """Bytes that decoding the (opened, drafted) `image`, `header_size` before drafting, and
    reducing it by `factor` hold at
    once, from its header: Pillow's buffer for the whole frame (what its decoders fill) times
    the format's own overhead, the coefficients of a progressive JPEG, one strip's conversion
    and the reduced RGB result."""
    width, height = image.size
    decoded = width * height * _bytes_per_pixel(image.mode) * DECODER_COPIES.get(image.format or "", 1)
    if image.format == "JPEG" and image.info.get("progressive"):
        decoded += _jpeg_coefficients(image, header_size)
    reduced = -(-width // factor[0]) * -(-height // factor[1]) * 4
    strip = min(height, _strip_rows(width, factor)) * width
    return decoded + reduced + strip * (48 if image.mode.startswith("I") else 24)


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4  # Pillow keeps every other mode in 4 bytes


def _jpeg_coefficients(image: Image.Image, size: tuple[int, int]) -> int:
    # libjpeg keeps all of a progressive image's DCT coefficients, 2 bytes each, at full
    # resolution (draft mode scales only the output), per component at its own sampling.
    width, height = size
    layers = getattr(image, "layer", [(0, 1, 1, 0)])
    most = max(h * v for _, h, v, _ in layers)
    return sum(width * height * 2 * h * v // most for _, h, v, _ in layers)


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """`image` turned as its source's EXIF orientation says (what ImageOps.exif_transpose does,
    applied to the reduced image rather than the source)."""
    method = ORIENTATIONS.get(orientation)
    return image if method is None else image.transpose(method)


def encode_png(pixels: np.ndarray) -> str:
    """Model-input pixels ([H, W, 3] uint8) as a base64 PNG: lossless, so what a client shows
    is exactly what the model saw."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _to_rgb(image: Image.Image, factor: tuple[int, int]) -> Image.Image:
    """`image` as 8-bit RGB, box-reduced by `factor`, one strip of rows at a time: what a
    conversion copies is one strip, never a second whole image."""
    if image.mode == "RGB" and factor == (1, 1):
        return image
    width, height = image.size
    rgb = Image.new("RGB", (-(-width // factor[0]), -(-height // factor[1])))
    rows = _strip_rows(width, factor)
    for top in range(0, height, rows):
        strip = _strip_to_rgb(image.crop((0, top, width, min(height, top + rows))))
        rgb.paste(strip.reduce(factor) if factor != (1, 1) else strip, (0, top // factor[1]))
    return rgb


def _strip_rows(width: int, factor: tuple[int, int]) -> int:
    return max(1, STRIP_PIXELS // width // factor[1]) * factor[1]  # whole blocks of the reduction


def _strip_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        levels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")
