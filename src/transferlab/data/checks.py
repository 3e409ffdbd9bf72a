"""Data checks run before any training: duplicates, conflicting labels, short inputs, class balance.

Copies of one input on both sides of a split make a score a lie (a model that memorises gets them
right), so the checks also say which examples are copies of each other: `duplicate_groups` gives
every example a group, and the splits keep each group on one side. Texts count as the same after
whitespace and case are normalised; images when their bytes (file or pixels) are identical.
Near-duplicates (paraphrases, a changed word) are found on the frozen backbone's features by
`near_duplicate_pairs`. Everything here is numpy on the inputs and labels alone, no model.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data.sources import label_counts, label_keys, visible
from transferlab.settings import SEVERE_IMBALANCE

SHORT_WORDS = 3  # a text with fewer words than this is reported as very short
SHOWN = 5  # examples of each finding kept in results.json and the report
# Cosine between centred frozen features (the dataset's mean subtracted, which undoes the common direction that
# makes every pair of raw BERT-style features look alike) at or above which two texts count as near-duplicates.
# Calibrated with bench/near_duplicates.py on minilm-l6 and 2,983 rt-polarity sentences (docs/findings.md): no
# sentence has a distinct neighbour above 0.81, while a copy with one word deleted scores >= 0.9 in 88% of cases,
# without punctuation in 97%, with two words swapped in 99% (a word replaced by another: 47%).
NEAR_DUPLICATE_COSINE = 0.9
# When more examples than this share have a near-duplicate, the features do not tell inputs apart (a random or
# untrained backbone): the near-duplicate check is skipped with a warning rather than emptying the training set.
NEAR_DUPLICATE_MAX_SHARE = 0.05
# Label cells are read as written ("None" is a real intent in LUIS's data), but these are also how R, pandas and
# spreadsheets write a missing value: a class so named is pointed out
MISSING_MARKERS = {"na", "n/a", "#n/a", "nan", "null", "none"}


def normalised_text(text: str) -> str:
    """The key copies of one text share: its visible text in compatibility form (full-width letters as ASCII), spaces
    collapsed, case folded."""
    return " ".join(unicodedata.normalize("NFKC", visible(text)).split()).casefold()


def image_key(item: Any) -> str:
    """The sha256 of an image's file's bytes (a path) or of its pixels (an array, or a PIL image)."""
    if isinstance(item, (str, Path)):
        return hashlib.sha256(Path(item).read_bytes()).hexdigest()
    pixels = np.asarray(item)
    return hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()


def first_occurrence(keys: list[Any]) -> np.ndarray:
    """For each position, the first position holding an equal key: group ids that index into the list."""
    first: dict[Any, int] = {}
    return np.array([first.setdefault(key, i) for i, key in enumerate(keys)], dtype=np.int64)


def duplicate_groups(inputs: list[Any], modality: str = "text") -> np.ndarray:
    """A group id per example, the index of the first example with the same content."""
    return first_occurrence([image_key(x) for x in inputs] if modality == "image" else [normalised_text(x) for x in inputs])


def has_copies(groups: np.ndarray) -> bool:
    return len(np.unique(groups)) < len(groups)


def near_duplicate_pairs(features: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """(i, j) rows, i < j, whose centred features' cosine is at least `threshold`; computed block by block so
    memory stays at block x n."""
    centred = features - features.mean(0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    unit = unit.astype(np.float32)
    pairs = []
    for start in range(0, len(unit), block):
        sims = unit[start : start + block] @ unit.T
        rows, cols = np.nonzero(sims >= threshold)
        rows = rows + start
        keep = cols > rows
        pairs.append(np.stack([rows[keep], cols[keep]], 1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def preview(item: Any, width: int = 80) -> str:
    if isinstance(item, np.ndarray):
        return f"image {item.shape}"
    text = " ".join(str(item).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def inspect(
    inputs: list[Any],
    labels: np.ndarray,
    label_names: list[str],
    groups: np.ndarray,
    modality: str = "text",
    token_counts: np.ndarray | None = None,
    max_length: int | None = None,
    empty_rows: list[int] | None = None,
    imbalance_handling: str = "",
) -> dict[str, Any]:
    """The findings on one dataset as a JSON-ready dict; `warnings` holds one line per problem worth reading.
    `imbalance_handling` says what training does about imbalanced classes, quoted after that warning."""
    counts = label_counts(labels, len(label_names))
    present = counts[counts > 0]
    sizes = np.bincount(groups, minlength=len(groups))
    copied = np.flatnonzero(sizes > 1)
    keys = np.array(label_keys(labels, label_names), dtype=object)  # a multi-label example's whole set of labels
    conflicting = [g for g in copied if len(set(keys[groups == g])) > 1]
    findings: dict[str, Any] = {
        "examples": len(inputs),
        "class_counts": {name: int(c) for name, c in zip(label_names, counts)},
        "imbalance_ratio": float(present.max() / present.min()),
        "exact_duplicates": {
            "groups": len(copied),
            "extra_copies": int(sizes[copied].sum() - len(copied)),
            "largest": [{"input": preview(inputs[g]), "copies": int(sizes[g])} for g in sorted(copied, key=lambda g: -sizes[g])[:SHOWN]],
        },
        "conflicting_labels": {
            "groups": len(conflicting),
            "examples": [
                {
                    "input": preview(inputs[g]),
                    "labels": dict(Counter(keys[groups == g].tolist())),
                }
                for g in conflicting[:SHOWN]
            ],
        },
        "empty_dropped": {"count": len(empty_rows or []), "rows": list((empty_rows or [])[:SHOWN])},
    }
    warnings = []
    if modality == "text":
        words = np.array([len(str(t).split()) for t in inputs])
        short = np.flatnonzero(words < SHORT_WORDS)
        findings["short"] = {"under_words": SHORT_WORDS, "count": len(short), "examples": [preview(inputs[i]) for i in short[:SHOWN]]}
        if token_counts is not None and max_length is not None:
            truncated = float(np.mean(token_counts > max_length))
            findings["truncated"] = {
                "max_length": max_length,
                "share": truncated,
                "median_tokens": float(np.median(token_counts)),
                "p95_tokens": float(np.percentile(token_counts, 95)),
            }
            if truncated > 0.05:
                warnings.append(
                    f"{truncated:.0%} of the texts are longer than --max-length {max_length} tokens and are cut "
                    f"(median {np.median(token_counts):.0f}, 95th percentile {np.percentile(token_counts, 95):.0f})"
                )
    if findings["empty_dropped"]["count"]:
        warnings.append(f"{findings['empty_dropped']['count']} empty input(s) left out (rows {shown_rows(empty_rows)})")
    if copied.size:
        warnings.append(
            f"{len(copied)} group(s) of exact duplicates ({findings['exact_duplicates']['extra_copies']} extra copies): "
            "each group is kept on one side of every split"
        )
    if conflicting:
        warnings.append(f"{len(conflicting)} input(s) appear with conflicting labels")
    for name in (name for name in label_names if name.casefold() in MISSING_MARKERS):
        warnings.append(f"class '{name}' is how a missing label is often written; if those rows have no label, remove them")
    if findings["imbalance_ratio"] > SEVERE_IMBALANCE:
        handling = f": {imbalance_handling}" if imbalance_handling else ""
        warnings.append(f"classes are imbalanced {findings['imbalance_ratio']:.1f}:1 (largest to smallest){handling}")
    findings["warnings"] = warnings
    return findings


def shown_rows(rows: list[int] | None) -> str:
    """The first rows of a list, for a warning."""
    rows = rows or []
    shown = ", ".join(str(r) for r in rows[:SHOWN])
    return shown + (", ..." if len(rows) > SHOWN else "")


def describe(findings: dict[str, Any]) -> list[str]:
    """The findings as lines for a terminal or a report, the problems first."""
    lines = list(findings["warnings"]) or ["no problem found"]
    counts = ", ".join(f"{k}: {v}" for k, v in findings["class_counts"].items())
    lines.append(f"{findings['examples']} examples; classes {counts}; imbalance {findings['imbalance_ratio']:.1f}:1")
    exact = findings["exact_duplicates"]
    lines.append(f"exact duplicates: {exact['groups']} group(s), {exact['extra_copies']} extra copies")
    lines += [f"  {e['copies']}x  {e['input']}" for e in exact["largest"]]
    conflicts = findings["conflicting_labels"]
    lines.append(f"conflicting labels: {conflicts['groups']} input(s)")
    lines += [f"  {e['labels']}  {e['input']}" for e in conflicts["examples"]]
    near = findings.get("near_duplicates")
    if near is not None:
        lines.append(f"near-duplicates (cosine >= {near['cosine_at_least']}): {near['pairs']} pair(s)")
        lines += [f"  {e['a']}  ~  {e['b']}" for e in near["examples"]]
    removed = findings.get("removed_from_training", {})
    if any(removed.values()):
        lines.append("left out of training: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in removed.items() if v))
    if "short" in findings:
        lines.append(f"texts under {findings['short']['under_words']} words: {findings['short']['count']}")
    if "truncated" in findings:
        t = findings["truncated"]
        lines.append(f"texts cut at {t['max_length']} tokens: {t['share']:.1%} (median {t['median_tokens']:.0f} tokens)")
    issues = findings.get("label_issues")
    if issues is not None:
        lines.append(f"likely label errors (cleanlab): {issues['flagged']}")
        lines += [
            f"  {i['file']} row {i['row']}: {i['given_label']} -> {i['suggested_label']} ({i['score']:.3f})  {i['input']}"
            for i in issues["top"]
        ]
    return lines
