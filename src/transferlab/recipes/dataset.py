"""A run's data, before any training: the files read into one dataset, its duplicate groups, the splits, and
the checks (data/checks.py) with the two that need the frozen backbone: near-duplicates and likely label errors.

Copies never straddle a split: exact copies are grouped before splitting; near-duplicates, known only once the
examples are encoded, are removed from the training side of each split (the test set is never changed); and an
input of the user's own test file that also occurs in the training file leaves training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from transferlab.data.catalog import load_dataset
from transferlab.data.checks import (
    NEAR_DUPLICATE_MAX_SHARE,
    SHOWN,
    duplicate_groups,
    first_occurrence,
    inspect,
    near_duplicate_pairs,
    preview,
    shown_rows,
)
from transferlab.data.sources import LabeledData, concatenate, with_label_names
from transferlab.data.splits import (
    Split,
    checked,
    cross_validation_splits,
    given_test_split,
    make_imbalanced,
    restore_classes,
    stratified_split,
)
from transferlab.errors import UserError

if TYPE_CHECKING:
    from transferlab.backbones import Preprocessor
    from transferlab.catalog import ResolvedAsset
    from transferlab.config import RunConfig


@dataclass
class RunData:
    """The examples of every file in one dataset; `parts` holds each file's indices into it."""

    data: LabeledData
    parts: dict[str, np.ndarray]
    files: dict[str, str]
    groups: np.ndarray  # duplicate group of each example (data/checks.py)
    assets: dict[str, Any]  # where each file came from, with its sha256
    empty_rows: dict[str, list[int]] = field(default_factory=dict)  # each file's rows left out as empty

    def file_and_row(self, index: int) -> tuple[str, int]:
        part = next(name for name, indices in self.parts.items() if index in indices)
        return self.files[part], int(self.data.rows[index])


def load_run_data(config: RunConfig) -> RunData:
    """--dataset, then the optional --validation-dataset and --test-dataset read with the same columns and
    relabelled to the training classes."""

    def read(spec: str) -> LabeledData:
        return load_dataset(
            spec,
            config.text_column,
            config.labels,
            config.modality,
            config.image_column,
            config.skip_bad_images,
            config.label_separator,
        )

    train = read(config.dataset)
    if train.multi_label:  # also where the label cells hold lists, which no option announced
        config.refuse_single_class_options()
    if config.imbalance is not None:
        train = make_imbalanced(train, config.imbalance, config.training.seed)
    files = {"train": config.dataset}
    parts = [train]
    for name, spec in (("validation", config.validation_dataset), ("test", config.test_dataset)):
        if spec is not None:
            part = read(spec)
            if part.multi_label != train.multi_label:
                layouts = ("one class per example", "sets of labels")
                raise UserError(
                    f"{spec}: its labels are {layouts[part.multi_label]}, and {config.dataset}'s are {layouts[train.multi_label]}"
                )
            parts.append(with_label_names(part, train.label_names, spec))
            files[name] = spec
    data, indices = concatenate(parts)
    assets = {"dataset" if name == "train" else f"{name}_dataset": part.asset and part.asset.__dict__ for name, part in zip(files, parts)}
    empty = {name: part.empty_rows for name, part in zip(files, parts)}
    return RunData(data, dict(zip(files, indices)), files, duplicate_groups(data.inputs, data.modality), assets, empty)


def make_splits(config: RunConfig, run: RunData, folds: int) -> list[Split]:
    data, seed = run.data, config.training.seed
    if "test" in run.parts:
        return [
            given_test_split(
                data,
                run.parts["train"],
                run.parts["test"],
                run.parts.get("validation"),
                config.n_train,
                config.val_fraction,
                seed,
                run.groups,
            )
        ]
    if "validation" in run.parts:
        raise UserError("--validation-dataset needs --test-dataset: a run tests on a split of --dataset or on your own test file")
    if folds > 1:
        return cross_validation_splits(data, config.n_train, folds, config.val_fraction, seed, run.groups)
    return [stratified_split(data, config.n_train, config.n_test, config.val_fraction, seed, run.groups)]


