"""Stratified splits with a fixed seed: one hold-out split, or K cross-validation folds.

A split is three index arrays into one dataset, so that every fold and seed of a comparison
shares a single tokenisation of the examples it uses. Given duplicate groups (data/checks.py), all
copies of an input land on the same side: whole groups are drawn, stratified by their label, in the
spirit of scikit-learn's `StratifiedGroupKFold` (which makes the folds). Without copies the splits are
scikit-learn's plain stratified ones. Multi-label data is split by iterative stratification (Sechidis et al. 2011,
the `iterative-stratification` package), which keeps each label's share on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from transferlab.data.checks import has_copies
from transferlab.data.sources import LabeledData, is_multi_label
from transferlab.errors import UserError
from transferlab.settings import DEFAULT_N_TRAIN

DEFAULT_N_TEST = 1000
DEFAULT_TEST_FRACTION = 0.2
HOLD_OUT_FLOOR = 2  # examples of a class a hold-out split's training side needs: one to train on, one to validate
LEAST_PER_CLASS = HOLD_OUT_FLOOR + 1  # and one to test


@dataclass
class Split:
    data: LabeledData
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    removed: int = 0  # training examples left out because they (nearly) duplicate a test example
    removed_from_validation: int = 0  # given validation examples left out because they copy a given test example
    given_test: bool = False  # the test examples are the user's own file, which may lack classes

    def part(self, name: str) -> LabeledData:
        return self.data.subset(getattr(self, name))

    def summary(self) -> dict[str, dict[str, int]]:
        return {name: self.part(name).class_counts() for name in ("train", "val", "test")}


def _stratified_take(
    labels: np.ndarray,
    pool: np.ndarray,
    size: int,
    seed: int,
    what: str,
    groups: np.ndarray | None = None,
    floor: int = 0,
    keep: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest) indices of `pool`, `size` of them taken with class proportions kept, except that every class
    has at least `floor` taken and `keep` left where its size allows (see `_with_floors`).

    With copies in the pool whole groups are taken, as many as make `size` examples on average, each
    group stratified by its most common label, so `taken` is near `size` rather than exactly it.
    """
    if size >= len(pool):
        return pool, pool[:0]
    units, unit_labels = pool, labels[pool]
    grouped = groups is not None and has_copies(groups[pool])
    multi = is_multi_label(labels)
    if grouped:
        units, inverse = np.unique(groups[pool], return_inverse=True)
        unit_labels = _group_labels(labels[pool], inverse, len(units))
        classes = 1 if multi else len(np.unique(unit_labels))
        size = round(size * len(units) / len(pool))
        if len(units) - size < classes:  # the rest could not hold a group of every class: take them all
            return pool, pool[:0]
        size = max(size, classes)
    try:
        if multi:
            if size >= len(units):
                return pool, pool[:0]
            splitter = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=size, test_size=len(units) - size, random_state=seed)
            taken = units[next(splitter.split(units, unit_labels))[0]]
        else:
            classes, sizes = np.unique(unit_labels, return_counts=True)
            if np.clip(np.minimum(floor, sizes - keep), 0, None).sum() > size:
                raise UserError(
                    f"a {what} of {size} cannot hold {floor} examples of each of the {len(classes)} classes: give a larger size"
                )
            taken = units[_with_floors(_proportional(unit_labels, size, seed), unit_labels, floor, keep, seed)]
    except ValueError as err:
        raise UserError(f"cannot draw a stratified {what} of {size} {'groups of ' if grouped else ''}examples: {err}") from None
    chosen = np.isin(groups[pool] if grouped else pool, taken)
    return np.sort(pool[chosen]), np.sort(pool[~chosen])


