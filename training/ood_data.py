"""Pictures of none of the CIFAR-10 classes, for fitting and measuring the out-of-distribution
score: 32 px crops of real photographs and textures that installed packages ship, plus
synthetic cases. Nothing of it is committed; it is rebuilt from the packages:

    pip install scikit-image                      # its bundled sample photographs
    apt-get install gimp-data gimp-data-extras stellarium-data   # texture patterns; landscape photos
    python -m training.ood_data --out ../ood-cache

Every source picture belongs to one split, `dev` (the score is fitted and tuned on it) or `eval`
(only measured), decided by its name, so no crop of an evaluation picture is ever seen in
fitting. Pictures of the classes (skimage's cat, horse, motorcycle, rocket) are left out.
Desktop-background packages are deliberately not used: the independent check draws on them.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
CROPS_PER_SOURCE = 48
EVAL_SHARE = 3  # one source in EVAL_SHARE (by the hash of its name) is held out for evaluation
# Pictures of the classes (a cat, a horse, motorcycles, a rocket) and a grid of faces.
EXCLUDED = {"chelsea", "horse", "motorcycle_left", "motorcycle_right", "rocket", "lfw_subset"}
STELLARIUM = "/usr/share/stellarium/landscapes"
GIMP_PATTERNS = "/usr/share/gimp/2.0/patterns"
# Stellarium's landscapes that are photographs (the others are renderings of planets).
LANDSCAPE_PHOTOS = ("garching", "geneva", "grossmugl", "guereins", "hurricane", "ocean", "trees", "moon")

Loader = Callable[[], np.ndarray]


def split_of(name: str) -> str:
    digest = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    return "eval" if digest % EVAL_SHARE == 0 else "dev"


def photo_sources() -> Iterator[tuple[str, Loader]]:
    """Real photographs: (source name, loader of an RGB or RGBA uint8 array)."""
    try:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        for path in sorted(folder.glob("*.jpg")):
            yield f"sklearn/{path.stem}", _reader(path)
    except ImportError:
        pass
    try:
        import matplotlib

        sample_data = Path(matplotlib.get_data_path()) / "sample_data"
        yield "matplotlib/grace_hopper", _reader(sample_data / "grace_hopper.jpg")
    except ImportError:
        pass
    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        for stem in ("astronaut", "camera", "coffee", "hubble_deep_field", "moon", "retina", "ihc", "coins"):
            found = next(iter(folder.glob(f"{stem}.*")), None)
            if found is not None:
                yield f"skimage/{stem}", _reader(found)
    except ImportError:
        pass
    for landscape in LANDSCAPE_PHOTOS:
        # All tiles of one landscape are one source: they are the same place.
        tiles = sorted(glob.glob(f"{STELLARIUM}/{landscape}/*.png"))
        tiles = [t for t in tiles if "fog" not in t and "illum" not in t]
        if tiles:
            yield f"stellarium/{landscape}", _tiles(tiles)


def texture_sources() -> Iterator[tuple[str, Loader]]:
    """Textures and patterns: GIMP's pattern files and scikit-image's texture samples."""
    for path in sorted(glob.glob(f"{GIMP_PATTERNS}/**/*.pat", recursive=True)):
        yield f"gimp/{Path(path).stem}", _pattern(Path(path))
    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        for stem in ("brick", "grass", "gravel", "text", "page", "color", "logo", "cell", "microaneurysms"):
            found = next(iter(folder.glob(f"{stem}.*")), None)
            if found is not None:
                yield f"skimage/{stem}", _reader(found)
    except ImportError:
        pass


def read_gimp_pattern(path: Path) -> np.ndarray:
    """A GIMP .pat file: a big-endian header (size, version, width, height, bytes per pixel,
    'GPAT', name), then the pixels."""
    raw = path.read_bytes()
    header_size, _, width, height, depth = struct.unpack(">5I", raw[:20])
    pixels = np.frombuffer(raw[header_size : header_size + width * height * depth], np.uint8)
    return pixels.reshape(height, width, depth)


def crops(picture: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` square crops of random size (32 px up to the whole short side) resized to 32x32
    RGB; crops that reach into transparency (a landscape's sky) are skipped."""
    rgb = _rgb(picture)
    alpha = picture[..., 3] if picture.ndim == 3 and picture.shape[2] == 4 else None
    height, width = rgb.shape[:2]
    short = min(height, width)
    out: list[np.ndarray] = []
    for _ in range(count * 4):
        if len(out) == count:
            break
        side = int(np.exp(rng.uniform(np.log(min(SIZE, short)), np.log(short))))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        if alpha is not None and alpha[top : top + side, left : left + side].min() < 250:
            continue
        crop = Image.fromarray(rgb[top : top + side, left : left + side])
        out.append(np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BICUBIC)))
    return np.stack(out) if out else np.zeros((0, SIZE, SIZE, 3), np.uint8)


