"""Labelled text from the packaged datasets or from the user's own CSV, JSONL or Parquet file."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferlab.catalog import ResolvedAsset
from transferlab.errors import UserError
from transferlab.hashing import sha256_of


@dataclass
class LabeledData:
    """Inputs (texts, or images as file paths or pixel arrays) with integer labels indexing `label_names`, or, for
    multi-label data, an examples x labels 0/1 matrix whose columns are `label_names`.

    `modality` says which backbone family can read them; `asset` says where they came from; `rows` is each
    example's row in its file (1-based, as error messages count), and `empty_rows` the rows left out as empty.
    """

    inputs: list[Any]
    labels: np.ndarray
    label_names: list[str]
    asset: ResolvedAsset | None = None
    modality: str = "text"
    rows: np.ndarray | None = None
    empty_rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.arange(1, len(self.inputs) + 1)

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: np.ndarray) -> LabeledData:
        return LabeledData(
            [self.inputs[i] for i in indices],
            self.labels[indices],
            self.label_names,
            self.asset,
            self.modality,
            self.rows[indices],
            self.empty_rows,
        )

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.labels)

    def class_counts(self) -> dict[str, int]:
        """Examples per class; for multi-label data, examples carrying each label."""
        return {name: int(c) for name, c in zip(self.label_names, label_counts(self.labels, len(self.label_names)))}


def is_multi_label(labels: np.ndarray) -> bool:
    """Multi-label targets are an examples x labels matrix; single-label ones a vector of class ids."""
    return np.ndim(labels) == 2


def label_counts(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Examples per class, or per label of multi-label targets."""
    return np.asarray(labels).sum(0).astype(np.int64) if is_multi_label(labels) else np.bincount(labels, minlength=num_labels)


def label_keys(labels: np.ndarray, label_names: list[str], separator: str = ";") -> list[str]:
    """Each example's label as text: its class, or its set of labels joined by `separator` ("" for none), so that
    multi-label examples can be compared and counted as wholes."""
    if not is_multi_label(labels):
        return [label_names[i] for i in labels]
    return [separator.join(label_names[j] for j in np.flatnonzero(row)) for row in labels]


def first_row(flags: pd.Series) -> int:
    """The first flagged row, counted from 1 as error messages count rows. Rows are the frame's index, which
    `read_table` numbers from 0 in file order, so a row keeps its number when rows above it are left out."""
    return int(flags.index[flags.to_numpy()][0]) + 1


# Format characters that show nothing: the soft hyphen, zero-width spaces and joiners, direction marks and embeddings,
# the word joiner and invisible operators, the byte-order mark (the common part of Unicode's category Cf, as a
# regular expression: a loop over each character's category took seconds on a data set of long reviews)
INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")


def visible(text: str) -> str:
    """`text` as a reader sees it: NFC-composed, without invisible format characters and surrounding spaces. Two cells
    that look the same are then the same class, and a cell that shows nothing is empty."""
    return INVISIBLE.sub("", unicodedata.normalize("NFC", text)).strip()


def label_value(value: Any) -> Any:
    """A label cell as its class: its visible text, None for a missing or blank cell."""
    if isinstance(value, str):
        return visible(value) or None
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return value


