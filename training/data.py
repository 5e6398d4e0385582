"""Datasets as numpy arrays, split into train / validation / test.

CIFAR-10 comes from `keras.datasets.cifar10.load_data()` by default (users online get the
official train/test split) or from a local copy given with `--data`:

* a folder or tar archive in the one-folder-per-class layout
  (`cifar10/train/<class>/*.jpg`, optionally `.../test/<class>/*.jpg`);
* the official `cifar-10-batches-py` pickle folder, or its `.tar.gz`. Pickle executes code
  while loading: only read archives you trust.

Decoding 50,000 images takes a while, so decoded arrays are cached (outside the repository)
under a key of the source's path, size and modification time.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

import numpy as np
from PIL import Image, JpegImagePlugin

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray  # integer class indices


@dataclass
class Dataset:
    labels: list[str]
    train: Split
    validation: Split
    test: Split | None  # None when the source has no test split (our local archive)
    source: str
    # The IJG quality and chroma subsampling every training image was JPEG-compressed with
    # (None: not JPEGs, or not all alike): models must then see their inputs the same way.
    jpeg: dict | None = None


CACHE_FORMAT = 2  # bump when the cached arrays change


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("CIFAR_SERVING_CACHE", Path(base) / "cifar-serving"))


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Index arrays, one per fraction, with every class spread in proportion (fractions sum to 1)."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, bounds[:-1])):
            parts[i].append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]


def hold_out_validation(x, y, fraction: float, seed: int) -> tuple[Split, Split]:
    train_idx, val_idx = stratified_split(y, (1 - fraction, fraction), seed)
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------


def load_cifar10(data: str | None = None, validation_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """CIFAR-10 with a stratified validation split held out of the training images."""
    if data is None:
        import keras

        (x, y), (x_test, y_test) = keras.datasets.cifar10.load_data()
        test: Split | None = Split(x_test, y_test.reshape(-1).astype(np.int64))
        labels = CIFAR10_LABELS
        x, y, source = x, y.reshape(-1).astype(np.int64), "keras.datasets.cifar10"
        jpeg = None  # the official arrays, never compressed
    else:
        arrays = _cached(Path(data), _read_cifar_source)
        labels = [str(s) for s in arrays["labels"]]
        x, y = arrays["x_train"], arrays["y_train"]
        test = Split(arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else None
        source = str(data)  # as given: an absolute path would tie the export to one machine
        jpeg = (
            {"quality": int(arrays["jpeg_quality"]), "chroma_subsampled": bool(arrays["jpeg_subsampled"])}
            if "jpeg_quality" in arrays
            else None
        )
    train, validation = hold_out_validation(x, y, validation_fraction, seed)
    return Dataset(labels, train, validation, test, source, jpeg)


def _cached(path: Path, read) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    stat = path.stat()
    key = f"{CACHE_FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    cached = cache_dir() / f"{path.name}-{key}.npz"
    if cached.exists():
        with np.load(cached) as npz:
            return dict(npz)
    arrays = read(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(cached)  # atomic: a crash never leaves a half-written cache behind
    return arrays


def _read_cifar_source(path: Path) -> dict[str, np.ndarray]:
    """Every file of a folder or tar archive, read in one pass: images are decoded as they come,
    pickle batches are kept. A tar is read in its stored order (reading members by name
    re-scans the archive each time); the arrays come out in sorted name order all the same, so
    they depend on the files, not on how the archive was packed.

    Pickle batches are unpickled, which can run code: read only archives you trust."""
    images: dict[PurePosixPath, tuple[np.ndarray, tuple[int, bool] | None]] = {}
    pickles: dict[str, bytes] = {}
    for name, read in _files(path):
        posix = PurePosixPath(name)
        if posix.suffix.lower() in IMAGE_SUFFIXES:
            images[posix] = _decode(read())
        elif posix.name == "batches.meta" or posix.name.startswith(("data_batch_", "test_batch")):
            pickles[posix.name] = read()
    if "batches.meta" in pickles:
        return _read_pickle_batches(pickles)
    if not images:
        raise ValueError(f"{path}: no images found (expected <class>/<image> folders)")
    return _read_class_folders(images)


def _files(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(relative POSIX name, a function reading its bytes) for every file under a folder or in a
    tar archive, in the archive's stored order."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.is_file():
                yield file.relative_to(path).as_posix(), file.read_bytes
        return
    with tarfile.open(path) as tar:
        for member in tar:  # streams: each member once, in stored order
            if member.isfile():
                yield member.name, cast(IO[bytes], tar.extractfile(member)).read


def _read_pickle_batches(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The official `cifar-10-batches-py` pickles, by file name."""

    def batch(name):
        d = pickle.loads(files[name], encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], dtype=np.int64)

    meta = pickle.loads(files["batches.meta"], encoding="bytes")
    train = [batch(n) for n in sorted(files) if n.startswith("data_batch_")]
    arrays = {
        "labels": np.array([s.decode() for s in meta[b"label_names"]]),
        "x_train": np.concatenate([b[0] for b in train]),
        "y_train": np.concatenate([b[1] for b in train]),
    }
    if "test_batch" in files:
        arrays["x_test"], arrays["y_test"] = batch("test_batch")
    return arrays