def synthetic(count: int, seed: int) -> np.ndarray:
    """Noise, smooth noise, gradients, flat colours, stripes and random shapes."""
    rng = np.random.default_rng(seed)
    kinds = []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    for i in range(count):
        kind = i % 6
        if kind == 0:
            img = rng.integers(0, 256, (SIZE, SIZE, 3))
        elif kind == 1:
            small = rng.integers(0, 256, (rng.integers(2, 9),) * 2 + (3,)).astype(np.uint8)
            img = np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
        elif kind == 2:
            a, b = rng.integers(0, 256, (2, 3))
            angle = rng.uniform(0, np.pi)
            t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
            t = (t - t.min()) / max(np.ptp(t), 1e-6)
            img = a * (1 - t) + b * t
        elif kind == 3:
            img = np.broadcast_to(rng.integers(0, 256, 3), (SIZE, SIZE, 3))
        elif kind == 4:
            period = rng.integers(2, 9)
            a, b = rng.integers(0, 256, (2, 3))
            stripes = (
                ((xx * (SIZE - 1) // period) % 2)[..., None]
                if rng.random() < 0.5
                else (((xx + yy) * (SIZE - 1) // period) % 2)[..., None]
            )
            img = a * (1 - stripes) + b * stripes
        else:
            img = np.broadcast_to(rng.integers(0, 256, 3), (SIZE, SIZE, 3)).copy()
            for _ in range(rng.integers(1, 5)):
                cy, cx, r = rng.uniform(0, 1, 3)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.1 + 0.4 * r) ** 2
                if rng.random() < 0.5:
                    mask = (np.abs(yy - cy) < 0.3 * r) & (np.abs(xx - cx) < 0.4 * r)
                img[mask] = rng.integers(0, 256, 3)
        kinds.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(kinds)


def build(seed: int = 0, crops_per_source: int = CROPS_PER_SOURCE) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"x": crops, "group": photo|texture|synthetic, "source": name}} over every source
    found on this machine."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[np.ndarray, str, str]]] = {"dev": [], "eval": []}
    for group, sources in (("photo", photo_sources()), ("texture", texture_sources())):
        for name, load in sources:
            if name.split("/")[-1] in EXCLUDED:
                continue
            picture = load()
            # Photographs give more crops: they are fewer, and the score is judged on them.
            count = crops_per_source * (4 if group == "photo" else 1)
            parts[split_of(name)].append((crops(picture, count, rng), group, name))
    for split, offset in (("dev", 1), ("eval", 2)):
        parts[split].append((synthetic(600, seed + offset), "synthetic", f"synthetic/{split}"))
    out = {}
    for split, items in parts.items():
        out[split] = {
            "x": np.concatenate([x for x, _, _ in items]),
            "group": np.concatenate([[g] * len(x) for x, g, _ in items]).astype(str),
            "source": np.concatenate([[n] * len(x) for x, _, n in items]).astype(str),
        }
    return out


def load(folder: str | Path, split: str) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / f"ood-{split}.npz") as npz:
        return dict(npz)


def _reader(path: Path) -> Loader:
    return lambda: np.asarray(Image.open(path))


def _pattern(path: Path) -> Loader:
    return lambda: read_gimp_pattern(path)


def _tiles(paths: list[str]) -> Loader:
    def load_tiles() -> np.ndarray:
        # Tiles side by side (cropped to the smallest height) so crops may span a seam rarely.
        pictures = [np.asarray(Image.open(p).convert("RGBA")) for p in paths]
        height = min(p.shape[0] for p in pictures)
        return np.concatenate([p[:height] for p in pictures], axis=1)

    return load_tiles


def _rgb(picture: np.ndarray) -> np.ndarray:
    if picture.ndim == 2:
        return np.repeat(picture[..., None], 3, axis=2).astype(np.uint8)
    if picture.shape[2] == 1:
        return np.repeat(picture, 3, axis=2).astype(np.uint8)
    if picture.shape[2] == 2:  # grey + alpha
        return np.repeat(picture[..., :1], 3, axis=2).astype(np.uint8)
    return np.ascontiguousarray(picture[..., :3]).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.ood_data", description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OOD_CACHE", "../ood-cache"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, arrays in build(args.seed).items():
        x, group, source = arrays["x"], arrays["group"], arrays["source"]
        np.savez_compressed(out / f"ood-{split}.npz", x=x, group=group, source=source)
        groups, counts = np.unique(arrays["group"], return_counts=True)
        sources = len(np.unique(arrays["source"]))
        by_group = {str(g): int(c) for g, c in zip(groups, counts, strict=True)}
        print(f"{split}: {len(arrays['x'])} crops of {sources} sources {by_group}")


if __name__ == "__main__":
    main()
