"""Stratified train / validation / test splits with a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from transferlab.data.sources import LabeledTexts
from transferlab.errors import UserError

DEFAULT_N_TRAIN = 2000
DEFAULT_N_TEST = 1000
DEFAULT_TEST_FRACTION = 0.2


@dataclass
class Split:
    train: LabeledTexts
    val: LabeledTexts
    test: LabeledTexts

    def summary(self) -> dict[str, dict[str, int]]:
        return {name: getattr(self, name).class_counts() for name in ("train", "val", "test")}


def _stratified_take(labels: np.ndarray, pool: np.ndarray, size: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest) indices of `pool`, `size` of them taken with class proportions kept."""
    if size >= len(pool):
        return pool, pool[:0]
    try:
        taken, rest = train_test_split(pool, train_size=size, stratify=labels[pool], random_state=seed)
    except ValueError as err:
        raise UserError(f"cannot draw a stratified {what} of {size} examples: {err}") from None
    return np.sort(taken), np.sort(rest)


def stratified_split(
    data: LabeledTexts,
    n_train: int | None = None,
    n_test: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Test first (or the dataset's own test split), then train from the rest; validation is carved out of train.

    `n_train` counts every labelled example the strategies may learn from, validation included,
    so that a user with N labels is compared honestly against a script given the same N.
    Left as None, sizes default to 2,000 training and 1,000 test examples, or less on a small dataset.
    """
    total = len(data)
    everything = np.arange(total)
    if data.own_test is not None:
        test = data.own_test
        if n_test is not None:
            test = test.subset(_stratified_take(test.labels, np.arange(len(test)), n_test, seed, "test set")[0])
        pool = everything
    else:
        if n_test is None:
            n_test = min(DEFAULT_N_TEST, max(len(data.label_names), round(DEFAULT_TEST_FRACTION * total)))
        if n_test >= total:
            raise UserError(f"--n-test {n_test} leaves no training data: the dataset has {total} examples")
        test_idx, pool = _stratified_take(data.labels, everything, n_test, seed, "test set")
        test = data.subset(test_idx)
    if n_train is None:
        n_train = min(DEFAULT_N_TRAIN, len(pool))
    if n_train > len(pool):
        raise UserError(f"--n-train {n_train} is more than the {len(pool)} examples left after the test split")
    train_idx, _ = _stratified_take(data.labels, pool, n_train, seed, "training set")
    n_val = max(len(data.label_names), round(val_fraction * len(train_idx)))
    val_idx, fit_idx = _stratified_take(data.labels, train_idx, n_val, seed, "validation set")
    if len(fit_idx) == 0:
        raise UserError(f"--n-train {n_train} is too small to keep a validation set")
    train, val = data.subset(fit_idx), data.subset(val_idx)
    for name, part in (("training", train), ("validation", val), ("test", test)):
        missing = [c for c, n in part.class_counts().items() if n == 0]
        if missing:
            raise UserError(f"the {name} set has no example of class {', '.join(missing)}: give more data or a larger --n-train/--n-test")
    return Split(train, val, test)