def _numeric_order(value: Any) -> tuple[int, float, str]:
    """Numbers (or texts that are numbers, as a CSV's cells are) in numeric order before other labels, in text order."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    return (0, number, str(value)) if math.isfinite(number) else (1, 0.0, str(value))


def encode_labels(raw: pd.Series, where: str) -> tuple[np.ndarray, list[str]]:
    """Integer or string labels -> (ids, names); names keep numeric order for labels that are numbers."""
    values = [label_value(v) for v in raw.tolist()]  # not Series.map: pandas would make [1, 0, None] floats again
    missing = pd.Series([v is None for v in values], index=raw.index)
    if missing.any():
        raise UserError(f"{where}: row {first_row(missing)} has no label")
    if any(isinstance(v, dict) for v in values):
        raise UserError(f"{where}: label cells hold objects ({{...}}), not classes")
    uniques = sorted(set(values), key=_numeric_order)
    names = [str(v) for v in uniques]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: labels {uniques} are ambiguous once written as text")
    index = {v: i for i, v in enumerate(uniques)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def encode_label_sets(raw: pd.Series, separator: str, where: str) -> tuple[np.ndarray, list[str]]:
    """Labels such as "news;sport" split at `separator` -> (examples x labels 0/1 matrix, sorted label names). An
    empty cell is an example with none of the labels (a CSV cannot tell an empty string from a missing value); a cell
    that holds a list (JSONL, Parquet) is already its set."""
    sets = [_label_set(value, separator) for value in raw.tolist()]
    names = sorted(set().union(*sets))
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), dtype=np.int64)
    for row, labels in enumerate(sets):
        matrix[row, [index[name] for name in labels]] = 1
    return matrix, names


def is_label_list(value: Any) -> bool:
    """A cell holding several labels as a list (JSONL, or Parquet as Hugging Face exports go_emotions; a set from Python)."""
    return isinstance(value, (list, tuple, set, np.ndarray))


def is_blank(cell: Any) -> bool:
    """A text cell with nothing to read, by the rule a label cell is missing by (`label_value`): missing, or nothing
    `visible`; a number is text here, as a CSV holds it."""
    return label_value(cell) is None


def _label_set(value: Any, separator: str) -> set[str]:
    if is_label_list(value):
        return {visible(str(part)) for part in value} - {""}
    if value is None or pd.isna(value):
        return set()
    return {visible(part) for part in str(value).split(separator)} - {""}


def _zero_or_one(value: Any) -> Any:
    """A label column's cell as a number: booleans (True, or "true" as a CSV writes it) as 1 and 0."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str):
        return {"true": 1, "false": 0}.get(value.strip().lower(), value.strip())
    return value


