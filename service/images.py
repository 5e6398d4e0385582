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

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.resizing import MAX_ENLARGEMENT, REDUCING_GAP, to_model_size

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# Pillow guards against decompression bombs with a process-wide limit of its own (refusing over
# about 179 M pixels, with its own message). Every image here is checked against the service's
# limit (MAX_IMAGE_PIXELS) from its header before anything is decoded, so that one applies
# alone: lower or higher than Pillow's, and with the service's message.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(ValueError):
    """An upload that cannot become a model input."""


class UndecodableImage(ImageRejected):
    """Empty, truncated or corrupt."""


class UnsupportedImage(ImageRejected):
    """Not an image in one of the accepted formats."""


class ImageTooLarge(ImageRejected):
    """More pixels than allowed."""


def decode_image(
    data: bytes, size: tuple[int, int], max_pixels: int, undo_enlargements: bool = True, build: bool = True
) -> np.ndarray:
    """The image in `data` as uint8 RGB pixels, `size` = (width, height), or ImageRejected.
    `undo_enlargements` and `build`: see `service.resizing.to_model_size`."""
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
            )
        try:
            if max(image.size) > MAX_ENLARGEMENT * max(size):  # too large to be an enlargement
                image.draft(None, (round(REDUCING_GAP * max(size)),) * 2)
            rgb = _to_rgb(ImageOps.exif_transpose(image))
        except Exception as error:  # truncated or corrupt data fails inside the decoders
            raise UndecodableImage(f"cannot decode the {image.format} image: {error}") from None
    return to_model_size(rgb, size, undo_enlargements, build)


def encode_png(pixels: np.ndarray) -> str:
    """Model-input pixels ([H, W, 3] uint8) as a base64 PNG: lossless, so what a client shows
    is exactly what the model saw."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        levels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")
