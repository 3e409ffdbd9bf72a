"""Metrics against values computed by hand, on a case where accuracy and macro-F1 disagree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferlab.evaluation.metrics import classification_metrics, per_class_report


def _onehot_probs(pred, num_classes, confidence=0.9):
    probs = np.full((len(pred), num_classes), (1 - confidence) / (num_classes - 1))
    probs[np.arange(len(pred)), pred] = confidence
    return probs


def test_majority_class_predictor():
    labels = np.array([0] * 9 + [1])
    probs = _onehot_probs(np.zeros(10, dtype=int), 2)
    m = classification_metrics(labels, probs, 2)
    assert m["accuracy"] == 0.9
    # class 0: P = 0.9, R = 1 -> F1 = 2*0.9/1.9; class 1: F1 = 0
    assert math.isclose(m["macro_f1"], (2 * 0.9 / 1.9 + 0) / 2)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0  # positive class never predicted
    assert m["mcc"] == 0.0
    assert m["auroc"] == 0.5  # constant scores


def test_binary_values_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    # scores above 0.5 predict [1, 1, 0, 0, 0, 1, 0, 1]: TP=3 FN=1 FP=1 TN=3
    scores = np.array([0.9, 0.8, 0.4, 0.1, 0.2, 0.7, 0.3, 0.6])
    probs = np.stack([1 - scores, scores], 1)
    m = classification_metrics(labels, probs, 2)
    assert m["accuracy"] == 6 / 8
    assert m["precision"] == 3 / 4 and m["recall"] == 3 / 4 and m["f1"] == 3 / 4
    assert math.isclose(m["mcc"], (3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4))
    # AUROC: pairs (pos, neg) ranked correctly: positives 0.9 0.8 0.4 0.6 vs negatives 0.1 0.2 0.7 0.3
    correct = sum(p > n for p in (0.9, 0.8, 0.4, 0.6) for n in (0.1, 0.2, 0.7, 0.3))
    assert math.isclose(m["auroc"], correct / 16)


def test_multiclass_macro_and_confusion():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(labels, _onehot_probs(pred, 3), 3)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert math.isclose(m["macro_f1"], sum(f1) / 3)
    report = per_class_report(labels, _onehot_probs(pred, 3), ["a", "b", "c"])
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": f1[1], "support": 2}


def test_macro_f1_leaves_out_a_class_the_test_set_never_asks_about():
    """Three classes; the test set holds only a and b. Never predicting c is not a mistake (its F1 is 0/0, left out:
    macro-F1 is the mean of a's and b's); predicting c once is (its F1 is 0, and counts)."""
    labels = np.array([0, 0, 1, 1])
    m = classification_metrics(labels, _onehot_probs(np.array([0, 0, 1, 0]), 3), 3)
    f1_a, f1_b = 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5
    assert math.isclose(m["macro_f1"], (f1_a + f1_b) / 2) and math.isclose(m["f1"], m["macro_f1"])
    # precision a 2/3, b 1; recall a 1, b 1/2; c has neither (0/0) and is left out of both
    assert math.isclose(m["precision"], (2 / 3 + 1) / 2) and math.isclose(m["recall"], (1 + 0.5) / 2)
    m = classification_metrics(labels, _onehot_probs(np.array([0, 0, 1, 2]), 3), 3)
    assert math.isclose(m["macro_f1"], (1.0 + 2 * 1 * 0.5 / 1.5 + 0.0) / 3)
    # c predicted once but absent: precision 0 and recall 0 (0/0 counted as 0, as its F1), both averaged over 3
    assert math.isclose(m["precision"], (1 + 1 + 0) / 3) and math.isclose(m["recall"], (1 + 0.5 + 0) / 3)
    multi = classification_metrics(np.array([[1, 0, 0], [0, 1, 0]]), np.array([[0.9, 0.1, 0.1], [0.2, 0.8, 0.3]]), 3)
    assert multi["macro_f1"] == 1.0  # label c: in no row, never predicted


def test_auroc_leaves_out_a_missing_class_and_is_undefined_with_one():
    """Class c is absent: the mean of a's and b's one-vs-rest AUROC, counted pair by pair. One class alone: undefined."""
    probs = np.array([[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.4, 0.4, 0.2], [0.2, 0.45, 0.35]])
    m = classification_metrics(np.array([0, 0, 1, 1]), probs, 3)
    # a: positives 0.6, 0.3 against negatives 0.4, 0.2 -> 3 of 4 pairs; b: 0.4, 0.45 against 0.3, 0.5 -> 2 of 4
    assert math.isclose(m["auroc"], (3 / 4 + 2 / 4) / 2)
    full = np.array([0, 1, 2, 2])
    with_every_class = classification_metrics(full, probs, 3)["auroc"]
    from sklearn.metrics import roc_auc_score

    assert math.isclose(with_every_class, roc_auc_score(full, probs, multi_class="ovr"))  # scikit-learn's own, all present
    assert math.isnan(classification_metrics(np.array([1, 1]), probs[:2], 3)["auroc"])
    assert math.isnan(classification_metrics(np.array([1, 1]), probs[:2, :2] / probs[:2, :2].sum(1, keepdims=True), 2)["auroc"])


@pytest.mark.parametrize("num_classes", [2, 4])
def test_one_metric_alone_equals_its_value_among_all(num_classes):
    """What a cross-validation scorer computes (one metric) matches the full table, class absent from the labels included."""
    from transferlab.evaluation.metrics import metric_value

    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes - 1, 50)  # the last class never occurs
    probs = rng.dirichlet(np.ones(num_classes), 50)
    every = classification_metrics(labels, probs, num_classes)
    for metric, value in every.items():
        alone = metric_value(labels, probs, num_classes, metric)
        assert alone == value or (np.isnan(alone) and np.isnan(value))


def test_the_scorer_computes_only_the_metric_it_scores(monkeypatch):
    """The probe's C search calls it once per fold and C: the other metrics (AUROC above all) are not computed."""
    from sklearn.linear_model import LogisticRegression

    from transferlab.evaluation import metrics

    def no_auroc(*args):
        raise AssertionError("AUROC computed for an accuracy scorer")

    monkeypatch.setattr(metrics, "_auroc", no_auroc)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, 60)
    model = LogisticRegression().fit(x, y)
    assert metrics.MetricScorer("accuracy", 2)(model, x, y) == (model.predict(x) == y).mean()