def _read_class_folders(
    images: dict[PurePosixPath, tuple[np.ndarray, tuple[int, bool] | None]],
) -> dict[str, np.ndarray]:
    """`.../<split>/<class>/<image>`, decoded; a split named `test` is the test set, anything
    else trains."""
    labels = sorted({p.parent.name for p in images})
    index = {name: i for i, name in enumerate(labels)}
    arrays: dict[str, np.ndarray] = {"labels": np.array(labels)}
    for split in ("train", "test"):
        members = sorted(p for p in images if (p.parent.parent.name == "test") == (split == "test"))
        if not members:
            continue
        decoded = [images[p] for p in members]
        arrays[f"x_{split}"] = np.stack([pixels for pixels, _ in decoded])
        arrays[f"y_{split}"] = np.array([index[p.parent.name] for p in members], dtype=np.int64)
        if split == "train":
            kinds = {jpeg for _, jpeg in decoded}
            if len(kinds) == 1 and None not in kinds:
                arrays["jpeg_quality"], arrays["jpeg_subsampled"] = map(np.array, cast(tuple, kinds.pop()))
    return arrays


def _decode(data: bytes) -> tuple[np.ndarray, tuple[int, bool] | None]:
    """RGB pixels, and (IJG quality, chroma subsampled) for a JPEG with standard tables."""
    with Image.open(io.BytesIO(data)) as im:
        jpeg = None
        if im.format == "JPEG":
            quality = ijg_quality(tuple(cast(JpegImagePlugin.JpegImageFile, im).quantization.get(0, ())))
            if quality is not None:
                jpeg = (quality, JpegImagePlugin.get_sampling(im) == 2)  # 2: 4:2:0
        return np.asarray(im.convert("RGB"), dtype=np.uint8), jpeg


# libjpeg's luminance quantization table at quality 50, row by row; quality q scales it.
IJG_LUMINANCE = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ]
)


@functools.lru_cache(maxsize=64)
def ijg_quality(table: tuple[int, ...]) -> int | None:
    """The libjpeg quality setting (1-100) that produces this luminance table, if any."""
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        if np.array_equal(np.clip((IJG_LUMINANCE * scale + 50) // 100, 1, 255), table):
            return quality
    return None


# ---------------------------------------------------------------------------------------------
# Iris
# ---------------------------------------------------------------------------------------------


def load_iris(seed: int = 0) -> Dataset:
    """scikit-learn's bundled Iris, split 80:10:10 (train / validation / test), stratified."""
    from sklearn.datasets import load_iris as sklearn_iris

    bunch = sklearn_iris()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    train, val, test = stratified_split(y, (0.8, 0.1, 0.1), seed)
    return Dataset(
        labels=[str(n) for n in bunch.target_names],
        train=Split(x[train], y[train]),
        validation=Split(x[val], y[val]),
        test=Split(x[test], y[test]),
        source="sklearn.datasets.load_iris",
    )
