"""The uploads every server gets: real CIFAR-10 training photos (never the test split), as
they are (32×32) and enlarged to a web size and a phone camera's size, JPEG-encoded once and
cached, so every run and every server sees the same bytes."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from PIL import Image

from benchmarks.peers.install import cache_root
from benchmarks.server import REPO

# The training archive (never the test split); CIFAR10_TRAIN_TAR points elsewhere.
DATASET = Path(
    os.environ.get("CIFAR10_TRAIN_TAR", REPO.parent / "shared" / "datasets" / "cifar10-train.tar.gz")
)
# name → (width, height); None keeps the dataset's own 32×32 JPEG bytes untouched.
PAYLOADS = {"32px": None, "640x480": (640, 480), "4032x3024": (4032, 3024)}
QUALITY = 90  # a camera's or browser's typical JPEG quality for the enlarged photos
PHOTOS = 10  # the first training photo of each class


def training_photos(dataset: Path = DATASET, count: int = PHOTOS) -> list[bytes]:
    """The first JPEG of each class folder under `train/`, in archive order."""
    photos: dict[str, bytes] = {}
    with tarfile.open(dataset, "r|*") as tar:  # streamed: one pass, nothing extracted
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or "train" not in parts or not member.name.endswith(".jpg"):
                continue
            label = parts[-2]
            if label not in photos:
                photos[label] = tar.extractfile(member).read()
                if len(photos) == count:
                    break
    if not photos:
        raise ValueError(f"no training JPEGs in {dataset}")
    return list(photos.values())


def enlarge(jpeg: bytes, size: tuple[int, int] | None, quality: int = QUALITY) -> bytes:
    """`jpeg` resized to `size` (bicubic) and re-encoded; unchanged when `size` is None."""
    if size is None:
        return jpeg
    with Image.open(io.BytesIO(jpeg)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()


def payload_files(name: str, folder: Path | None = None, dataset: Path = DATASET) -> list[Path]:
    """The JPEG files of payload `name`, built on first use under `folder`."""
    folder = (folder or cache_root() / "payloads") / name
    files = sorted(folder.glob("*.jpg"))
    if files:
        return files
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(training_photos(dataset)):
        (tmp / f"{i:02d}.jpg").write_bytes(enlarge(photo, PAYLOADS[name]))
    tmp.rename(folder)  # whole or absent: an interrupted build is redone
    return sorted(folder.glob("*.jpg"))