@dataclass
class Findings:
    """What the checks found: the JSON-ready summary for results.json and the ranked label issues."""

    summary: dict[str, Any]
    label_issues: pd.DataFrame | None
    used: np.ndarray  # the examples checked, sorted
    # Their frozen pooled features by layer ("last", and "second_to_last" for text), when a check needed them.
    layer_features: dict[str, np.ndarray] | None
    feature_seconds: float = 0.0  # what computing them cost, charged pro rata to a strategy that reuses them
    feature_peak_mb: float = 0.0

    @property
    def features(self) -> np.ndarray | None:
        """The last layer's features: what the checks compare and the head sees by default."""
        return None if self.layer_features is None else self.layer_features["last"]

    def features_of(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.searchsorted(self.used, indices)
        return {layer: values[rows] for layer, values in (self.layer_features or {}).items()}


def check_data(
    config: RunConfig,
    run: RunData,
    splits: list[Split],
    used: np.ndarray,
    encoded: list[dict[str, Any]],
    backbone: ResolvedAsset,
    preprocessor: Preprocessor,
    log,
) -> Findings:
    """Checks on the examples the run uses; removes near-duplicates of test examples from each split's training side."""
    data = run.data
    inputs = [data.inputs[i] for i in used]
    counter = getattr(preprocessor, "token_counts", None)  # text preprocessors count what max_length cuts
    summary = inspect(
        inputs,
        data.labels[used],
        data.label_names,
        first_occurrence(run.groups[used].tolist()),
        data.modality,
        None if counter is None else counter(inputs),
        config.max_length,
        data.empty_rows,
        _imbalance_handling(config),
    )
    if "test" in run.parts and splits[0].removed:
        summary["warnings"].append(f"{splits[0].removed} training input(s) also occur in the test or validation file: left out of training")
    for part, rows in run.empty_rows.items():
        if rows and part != "train":  # the training file's are among the checks above
            summary["warnings"].append(
                f"{len(rows)} empty input(s) of the {part} file {run.files[part]} left out (rows {shown_rows(rows)})"
            )
    absent = [name for name, n in splits[0].part("test").class_counts().items() if n == 0] if "test" in run.parts else []
    if absent and not data.multi_label:
        summary["warnings"].append(
            f"the test file has no example of class {', '.join(absent)}: its per-class scores are empty, and macro-F1 "
            "counts it only where the model predicts it"
        )
    if splits[0].removed_from_validation:
        summary["warnings"].append(
            f"{splits[0].removed_from_validation} validation input(s) also occur in the test file: left out of validation"
        )
    summary["removed_from_training"] = {
        "copies_of_held_out_inputs": splits[0].removed,
        "validation_copies_of_test_inputs": splits[0].removed_from_validation,
    }
    layer_features = None
    wants_near = config.near_duplicate_cosine is not None and data.modality == "text"
    seconds = peak = 0.0
    if wants_near or config.label_issues:
        from transferlab.training.memory import PeakMemory

        started = time.perf_counter()
        with PeakMemory() as memory:
            layer_features = _frozen_features(backbone, data.label_names, config, encoded, preprocessor)
        seconds, peak = time.perf_counter() - started, memory.peak_mb
    features = None if layer_features is None else layer_features["last"]
    if wants_near:
        _drop_near_duplicates(summary, splits, used, run.groups, features, config.near_duplicate_cosine, data.inputs)
    issues = None
    if config.label_issues:
        issues = _label_issues(run, used, features, config.training.seed)
        summary["label_issues"] = {"flagged": len(issues), "top": issues.head(10).to_dict("records")}
    for line in summary["warnings"]:
        log(f"data check: {line}")
    if issues is not None:
        log(f"cleanlab flags {len(issues)} of {len(used)} labels as possibly wrong, ranked in label_issues.csv")
    return Findings(summary, issues, used, layer_features, seconds, peak)


def _imbalance_handling(config: RunConfig) -> str:
    """What the run does about imbalanced classes, in the words of its options."""
    if config.oversample:
        return "--oversample resamples the smaller classes up to the largest"
    if config.class_weights == "none":
        return "trained unweighted (--class-weights none), fine-tuning can learn to leave the small classes out"
    return "the training loss weights each class by N / (C n_c)"


def _frozen_features(
    backbone: ResolvedAsset, label_names: list[str], config: RunConfig, encoded: list[dict[str, Any]], preprocessor: Preprocessor
) -> dict[str, np.ndarray]:
    """The pretrained backbone's pooled features of every example used, by layer: the last (what the checks and the
    head see) and, for text, the one below it, which the head also tries; both come from the same forward pass."""
    import torch

    from transferlab.backbones import build_classifier
    from transferlab.training.inference import default_device, map_batches, pooled_features, training_precision

    model = build_classifier(backbone, label_names, config.pooling).to(default_device())
    batching = (preprocessor.collate, preprocessor.length_of, config.training.eval_batch_size)
    with torch.no_grad(), training_precision(config.training):
        if "second_to_last" not in model.feature_layer_choices:  # e.g. a CNN: its stages differ in width
            return {"last": pooled_features(model, encoded, *batching)}
        states = map_batches(model, encoded, batching[0], lambda m, b: torch.stack(m.pooled_hidden_states(**b)[-2:], 1), *batching[1:])
    return {"second_to_last": np.ascontiguousarray(states[:, 0]), "last": np.ascontiguousarray(states[:, 1])}


def _drop_near_duplicates(
    summary: dict[str, Any], splits: list[Split], used: np.ndarray, groups: np.ndarray, features: np.ndarray, threshold: float, inputs
) -> None:
    """Near-duplicate pairs (not exact copies, which are grouped); in each split, a training or validation
    example whose near-duplicate is a test example leaves training."""
    pairs = used[near_duplicate_pairs(features, threshold)]
    pairs = pairs[groups[pairs[:, 0]] != groups[pairs[:, 1]]]
    share = len(np.unique(pairs)) / len(used)
    summary["near_duplicates"] = {"cosine_at_least": threshold, "pairs": len(pairs), "share_of_examples": share, "examples": []}
    summary["removed_from_training"]["near_duplicates_of_test_inputs"] = 0
    if share > NEAR_DUPLICATE_MAX_SHARE:
        summary["near_duplicates"]["skipped"] = True
        summary["warnings"].append(
            f"near-duplicate check skipped: {share:.0%} of the examples have a neighbour at cosine >= {threshold}, so this "
            "backbone's features do not tell inputs apart"
        )
        return
    removed = 0
    for split in splits:
        in_test = np.isin(pairs, split.test)
        partners = np.concatenate([pairs[in_test[:, 1] & ~in_test[:, 0], 0], pairs[in_test[:, 0] & ~in_test[:, 1], 1]])
        train_out, val_out = np.isin(split.train, partners), np.isin(split.val, partners)
        if not split.data.multi_label:
            _refuse_emptied_classes(split, np.concatenate([split.train[~train_out], split.val[~val_out]]), threshold)
        split.train, split.val = split.train[~train_out], split.val[~val_out]
        out = int(train_out.sum() + val_out.sum())
        split.removed += out
        removed += out
        checked(restore_classes(split, groups))
    summary["near_duplicates"]["examples"] = [{"a": preview(inputs[i]), "b": preview(inputs[j])} for i, j in pairs[:SHOWN]]
    summary["removed_from_training"]["near_duplicates_of_test_inputs"] = removed
    if removed:
        summary["warnings"].append(
            f"{len(pairs)} near-duplicate pair(s) (cosine >= {threshold}); {removed} training example(s) nearly copying "
            f"a test example left out{' (over all folds)' if len(splits) > 1 else ''}"
        )


def _refuse_emptied_classes(split: Split, kept: np.ndarray, threshold: float) -> None:
    """A class whose training side near-copies test examples down to fewer than two cannot be both trained on and
    validated: say so, rather than report a class missing from a part."""
    labels, names = split.data.labels, split.data.label_names
    before = np.bincount(labels[np.concatenate([split.train, split.val])], minlength=len(names))
    after = np.bincount(labels[kept], minlength=len(names))
    emptied = np.flatnonzero((before >= 2) & (after < 2))
    if len(emptied):
        label = emptied[0]
        raise UserError(
            f"{before[label] - after[label]} of the {before[label]} training examples of class '{names[label]}' nearly copy a "
            f"test example (cosine >= {threshold}) and leave training, too few remain to train on and validate: give more "
            "distinct examples, or set near_duplicate_cosine: null in a --config file to keep them"
        )


def _label_issues(run: RunData, used: np.ndarray, features: np.ndarray, seed: int) -> pd.DataFrame:
    """cleanlab's ranking of likely label errors, from the head's probe predicting every example out of fold."""
    from transferlab.evaluation.label_issues import LABEL_ISSUE_COLUMNS, find_label_issues, out_of_fold_probabilities
    from transferlab.settings import TrainingConfig
    from transferlab.strategies.head import FeatureExtraction

    data = run.data
    labels = data.labels[used]
    settings = FeatureExtraction().probe_settings(TrainingConfig(seed=seed))  # the head strategy's own probe
    try:
        probs = out_of_fold_probabilities(features, labels, len(data.label_names), settings, run.groups[used])
    except UserError:  # a class with a single example (copies count once): no out-of-fold model has seen its class
        return pd.DataFrame(columns=["file", *LABEL_ISSUE_COLUMNS, "input"])
    issues = find_label_issues(probs, labels, data.label_names)  # `row` is the position in `used`, mapped below
    positions = issues["row"].to_numpy(dtype=np.int64)
    where = [run.file_and_row(int(used[i])) for i in positions]
    issues.insert(0, "file", [f for f, _ in where])
    issues["row"] = [r for _, r in where]
    issues["input"] = [preview(data.inputs[int(used[i])], 200) for i in positions]
    return issues
