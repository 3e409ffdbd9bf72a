"""The cross-validated linear probe (evaluation/probe.py): warm-started along the C path, it must choose and
score C as independent cold fits do, and fitting probes side by side must not change them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from transferlab.errors import UserError
from transferlab.evaluation.probe import ProbeSettings, fit_probe, fit_probes, out_of_fold_logits

C_GRID = (1e-3, 1e-2, 0.1, 1.0)


def _problem(seed: int, n: int = 300, d: int = 12, classes: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(n, d))
    y = (x[:, :classes] + rng.normal(scale=4.0, size=(n, classes))).argmax(1)
    return x, y


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_scores_every_c_like_cold_fits(classes):
    x, y = _problem(0, classes=classes)
    settings = ProbeSettings(c_grid=C_GRID, folds=5, seed=0)
    probe = fit_probe(x, y, classes, settings)
    scaled = StandardScaler().fit_transform(x)
    cold = {}
    for c in C_GRID:
        scores = []
        for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(scaled, y):
            clf = LogisticRegression(C=c, max_iter=3000).fit(scaled[train], y[train])
            scores.append((clf.predict(scaled[test]) == y[test]).mean())
        cold[c] = float(np.mean(scores))
    assert list(probe.cv_scores) == list(C_GRID)
    np.testing.assert_allclose(list(probe.cv_scores.values()), list(cold.values()), atol=0.01)
    assert probe.cv_scores[probe.chosen_c] == max(probe.cv_scores.values())
    # the refit on every row, with the scaler folded in, is the cold fit at the chosen C
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=probe.chosen_c, max_iter=3000).fit(scaler.transform(x), y)
    logits = x @ probe.coef.T + probe.intercept
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, reference.predict_proba(scaler.transform(x)), atol=2e-3)
    assert probe.log_entries("accuracy")[-1] == {"chosen_C": probe.chosen_c, "best_cv_accuracy": probe.best_score}


def test_probes_side_by_side_equal_one_by_one():
    tasks = [(*_problem(seed), 3, ProbeSettings(c_grid=C_GRID, seed=seed)) for seed in range(3)]
    together, alone = fit_probes(tasks), [fit_probe(*task) for task in tasks]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.coef, b.coef)
        assert a.cv_scores == b.cv_scores and a.chosen_c == b.chosen_c


def test_probe_needs_two_examples_of_every_class():
    x, y = _problem(0, n=20, classes=2)
    y[:] = 0
    y[0] = 1
    with pytest.raises(UserError, match="at least 2 examples of every class"):
        fit_probe(x, y, 2, ProbeSettings(c_grid=C_GRID))


@pytest.mark.parametrize("classes", [2, 3])
def test_out_of_fold_logits_come_from_probes_that_never_saw_the_row(classes):
    x, y = _problem(5, classes=classes)
    settings = ProbeSettings(c_grid=(0.1, 1.0), folds=4, seed=3)
    logits = out_of_fold_logits(x, y, classes, settings, c=0.1)
    assert logits.shape == (len(y), classes)
    for fit_rows, held_out in StratifiedKFold(4, shuffle=True, random_state=3).split(x, y):  # each fold by hand
        scaler = StandardScaler().fit(x[fit_rows])
        clf = LogisticRegression(C=0.1, max_iter=settings.max_iter, random_state=3).fit(scaler.transform(x[fit_rows]), y[fit_rows])
        scores = clf.decision_function(scaler.transform(x[held_out]))
        expected = np.stack([-scores / 2, scores / 2], 1) if classes == 2 else scores
        np.testing.assert_allclose(logits[held_out], expected, rtol=1e-6, atol=1e-8)
    in_sample = fit_probe(x, y, classes, ProbeSettings(c_grid=(0.1,), folds=4, seed=3))
    refit = x @ in_sample.coef.T + in_sample.intercept
    assert (refit.argmax(1) == y).mean() >= (logits.argmax(1) == y).mean()  # rows seen in fitting look easier


@pytest.mark.parametrize("classes", [2, 3])
def test_unstandardised_probe_is_the_plain_regression_on_raw_features(classes):
    """With `standardize` off the probe is scikit-learn's LogisticRegression(C) on the features as they are (SetFit's
    head at C=1), here on unit-length rows whose columns a scaler would stretch; its out-of-fold logits too."""
    x, y = _problem(1, classes=classes)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    settings = ProbeSettings(c_grid=(1.0,), folds=4, seed=2, standardize=False)
    probe = fit_probe(x, y, classes, settings)
    reference = LogisticRegression(C=1.0, max_iter=3000).fit(x, y)
    logits = x @ probe.coef.T + probe.intercept
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, reference.predict_proba(x), atol=5e-3)  # lbfgs's tol 1e-4, from another start
    standardised = fit_probe(x, y, classes, ProbeSettings(c_grid=(1.0,), folds=4, seed=2))
    assert np.abs(standardised.coef - probe.coef).max() > 0.1  # the switch changes the fit
    held_out_logits = out_of_fold_logits(x, y, classes, settings, c=1.0)
    for fit_rows, held_out in StratifiedKFold(4, shuffle=True, random_state=2).split(x, y):
        scores = LogisticRegression(C=1.0, max_iter=3000, random_state=2).fit(x[fit_rows], y[fit_rows]).decision_function(x[held_out])
        expected = np.stack([-scores / 2, scores / 2], 1) if classes == 2 else scores
        np.testing.assert_allclose(held_out_logits[held_out], expected, rtol=1e-5, atol=1e-7)


def test_unstandardised_multi_label_probe_reads_raw_features():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 8))
    y = (x[:, :3] + rng.normal(scale=0.5, size=(200, 3)) > 0).astype(int)
    probe = fit_probe(x, y, 3, ProbeSettings(c_grid=(0.5,), folds=4, standardize=False))
    for j in range(3):
        reference = LogisticRegression(C=0.5, max_iter=3000).fit(x, y[:, j])
        np.testing.assert_allclose(probe.coef[j], reference.coef_[0], atol=1e-3)
        np.testing.assert_allclose(probe.intercept[j], reference.intercept_[0], atol=1e-3)


def _copied_noise(copies: int = 3, n: int = 60, d: int = 40, seed: int = 7):
    """Labels with no relation to the features, each example repeated `copies` times (as oversampling or text
    augmentation repeat them): the only way to score above chance is to meet a copy of the example in training."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), np.tile([0, 1], n // 2)
    rows = np.repeat(np.arange(n), copies)
    return x[rows] + rng.normal(scale=1e-3, size=(len(rows), d)), y[rows], rows