def encode_label_columns(frame: pd.DataFrame, columns: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    """Several 0/1 columns, one per label (the layout of Jigsaw's toxicity data) -> (examples x labels 0/1 matrix, the
    column names as label names). Booleans and 0/1 numbers are read; anything else is named with its row."""
    if len(set(columns)) != len(columns):
        raise UserError(f"{where}: --label-columns names a column twice")
    matrix = np.zeros((len(frame), len(columns)), dtype=np.int64)
    for j, column in enumerate(columns):
        values = frame[column]
        if values.isna().any():
            raise UserError(f"{where}: row {first_row(values.isna())} has no value in label column '{column}'")
        numeric = pd.to_numeric(values.astype(object).map(_zero_or_one), errors="coerce")
        bad = ~numeric.isin([0, 1])
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(
                f"{where}: row {first_row(bad)} has '{values.iloc[position]}' in label column '{column}'; label columns hold 0 or 1"
            )
        matrix[:, j] = numeric.to_numpy().astype(np.int64)
    return matrix, list(map(str, columns))


def encode_label_column(
    frame: pd.DataFrame, label_column: str | list[str], label_separator: str | None, where: str
) -> tuple[np.ndarray, list[str]]:
    """The labels of a table, as one of three layouts: a class per row, a set of labels per row split at
    `label_separator`, or (with a list of columns) one 0/1 column per label."""
    if not isinstance(label_column, str):
        return encode_label_columns(frame, list(label_column), where)
    if label_separator is None and any(map(is_label_list, frame[label_column])):
        return encode_label_sets(frame[label_column], ";", where)  # list cells (JSONL, Parquet): a set of labels each
    if label_separator is None:
        return encode_labels(frame[label_column], where)
    return encode_label_sets(frame[label_column], label_separator, where)


def label_columns_of(label_column: str | list[str]) -> list[str]:
    return [label_column] if isinstance(label_column, str) else list(label_column)


def require_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    """A missing column is named, with the closest existing one when it looks misspelt."""
    for column in columns:
        if column not in frame.columns:
            close = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; columns are {', '.join(map(str, frame.columns))}"
            raise UserError(f"{where}: no column '{column}'{hint}")


def from_frame(
    frame: pd.DataFrame,
    text_column: str,
    label_column: str | list[str],
    where: str,
    asset: ResolvedAsset | None,
    label_separator: str | None = None,
) -> LabeledData:
    """Validate the columns and values of a table and turn it into LabeledData; with `label_separator`, each label
    cell holds a set of labels, and with a list of label columns each is one label's 0/1 (multi-label data)."""
    if frame.empty:
        raise UserError(f"{where}: no rows")
    frame = frame.reset_index(drop=True)  # rows numbered in file order, for error messages
    require_columns(frame, [text_column, *label_columns_of(label_column)], where)
    texts = frame[text_column]
    empty = np.array([is_blank(text) for text in texts.tolist()], dtype=bool)
    if empty.all():
        raise UserError(f"{where}: every '{text_column}' is empty")
    labels, names = encode_label_column(frame[~empty], label_column, label_separator, where)
    if len(names) < 2:
        found = f"a single class ({names[0]})" if names else "no labels at all"
        raise UserError(f"{where}: column '{label_column}' has {found}; at least 2 are needed")
    rows = np.arange(1, len(frame) + 1)
    return LabeledData(texts[~empty].astype(str).tolist(), labels, names, asset, rows=rows[~empty], empty_rows=rows[empty].tolist())


def with_label_names(data: LabeledData, names: list[str], where: str) -> LabeledData:
    """`data` relabelled to index `names` (the training data's classes): a held-out file is read on its own,
    and may lack classes but not add any."""
    unknown = sorted(set(data.label_names) - set(names))
    if unknown:
        raise UserError(f"{where}: class {', '.join(unknown)} does not occur in the training data ({', '.join(names)})")
    mapping = np.array([names.index(name) for name in data.label_names], dtype=np.int64)
    if data.multi_label:
        labels = np.zeros((len(data), len(names)), dtype=np.int64)
        labels[:, mapping] = data.labels
        return dataclasses.replace(data, labels=labels, label_names=names)
    return dataclasses.replace(data, labels=mapping[data.labels], label_names=names)


def concatenate(parts: list[LabeledData]) -> tuple[LabeledData, list[np.ndarray]]:
    """One dataset from several with the same classes, and each part's indices into it, so that one
    tokenisation and the duplicate groups span them all."""
    first = parts[0]
    data = LabeledData(
        [x for part in parts for x in part.inputs],
        np.concatenate([part.labels for part in parts]),
        first.label_names,
        first.asset,
        first.modality,
        np.concatenate([part.rows for part in parts]),
        first.empty_rows,
    )
    offsets = np.cumsum([0] + [len(part) for part in parts])
    return data, [np.arange(start, stop) for start, stop in zip(offsets[:-1], offsets[1:])]


def read_table(path: Path) -> pd.DataFrame:
    """CSV, JSONL or Parquet by extension; decoding problems become one clear line."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    try:
        if suffix in (".csv", ".tsv"):
            # every cell as text, only an empty one missing: pandas would read "None", "NA" or "null" as missing,
            # and a column of 0/1 labels with one blank cell as 0.0/1.0
            frame = pd.read_csv(
                path, sep="\t" if suffix == ".tsv" else ",", encoding="utf-8-sig", dtype=str, keep_default_na=False, na_values=[""]
            )
            return _checked_tsv(frame, path) if suffix == ".tsv" else frame
        if suffix in (".jsonl", ".json"):
            # as written: pandas would otherwise turn text that reads as a number into one (label "01" into 1)
            return pd.read_json(path, lines=suffix == ".jsonl", encoding="utf-8-sig", dtype=False, convert_dates=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path).reset_index(drop=True)  # a stored index would renumber the rows
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: cannot be read as {suffix[1:].upper()}: {first_line}") from None
    raise UserError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv, .jsonl or .parquet")


def _checked_tsv(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A tab and a line break in one TSV cell are what an unmatched quote leaves: the rows up to the next quote read as
    one cell (a quoted cell may hold either alone)."""
    for column in frame.columns:
        cells = frame[column]
        tabbed = cells.str.contains("\t", regex=False, na=False) & cells.str.contains("\n", regex=False, na=False)
        if tabbed.any():
            raise UserError(
                f"{path}: row {first_row(tabbed)}'s '{column}' holds a tab, so a quote in it probably joined several rows "
                "into one; remove the stray quote or save the file as CSV"
            )
    return frame


def load_user_file(
    path: Path, text_column: str = "text", label_column: str | list[str] = "label", label_separator: str | None = None
) -> LabeledData:
    path = Path(path).expanduser()
    frame = read_table(path)
    asset = ResolvedAsset(path.name, str(path.resolve()), {path.name: sha256_of(path)})
    return from_frame(frame, text_column, label_column, str(path), asset, label_separator)
