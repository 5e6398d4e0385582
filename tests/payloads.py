"""What the tests send (images in any format, feature vectors) and how an error answer looks."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels), "PNG")


def jpeg(pixels: np.ndarray, quality: int = 75) -> bytes:
    return encode(Image.fromarray(pixels), "JPEG", quality=quality)  # Pillow's default: 4:2:0 chroma


def random_images(count: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """Noise, [count, height, width, 3] uint8, for `size` = (width, height)."""
    return np.random.default_rng(seed).integers(0, 256, (count, size[1], size[0], 3), dtype=np.uint8)


def photo(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A smooth, photo-like RGB image: random colours at 8x8, upsampled, plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def halves(size: tuple[int, int], first=(255, 0, 0), second=(0, 0, 255), vertical_split=True) -> Image.Image:
    """Left (or top) half `first`, the other half `second`."""
    image = Image.new("RGB", size, second)
    width, height = size
    image.paste(first, (0, 0, width // 2, height) if vertical_split else (0, 0, width, height // 2))
    return image


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is rewritten to claim width x height (a decompression bomb)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


GOOD_IMAGE = encode(photo(), "PNG")
GOOD_FEATURES = {"features": [5.1, 3.5, 1.4, 0.2]}


def assert_error(response, status: int, detail: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert detail.lower() in str(response.json()["detail"]).lower()


# What a schema-violating request may get: a 4xx, 413 included (a body over the cap, or more
# than MAX_BATCH_SIZE parts, is refused as too large before anything else is noticed).
REFUSAL_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


def no_stated_deadline(case) -> None:
    """Without the Request-Timeout header: a deadline too short to meet (1e-300 s is schema-valid)
    is answered 504 by design, a 5xx these checks would fail (tests/test_service_deadlines.py)."""
    headers = {
        name: value for name, value in (case.headers or {}).items() if name.lower() != "request-timeout"
    }
    case.headers = headers
