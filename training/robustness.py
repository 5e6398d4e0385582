"""What a model does off its training distribution: accuracy under common corruptions of its
images, and how confident it is on inputs that belong to none of its classes.

Every figure is measured on the exported inference function (raw inputs in, probabilities out),
so whatever the export does to its inputs (the CIFAR-10 model's JPEG round trip) is included.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from training.calibration import apply_temperature

UPSCALE = 224
OOD_PER_KIND = 75


def predict_probabilities(predict, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """`predict` (a TensorFlow function of one raw batch) over `x`, in batches, as NumPy."""
    return np.concatenate(
        [np.asarray(predict(tf.constant(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    )


# ---------------------------------------------------------------------------------------------
# Corruptions of uint8 RGB batches [N, H, W, 3]
# ---------------------------------------------------------------------------------------------


def gaussian_noise(images: np.ndarray, sigma: float = 8 / 255, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma * 255, images.shape)
    return _to_uint8(images + noise)


def gaussian_blur(images: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """Separable Gaussian of standard deviation `sigma` pixels, truncated at 3 sigma, edges mirrored."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    x = images.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        length = x.shape[axis]
        x = sum(w * np.take(padded, range(i, i + length), axis=axis) for i, w in enumerate(taps))
    return _to_uint8(x)


def brightness(images: np.ndarray, factor: float = 1.3) -> np.ndarray:
    return _to_uint8(images.astype(np.float64) * factor)


def contrast(images: np.ndarray, factor: float = 0.7) -> np.ndarray:
    """Each image pulled towards its own mean level by `factor`."""
    x = images.astype(np.float64)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8(mean + factor * (x - mean))


def jpeg(images: np.ndarray, quality: int = 30) -> np.ndarray:
    """Each image through Pillow's JPEG encoder (4:2:0 chroma, as Pillow defaults) and back."""
    return np.stack([_decoded(_encoded(image, "JPEG", quality=quality)) for image in images])


def upscaled_through_the_service(images: np.ndarray, size: int = UPSCALE) -> np.ndarray:
    """Each image enlarged to `size`x`size` (bicubic, saved as PNG), then decoded and brought back
    to the model's size by the service's own upload path (`service.images.decode_image`)."""
    # Imported here: an image with only the training package (Docker's train target copies
    # training/ alone) still trains; robustness_table then leaves this row out, saying why.
    from service.images import decode_image

    height, width = images.shape[1:3]
    enlarged = (Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC) for image in images)
    return np.stack(
        [decode_image(_encoded(np.asarray(e), "PNG"), (width, height), size * size) for e in enlarged]
    )


CORRUPTIONS = {
    "Gaussian noise σ=8/255": gaussian_noise,
    "Gaussian blur σ=0.7 px": gaussian_blur,
    "brightness ×1.3": brightness,
    "contrast ×0.7": contrast,
    "JPEG quality 30": jpeg,
    f"{UPSCALE}×{UPSCALE} upscale, resized back by the service": upscaled_through_the_service,
}


def robustness_table(predict, images: np.ndarray, labels: np.ndarray, clean_predictions=None) -> dict:
    """Accuracy on the clean images (from `clean_predictions`, the classes predicted for them,
    when already known) and under each corruption."""
    if clean_predictions is None:
        clean_predictions = predict_probabilities(predict, images).argmax(1)
    table: dict[str, float | None] = {"clean": round(float(np.mean(clean_predictions == labels)), 4)}
    for name, corrupt in CORRUPTIONS.items():
        try:
            table[name] = _accuracy(predict, corrupt(images), labels)
        except ModuleNotFoundError as missing:
            print(f"warning: robustness '{name}' not measured: {missing}", flush=True)
            table[name] = None
    return table


def _accuracy(predict, images, labels) -> float:
    return round(float(np.mean(predict_probabilities(predict, images).argmax(1) == labels)), 4)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Out-of-distribution inputs: none of the classes
# ---------------------------------------------------------------------------------------------

WORDS = ["STOP", "hello", "42", "A+", "cifar", "open", "x=y", "OK", "sale", "#1", "abc", "QR"]


def ood_images(height: int = 32, width: int = 32, per_kind: int = OOD_PER_KIND, seed: int = 0) -> dict:
    """Generated images of no class, by kind: uniform noise, flat colours, rendered text,
    linear colour gradients; `per_kind` of each, uint8 RGB [N, height, width, 3]."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (per_kind, 2, 3))
    font = ImageFont.load_default()

    def text(background, ink):
        image = Image.new("RGB", (width, height), tuple(int(v) for v in background))
        draw = ImageDraw.Draw(image)
        at = (int(rng.integers(0, width // 3)), int(rng.integers(0, height // 2)))
        draw.text(at, str(rng.choice(WORDS)), fill=tuple(int(v) for v in ink), font=font)
        return np.asarray(image)

    def gradient(start, end):
        angle = rng.uniform(0, 2 * np.pi)
        rows, cols = np.mgrid[0:height, 0:width]
        t = np.cos(angle) * cols / width + np.sin(angle) * rows / height
        t = (t - t.min()) / (t.max() - t.min())
        return _to_uint8(start + t[..., None] * (end - start))

    return {
        "uniform noise": rng.integers(0, 256, (per_kind, height, width, 3), dtype=np.uint8),
        "flat colours": np.broadcast_to(colours[:, 0, None, None, :], (per_kind, height, width, 3)).astype(
            np.uint8
        ),
        "text renderings": np.stack([text(bg, ink) for bg, ink in colours]),
        "gradients": np.stack([gradient(a, b) for a, b in colours]),
    }


def ood_features(count: int = 4 * OOD_PER_KIND, features: int = 4, seed: int = 0) -> dict:
    """Random measurement vectors, each feature uniform in 0-10 cm: mostly no real flower."""
    rng = np.random.default_rng(seed)
    return {"random measurements, 0-10 cm": rng.uniform(0, 10, (count, features)).astype(np.float32)}


def ood_confidence(predict, inputs_by_kind: dict, temperature: float = 1.0) -> dict:
    """Per kind and overall: mean top probability, and the share answered with ≥ 0.9, of
    `predict` (the uncalibrated function) before and after dividing by `temperature`."""
    rows = {}
    everything = []
    for kind, inputs in inputs_by_kind.items():
        probabilities = predict_probabilities(predict, inputs)
        everything.append(probabilities)
        rows[kind] = _confidence_row(probabilities, temperature)
    rows["all"] = _confidence_row(np.concatenate(everything), temperature)
    return rows


def _confidence_row(probabilities: np.ndarray, temperature: float) -> dict:
    before = probabilities.max(1)
    after = apply_temperature(probabilities, temperature).max(1)
    return {
        "count": len(probabilities),
        "mean_confidence_before": round(float(before.mean()), 4),
        "mean_confidence_after": round(float(after.mean()), 4),
        "share_at_least_0.9_after": round(float(np.mean(after >= 0.9)), 4),
    }
