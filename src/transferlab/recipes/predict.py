"""`transferlab predict`: classify texts or images with a folder written by `transferlab train` (torch) or
`transferlab export` (onnxruntime). This module imports neither: the chosen backend's loader is imported when it
is used, so the onnxruntime path runs where torch is not installed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from transferlab.data.images import is_image_file
from transferlab.data.sources import (
    encode_label_columns,
    first_row,
    is_blank,
    is_label_list,
    label_columns_of,
    label_keys,
    label_value,
    read_table,
    require_columns,
    visible,
)
from transferlab.errors import UserError
from transferlab.evaluation.metrics import classification_metrics, predicted_labels
from transferlab.runio import atomic_write_text, label_separator

BACKENDS = ("auto", "torch", "onnxruntime")


class Classifier(Protocol):
    """What predict needs of a loaded model, whichever backend runs it."""

    label_names: list[str]
    modality: str
    threshold: float | list[float] | None  # binary: class 1 from this probability on; None: the most probable class
    multi_label: bool  # independent labels, each decided by its own threshold
    manifest: dict[str, Any]

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = ...) -> np.ndarray: ...


def load_classifier(model_dir: Path, backend: str = "auto") -> Classifier:
    """`train`'s folder on torch, or `export`'s ONNX folder on onnxruntime (no torch imported); auto: by what the
    folder holds."""
    from transferlab.deploy import ONNX_FILE

    if backend == "auto":
        backend = "onnxruntime" if (Path(model_dir) / ONNX_FILE).is_file() else "torch"
    if backend == "torch":
        from transferlab.recipes.loading import load_model

        return load_model(model_dir)
    if backend == "onnxruntime":
        from transferlab.deploy import OnnxClassifier

        return OnnxClassifier(model_dir)
    raise UserError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")


def image_files(paths: Sequence[Path]) -> list[str]:
    """Image files as given, and the images inside given folders (sorted, recursively)."""
    files: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if is_image_file(f, path))
            if not found:
                raise UserError(f"{path}: no image files in this folder")
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def read_texts(
    path: Path, text_column: str, label_column: str | list[str] | None = None, label_sets: bool = False, separator: str = ";"
) -> tuple[list[str], list[str] | None]:
    """One text per line of a .txt file, or a column of a table; and its true labels when they are given (with
    `label_sets`, multi-label cells, where an empty one is an example with none of the labels; with a list of label
    columns, one 0/1 column per label, read as sets joined by `separator`)."""
    if path.suffix.lower() == ".txt":
        if label_column:
            raise UserError(f"{path}: a .txt file has no label column; give a .csv/.jsonl/.parquet table for --label-column")
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        try:
            # read_text turns \r\n and \r into \n; str.splitlines would also split at U+2028, form feeds and the like
            lines = [line for line in path.read_text(encoding="utf-8-sig").split("\n") if line.strip()]
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not valid UTF-8 (byte {err.start})") from None
        if not lines:
            raise UserError(f"{path}: no texts")
        return lines, None
    frame = read_table(path)
    require_columns(frame, [text_column, *(label_columns_of(label_column) if label_column else [])], str(path))
    if frame.empty:
        raise UserError(f"{path}: no rows")
    for column in [text_column] if label_sets or not isinstance(label_column, str) else [text_column, label_column]:
        if frame[column].isna().any():
            raise UserError(f"{path}: row {first_row(frame[column].isna())} has an empty '{column}'")
    blank = frame[text_column].map(is_blank)  # a JSON "" or a cell of spaces: nothing to classify
    if blank.any():
        raise UserError(f"{path}: row {first_row(blank)} has an empty '{text_column}'")
    labels = None
    if label_column and not isinstance(label_column, str):
        labels = label_keys(*encode_label_columns(frame, list(label_column), str(path)), separator)
    elif label_column:
        labels = [_label_text(value, separator) for value in frame[label_column].tolist()]
    return frame[text_column].astype(str).tolist(), labels


def _label_text(cell: Any, separator: str) -> str:
    """A true-label cell as the text `label_ids` reads: a list (JSONL, Parquet) as its labels joined by `separator`."""
    value = label_value(cell)
    if is_label_list(value):
        return separator.join(visible(str(part)) for part in value)
    return "" if value is None else str(value)


def label_ids(labels: list[str], label_names: list[str], where: Path, separator: str | None = None) -> np.ndarray:
    """True labels as the model's class ids (with `separator`, sets of labels as a 0/1 row each); a label it was never
    trained on is an error, not a silent miss."""
    index = {name: i for i, name in enumerate(label_names)}
    rows = [[part.strip() for part in label.split(separator) if part.strip()] if separator else [label] for label in labels]
    for row, names in enumerate(rows):
        for label in names:
            if label not in index:
                raise UserError(
                    f"{where}: row {row + 1} has label '{label}', which the model never saw (it knows {', '.join(label_names)})"
                )
    if separator is None:
        return np.array([index[label] for label in labels])
    matrix = np.zeros((len(rows), len(label_names)), dtype=np.int64)
    for row, names in enumerate(rows):
        matrix[row, [index[name] for name in names]] = 1
    return matrix


def predictions_frame(
    inputs: Sequence[str],
    probs: np.ndarray,
    label_names: list[str],
    modality: str = "text",
    threshold: float | list[float] | None = None,
    separator: str | None = None,
) -> pd.DataFrame:
    """One row per input: its label (with `separator`, multi-label: every label over its threshold, joined), then the
    probability of each class or label."""
    decided = predicted_labels(probs, threshold, separator is not None)
    labels = [label_names[i] for i in decided] if separator is None else label_keys(decided, label_names, separator)
    frame = pd.DataFrame({"image" if modality == "image" else "text": list(inputs), "label": labels})
    for i, name in enumerate(label_names):
        frame[f"p_{name}"] = probs[:, i]
    return frame


def predict_command(
    model_dir: Path,
    texts: list[str] | None,
    images: list[Path] | None,
    input_file: Path | None,
    text_column: str,
    output: Path | None,
    console: Console,
    label_column: str | list[str] | None = None,
    backend: str = "auto",
) -> None:
    if sum(map(bool, (texts, images, input_file))) != 1:
        raise UserError("give one of --text (one or more), --image (files or folders) or --input FILE")
    if output is not None and output.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"{output}: predictions are written as .csv or .jsonl")
    loaded = load_classifier(model_dir, backend)
    if (loaded.modality == "image") != bool(images):
        raise UserError(
            f"{model_dir} classifies {loaded.modality}s: give {'--image' if loaded.modality == 'image' else '--text or --input'}"
        )
    if label_column and not input_file:
        raise UserError("--label-column and --label-columns apply to an --input table")
    if label_column and not isinstance(label_column, str) and not loaded.multi_label:
        raise UserError(f"--label-columns: {model_dir} predicts one class per example; give its true labels with --label-column")
    # multi-label: sets of labels are written (and true labels read) with the separator the model was trained with
    separator = label_separator(loaded.manifest) if loaded.multi_label else None
    truth = None
    if texts and not all(visible(text) for text in texts):
        raise UserError("--text: an empty text has nothing to classify")
    if images or texts:
        inputs = image_files(images) if images else list(texts)
    else:
        inputs, labels = read_texts(Path(input_file), text_column, label_column, separator is not None, separator or ";")
        truth = None if labels is None else label_ids(labels, loaded.label_names, Path(input_file), separator)
    probs = loaded.predict_proba(inputs)
    frame = predictions_frame(inputs, probs, loaded.label_names, loaded.modality, loaded.threshold, separator)
    if truth is not None:
        frame.insert(2, "true_label", label_keys(truth, loaded.label_names, separator or ";"))
        scores = classification_metrics(truth, probs, len(loaded.label_names), loaded.threshold)
        console.print(f"on {len(truth)} labelled examples: " + ", ".join(f"{name} {value:.6f}" for name, value in scores.items()))
    if output is not None:
        body = (
            frame.to_csv(index=False) if output.suffix.lower() == ".csv" else frame.to_json(orient="records", lines=True, force_ascii=False)
        )
        atomic_write_text(output, body)
        console.print(f"{len(frame)} predictions written to {output}")
        return
    probabilities = [f"p_{name}" for name in loaded.label_names]
    shown = [column for column in frame.columns if column not in probabilities]
    # escaped, or Text: rich would read "[b]" in a text or a label name as markup, and fail on "[/b]"
    table = Table(*map(escape, shown), *(escape(f"p({name})") for name in loaded.label_names))
    for row in frame.to_dict("records"):
        cells = [str(row[column]) for column in shown]
        cells[0] = cells[0] if len(cells[0]) <= 60 else cells[0][:57] + "..."
        table.add_row(*map(Text, cells), *(f"{row[p]:.4f}" for p in probabilities))
    console.print(table)