def test_copies_of_an_example_stay_in_one_fold():
    x, y, groups = _copied_noise()
    settings = ProbeSettings(c_grid=(1e-3, 1.0, 100.0), folds=5, seed=0)
    for fit_rows, scored in settings.folds_for(y, 2, groups):
        assert not set(groups[fit_rows]) & set(groups[scored])
        assert set(y[scored]) == {0, 1}  # still stratified
    leaky, grouped = fit_probe(x, y, 2, settings), fit_probe(x, y, 2, settings, groups)
    assert leaky.best_score > 0.9  # copies on both sides: the noise is "learned"
    assert grouped.best_score < 0.7  # 60 coin flips score 0.5 +- 0.065
    held_out = out_of_fold_logits(x, y, 2, settings, c=100.0, groups=groups)
    assert (held_out.argmax(1) == y).mean() < 0.7


def test_folds_count_distinct_examples_not_copies():
    """Three distinct examples of a class, each copied four times, allow three folds, not five."""
    x, y, groups = _copied_noise(copies=4, n=6)
    assert len(ProbeSettings(c_grid=(1.0,), folds=5).folds_for(y, 2, groups)) == 3
    with pytest.raises(UserError, match="copies count once"):
        ProbeSettings(c_grid=(1.0,)).folds_for(y[:8], 2, groups[:8])  # one distinct example of each class


def test_multi_label_probe_keeps_copies_in_one_fold():
    rng = np.random.default_rng(2)
    x, y, groups = _copied_noise(n=80)
    labels = np.stack([y, rng.integers(0, 2, 80)[groups]], 1)  # two noise labels, shared by an example's copies
    settings = ProbeSettings(c_grid=(1e-3, 100.0), folds=4, seed=1)
    leaky, grouped = fit_probe(x, labels, 2, settings), fit_probe(x, labels, 2, settings, groups)
    assert leaky.chosen_c == 100.0 and grouped.chosen_c == 1e-3  # only the leak rewards fitting the noise