def _proportional(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A mask of `size` positions drawn with class proportions kept: scikit-learn's stratified draw where it takes
    the classes (two members or more each, and room for one of each on both sides), else each class's share rounded
    down and the rest of `size` to the largest remainders, ties broken at random."""
    chosen = np.zeros(len(labels), dtype=bool)
    try:
        taken, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    except ValueError:
        rng = np.random.default_rng(seed)
        classes, counts = np.unique(labels, return_counts=True)
        share = size * counts / len(labels)
        quota = np.floor(share).astype(int)
        quota[np.lexsort((rng.random(len(classes)), quota - share))[: size - quota.sum()]] += 1
        taken = np.concatenate([rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)])
    chosen[taken] = True
    return chosen


def _with_floors(taken: np.ndarray, labels: np.ndarray, floor: int, keep: int, seed: int) -> np.ndarray:
    """`taken` (a mask) changed so that each class has at least min(floor, its size - keep) members taken and
    min(keep, its size - floor) left, the total unchanged: a unit moved for a short class is traded for one of the
    class with the most to spare on that side.

    A proportional draw rounds a rare class's share down, to nothing when it is below one, and then the class
    cannot be validated or tested. No scikit-learn splitter takes a per-class minimum, so the trade is written here.
    """
    rng = np.random.default_rng(seed)
    taken = taken.copy()
    classes, sizes = np.unique(labels, return_counts=True)
    for side, least, other in ((True, floor, keep), (False, keep, floor)):
        want = np.clip(np.minimum(least, sizes - other), 0, None)
        for c, needed in zip(classes, want):
            on_side = (taken == side) & (labels == c)
            short = needed - int(on_side.sum())
            if short <= 0:
                continue
            taken[rng.choice(np.flatnonzero((taken != side) & (labels == c)), short, replace=False)] = side
            for _ in range(short):
                spare = np.array([((taken == side) & (labels == k)).sum() - w if k != c else 0 for k, w in zip(classes, want)])
                if spare.max() <= 0:
                    break
                donor = classes[int(spare.argmax())]
                taken[rng.choice(np.flatnonzero((taken == side) & (labels == donor)))] = not side
    return taken


def _group_labels(labels: np.ndarray, inverse: np.ndarray, groups: int) -> np.ndarray:
    """One label per group of copies to stratify by: its most common class, or for multi-label data every label
    any copy carries."""
    if is_multi_label(labels):
        merged = np.zeros((groups, labels.shape[1]), dtype=labels.dtype)
        np.maximum.at(merged, inverse, labels)
        return merged
    votes = np.zeros((groups, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(votes, (inverse, labels), 1)
    return votes.argmax(1)


def validation_take(
    labels: np.ndarray, pool: np.ndarray, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices of `pool`: `val_fraction` of it stratified, at least one of each class on
    either side where the class has two, so that a rare class is neither rounded out of validation nor taken
    whole from training (a class with one member stays in training)."""
    classes = labels.shape[1] if is_multi_label(labels) else len(np.unique(labels))
    size = max(classes, round(val_fraction * len(pool)))
    return _stratified_take(labels, pool, size, seed, "validation set", groups, floor=1, keep=1)


def _carve_validation(
    data: LabeledData,
    train: np.ndarray,
    test: np.ndarray,
    val_fraction: float,
    seed: int,
    n_train: int,
    groups: np.ndarray | None = None,
    given_test: bool = False,
) -> Split:
    val, fit = validation_take(data.labels, train, val_fraction, seed, groups)
    if len(fit) == 0:
        raise UserError(f"--n-train {n_train} is too small to keep a validation set")
    return checked(Split(data, fit, val, test, given_test=given_test))


def checked(split: Split) -> Split:
    """Every class must be present in each part; every label of multi-label data in the training part (a label
    absent from validation keeps the default threshold, and from test is left out of the per-label AUROC). A test
    file the user gave is theirs to choose: it may lack classes (the data checks say which)."""
    for name, counts in split.summary().items():
        missing = [c for c, n in counts.items() if n == 0]
        if (split.data.multi_label and name != "train") or (split.given_test and name == "test"):
            continue
        if missing:
            raise UserError(f"the {name} set has no example of class {', '.join(missing)}: give more data or a larger --n-train/--n-test")
    return split


def restore_classes(split: Split, groups: np.ndarray) -> Split:
    """After examples leave a split's training side, a class may be gone from training or from validation while the
    other keeps two or more of it: the first of those, with its copies, moves over."""
    if split.data.multi_label:
        return split
    labels = split.data.labels
    for source, target in (("val", "train"), ("train", "val")):
        have, lack = getattr(split, source), getattr(split, target)
        for label in np.setdiff1d(labels[have], labels[lack]):
            members = have[labels[have] == label]
            moved = have[groups[have] == groups[members[0]]]
            if len(members) > np.isin(members, moved).sum():
                have, lack = np.setdiff1d(have, moved), np.union1d(lack, moved)
        setattr(split, source, have)
        setattr(split, target, lack)
    return split


def stratified_split(
    data: LabeledData,
    n_train: int | None = None,
    n_test: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> Split:
    """Test first, then train from the rest; validation is carved out of train.

    `n_train` counts every labelled example the strategies may learn from, validation included,
    so that a user with N labels is compared honestly against a script given the same N.
    Left as None, sizes default to 2,000 training and 1,000 test examples, or less on a small dataset.
    """
    total = len(data)
    if n_test is None:
        n_test = min(DEFAULT_N_TEST, max(len(data.label_names), round(DEFAULT_TEST_FRACTION * total)))
    if n_test >= total:
        raise UserError(f"--n-test {n_test} leaves no training data: the dataset has {total} examples")
    test, pool = _stratified_take(data.labels, np.arange(total), n_test, seed, "test set", groups, floor=1, keep=HOLD_OUT_FLOOR)
    train = _training_pool(data, pool, n_train, seed, groups, floor=HOLD_OUT_FLOOR)
    return _carve_validation(data, train, test, val_fraction, seed, len(train), groups)


def given_test_split(
    data: LabeledData,
    pool: np.ndarray,
    test: np.ndarray,
    val: np.ndarray | None,
    n_train: int | None,
    val_fraction: float,
    seed: int,
    groups: np.ndarray,
) -> Split:
    """The user's own test (and validation) examples, unchanged but for validation examples that copy a test one
    (they would choose checkpoints, and the head would train, on test inputs); training draws from `pool` less every
    example with a copy among them."""
    copies_of_test = 0
    if val is not None:
        kept = val[~np.isin(groups[val], groups[test])]
        val, copies_of_test = kept, len(val) - len(kept)
    held = np.concatenate([test, val if val is not None else test[:0]])
    clean = pool[~np.isin(groups[pool], groups[held])]
    if len(clean) == 0:
        raise UserError("every training example also occurs in the test or validation data")
    train = _training_pool(data, clean, n_train, seed, groups, floor=HOLD_OUT_FLOOR if val is None else 1)
    split = (
        _carve_validation(data, train, test, val_fraction, seed, len(train), groups, given_test=True)
        if val is None
        else checked(Split(data, train, val, test, given_test=True))
    )
    split.removed, split.removed_from_validation = len(pool) - len(clean), copies_of_test
    return split


def _training_pool(
    data: LabeledData, pool: np.ndarray, n_train: int | None, seed: int, groups: np.ndarray | None = None, floor: int = 0
) -> np.ndarray:
    """`n_train` examples of `pool` (all of it by default, up to 2,000), with `floor` of each class where it has them."""
    if n_train is None:
        n_train = min(DEFAULT_N_TRAIN, len(pool))
    if n_train > len(pool):
        raise UserError(f"--n-train {n_train} is more than the {len(pool)} examples available")
    return _stratified_take(data.labels, pool, n_train, seed, "training set", groups, floor=floor)[0]


def stratified_subset(data: LabeledData, n: int, seed: int = 0) -> LabeledData:
    """`n` examples with the class proportions kept (all of them when `n` is the dataset's size or more)."""
    return data.subset(_training_pool(data, np.arange(len(data)), min(n, len(data)), seed))


def cross_validation_splits(
    data: LabeledData, n_train: int | None, folds: int, val_fraction: float = 0.1, seed: int = 0, groups: np.ndarray | None = None
) -> list[Split]:
    """Stratified K-fold over `n_train` examples: each fold tests on its held-out part and trains on the rest.
    With copies among them, whole groups go to a fold (scikit-learn's `StratifiedGroupKFold`)."""
    pool = _training_pool(data, np.arange(len(data)), n_train, seed, groups, floor=0 if data.multi_label else folds)
    grouped = groups is not None and has_copies(groups[pool])
    if data.multi_label:
        return [
            _carve_validation(data, pool[train], pool[test], val_fraction, seed, len(pool), groups)
            for train, test in _multi_label_folds(data.labels[pool], folds, seed, groups[pool] if grouped else None)
        ]
    per_class = _distinct_per_class(data.labels[pool], groups[pool] if grouped else np.arange(len(pool)), len(data.label_names))
    smallest = int(per_class.min())
    if smallest < folds:
        name = data.label_names[int(np.argmin(per_class))]
        what = "distinct inputs" if grouped else "examples"
        raise UserError(f"class '{name}' has {smallest} {what}, fewer than the {folds} folds: use fewer folds or more data")
    if grouped:
        parts = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(pool, data.labels[pool], groups[pool])
    else:
        parts = StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool, data.labels[pool])
    return [_carve_validation(data, pool[train], pool[test], val_fraction, seed, len(pool), groups) for train, test in parts]


def folds_for_classes(labels: np.ndarray, groups: np.ndarray, label_names: list[str], folds: int, n_train: int | None = None) -> int:
    """The folds a cross-validation left to its default takes: `folds`, or fewer so that every fold tests every class:
    no more than the rarest class has distinct inputs, nor than a draw of `n_train` can hold of each class. A class
    needs three, one each to train on, validate and test."""
    per_class = _distinct_per_class(labels, groups, len(label_names))
    smallest = int(per_class.min())
    if smallest < LEAST_PER_CLASS:
        name = label_names[int(per_class.argmin())]
        raise UserError(
            f"class '{name}' has {smallest} distinct example(s): a class needs {LEAST_PER_CLASS}, one each to train on, validate and test"
        )
    per_draw = smallest if n_train is None else n_train // len(label_names)
    if per_draw < LEAST_PER_CLASS:
        raise UserError(
            f"--n-train {n_train} is too few for {len(label_names)} classes: each needs {LEAST_PER_CLASS}, one each to train on, validate and test"
        )
    return min(folds, smallest, per_draw)


def _distinct_per_class(labels: np.ndarray, groups: np.ndarray, classes: int) -> np.ndarray:
    """Distinct inputs of each class: a group of copies counts once, under its first copy's label."""
    return np.bincount(labels[np.unique(groups, return_index=True)[1]], minlength=classes)


def _multi_label_folds(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None):
    """(train, test) positions of iteratively stratified folds; with copies, whole groups are assigned to folds."""
    units, inverse = np.unique(np.arange(len(labels)) if groups is None else groups, return_inverse=True)
    if len(units) < folds:
        raise UserError(f"{len(units)} distinct inputs cannot make {folds} folds: use fewer folds or more data")
    unit_labels = _group_labels(labels, inverse, len(units))
    for _, test_units in MultilabelStratifiedKFold(folds, shuffle=True, random_state=seed).split(unit_labels, unit_labels):
        test = np.isin(inverse, test_units)
        yield np.flatnonzero(~test), np.flatnonzero(test)


def make_imbalanced(data: LabeledData, minority_share: float, seed: int = 0) -> LabeledData:
    """Keep the largest class whole and subsample every other class to `share / (1 - share)` of its size.

    A recipe for studying imbalance on balanced data: with two classes the minority is then exactly
    `minority_share` of the examples (0.1 turns rt-polarity's 4,265 : 4,265 into 4,265 : 474, 9:1).
    """
    if not 0 < minority_share <= 0.5:
        raise UserError(f"--imbalance is the minority share and must be in (0, 0.5], got {minority_share}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(data.labels, minlength=len(data.label_names))
    majority_label, majority = int(counts.argmax()), int(counts.max())
    keep = []
    for label, count in enumerate(counts):
        members = np.flatnonzero(data.labels == label)
        target = count if label == majority_label else max(2, round(majority * minority_share / (1 - minority_share)))
        keep.append(members if target >= count else rng.choice(members, target, replace=False))
    return data.subset(np.sort(np.concatenate(keep)))
