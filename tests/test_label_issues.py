"""Label issues (evaluation/label_issues.py): injected label flips are found, probabilities are truly out-of-fold,
and tiny or degenerate input gives a frame rather than an exception."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferlab.errors import UserError
from transferlab.evaluation.label_issues import LABEL_ISSUE_COLUMNS, find_label_issues, out_of_fold_probabilities
from transferlab.evaluation.probe import ProbeSettings

SETTINGS = ProbeSettings(c_grid=(0.01, 0.1, 1.0, 10.0), folds=5, seed=0)


def _clusters(seed: int, n: int, classes: int, d: int = 8, spread: float = 1.0):
    """Gaussian clusters around well-separated centres (distance 8 between any two)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = np.eye(classes, d) * 8 / np.sqrt(2)
    return centres[y] + rng.normal(scale=spread, size=(n, d)), y


def _flip(y: np.ndarray, count: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(y), size=count, replace=False))
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, classes, size=count)) % classes  # always another class
    return noisy, flipped


def test_injected_flips_are_found_among_three_classes():
    """15 of 300 labels flipped to another class, on three draws of the data.

    cleanlab's flagged set is conservative here: over 12 draws it held 10 to 15 of the 15 flips (mean 13.4)
    and no other row, while the 15 lowest label quality scores over all rows were the 15 flips every time.
    """
    found, top_hits = 0, []
    for draw in range(3):
        x, y = _clusters(draw, 300, 3)
        noisy, flipped = _flip(y, 15, 3, seed=100 + draw)
        assert (noisy[flipped] != y[flipped]).all() and (noisy != y).sum() == 15
        probs = out_of_fold_probabilities(x, noisy, 3, SETTINGS)
        assert probs.shape == (300, 3)
        np.testing.assert_allclose(probs.sum(1), 1.0)
        issues = find_label_issues(probs, noisy, ["a", "b", "c"])
        assert tuple(issues.columns) == LABEL_ISSUE_COLUMNS
        assert issues["score"].is_monotonic_increasing  # most likely wrong first
        flips = set(flipped.tolist())
        found += len(flips & set(issues["row"].tolist()))
        top_hits.append(len(flips & set(issues["row"].head(15).tolist())))
        assert len(flips & set(issues["row"].tolist())) >= 0.9 * len(issues)  # few false alarms on clean clusters
        # the suggestion for a flipped row is its true class
        by_row = issues.set_index("row")
        hits = [r for r in flipped if r in by_row.index]
        assert sum(by_row.loc[r, "suggested_label"] == "abc"[y[r]] for r in hits) >= 0.9 * len(hits)
    assert found >= 0.8 * 45
    assert min(top_hits) >= 0.7 * 15


def test_probabilities_are_out_of_fold():
    """A point inside class a's cluster, labelled b, with a feature of its own (zero for every other row).

    Fitted with that row, a weakly regularised regression puts a large weight on the private feature and
    agrees with the wrong label; a model that never saw the row cannot, and must call it class a.
    """
    x, y = _clusters(2, 120, 2)
    x = np.hstack([x, np.zeros((len(x), 1))])
    odd = np.append(x[y == 0].mean(0)[:-1], 5.0)
    x, y = np.vstack([x, odd]), np.append(y, 1)
    settings = ProbeSettings(c_grid=(1e4,), folds=5, seed=0)
    in_fold = make_pipeline(StandardScaler(), LogisticRegression(C=1e4, max_iter=3000)).fit(x, y).predict_proba(x)
    assert in_fold[-1, 1] > 0.9  # the test can fail: in-fold probabilities memorise the label
    probs = out_of_fold_probabilities(x, y, 2, settings)
    assert probs[-1, 1] < 0.1
    issues = find_label_issues(probs, y, ["a", "b"])
    assert issues["row"].iloc[0] == len(y) - 1
    assert issues["suggested_label"].iloc[0] == "a"


def test_copies_of_a_mislabelled_row_are_predicted_without_each_other():
    """The odd row above, copied three times (as a duplicated row of a user's file). Without groups a copy sits in
    every fold's fitted rows and teaches the probe the wrong label; with the copies as one group, none is."""
    x, y = _clusters(2, 120, 2)
    x = np.hstack([x, np.zeros((len(x), 1))])
    odd = np.append(x[y == 0].mean(0)[:-1], 5.0)
    x, y = np.vstack([x, odd, odd, odd]), np.append(y, [1, 1, 1])
    groups = np.append(np.arange(120), [120, 120, 120])
    settings = ProbeSettings(c_grid=(1e4,), folds=5, seed=0)
    leaked = out_of_fold_probabilities(x, y, 2, settings)
    assert (leaked[-3:, 1] > 0.9).all()  # the test can fail: ungrouped folds memorise the copies' label
    probs = out_of_fold_probabilities(x, y, 2, settings, groups)
    assert (probs[-3:, 1] < 0.1).all()
    issues = find_label_issues(probs, y, ["a", "b"])
    assert set(issues["row"].head(3)) == {120, 121, 122}


def test_binary_with_string_label_names():
    x, y = _clusters(3, 200, 2)
    noisy, flipped = _flip(y, 8, 2, seed=4)
    probs = out_of_fold_probabilities(x, noisy, 2, SETTINGS)
    assert probs.shape == (200, 2)
    issues = find_label_issues(probs, noisy, ["negative", "positive"])
    found = [r for r in flipped if r in set(issues["row"])]
    assert len(found) >= 6  # of 8 (found 6 when written)
    by_row = issues.set_index("row")
    for r in found:
        assert by_row.loc[r, "given_label"] == ["negative", "positive"][noisy[r]]
        assert by_row.loc[r, "suggested_label"] == ["negative", "positive"][y[r]]
    assert issues["given_label"].map(type).eq(str).all()


def test_tiny_data_and_unpredicted_classes_give_frames():
    x, y = _clusters(5, 12, 3)
    probs = out_of_fold_probabilities(x, y, 3, SETTINGS)  # 4 per class: 4 folds
    assert probs.shape == (12, 3) and np.isfinite(probs).all()
    issues = find_label_issues(probs, y, ["a", "b", "c"])
    assert tuple(issues.columns) == LABEL_ISSUE_COLUMNS
    # the probabilities never predict class c: its rows are flagged (score 0) and nothing raises; cleanlab
    # leaves at least one row of each class unflagged (`min_examples_per_class=1`)
    never_c = np.column_stack([np.full(12, 0.6), np.full(12, 0.4), np.zeros(12)])
    issues = find_label_issues(never_c, y, ["a", "b", "c"])
    flagged_c = issues[issues["given_label"] == "c"]
    assert set(flagged_c["row"]) < set(np.flatnonzero(y == 2).tolist()) and len(flagged_c) == 3
    assert (flagged_c["score"] == 0).all() and (flagged_c["suggested_label"] == "a").all()
    # degenerate for cleanlab (a single row): an empty frame that says why
    single = find_label_issues(never_c[:1], np.array([1]), ["a", "b", "c"])
    assert single.empty and tuple(single.columns) == LABEL_ISSUE_COLUMNS and "cleanlab" in single.attrs["skipped"]
    empty = find_label_issues(np.zeros((0, 3)), np.array([], dtype=int), ["a", "b", "c"])
    assert empty.empty and tuple(empty.columns) == LABEL_ISSUE_COLUMNS


def test_absent_class_gets_zero_probability_and_single_example_class_is_refused():
    x, y = _clusters(6, 60, 2)
    probs = out_of_fold_probabilities(x, y, 3, SETTINGS)  # class 2 is listed but has no rows
    assert probs.shape == (60, 3) and (probs[:, 2] == 0).all()
    with pytest.raises(UserError, match="at least 2 examples"):
        out_of_fold_probabilities(x, np.append(y[:-1], 2), 3, SETTINGS)


def test_rows_map_positions_to_the_callers_indices():
    x, y = _clusters(7, 150, 3)
    noisy, _ = _flip(y, 10, 3, seed=8)
    probs = out_of_fold_probabilities(x, noisy, 3, SETTINGS)
    plain = find_label_issues(probs, noisy, ["a", "b", "c"])
    rows = np.random.default_rng(9).permutation(10_000)[:150]
    mapped = find_label_issues(probs, noisy, ["a", "b", "c"], rows=rows)
    assert len(plain) > 0
    assert mapped["row"].tolist() == rows[plain["row"].to_numpy()].tolist()
    assert mapped.drop(columns="row").equals(plain.drop(columns="row"))
    with pytest.raises(ValueError, match="rows"):
        find_label_issues(probs, noisy, ["a", "b", "c"], rows=rows[:-1])
