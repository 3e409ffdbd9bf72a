"""Classification metrics, all from scikit-learn, for single-label classes and for multi-label data (an examples x
labels 0/1 matrix of targets, independent sigmoid probabilities, a decision threshold per label)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    matthews_corrcoef,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from transferlab.data.sources import is_multi_label
from transferlab.settings import HEADLINE_METRICS, IMBALANCED

MULTI_LABEL_THRESHOLD = 0.5  # a label is predicted from this probability on, unless a threshold was tuned for it


def default_metric(counts: np.ndarray, multi_label: bool = False) -> str:
    """The headline metric when none is asked for, from the training labels' class counts: micro-F1 for multi-label
    data; macro-F1 for imbalanced classes, where accuracy (and early stopping by it) rewards the majority; else accuracy."""
    if multi_label:
        return "micro_f1"
    return "macro_f1" if imbalance_ratio(counts) > IMBALANCED else "accuracy"


def imbalance_ratio(counts: np.ndarray) -> float:
    """The largest class count over the smallest (an absent class counts as one)."""
    return float(counts.max() / max(1, counts.min()))


def predicted_labels(probs: np.ndarray, threshold: float | np.ndarray | list[float] | None = None, multi_label: bool = False) -> np.ndarray:
    """The most probable class; with a decision threshold (binary), class 1 when its probability reaches it.
    Multi-label: each label whose probability reaches its own threshold (0.5 where none was tuned)."""
    if multi_label:
        cut = MULTI_LABEL_THRESHOLD if threshold is None else np.asarray(threshold, dtype=float)
        return (probs >= cut).astype(int)
    if threshold is None:
        return probs.argmax(-1)
    return (probs[:, 1] >= threshold).astype(int)


def _macro_f1(y: np.ndarray, predicted: np.ndarray, labels: list[int] | None = None) -> float:
    """F1 averaged over the classes (labels). One that the test set lacks and the model never predicts has no F1 (0/0):
    it is left out of the average (scikit-learn's zero_division=nan) rather than counted as 0, which would mark a
    model down for a class the test set never asked about. One predicted but absent still scores 0."""
    return f1_score(y, predicted, labels=labels, average="macro", zero_division=np.nan)


def _averaged(y: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict:
    """Precision and recall of the positive class when binary, macro-averaged otherwise over the classes the test set
    holds or the model predicts: as in `_macro_f1`, a class with neither (a rare class missing from a fold) has no
    score (0/0) and is left out rather than counted as 0. A class held but never predicted still scores 0 precision."""
    return {"average": "binary"} if num_classes == 2 else {"average": "macro", "labels": np.union1d(y, predicted).tolist()}


# Each single-label metric from (labels, predicted labels, probabilities, number of classes); a table, so that a
# caller that needs one metric (a cross-validation scorer, called per fold and strength) computes that one only.
SINGLE_LABEL_METRICS = {
    "accuracy": lambda y, predicted, probs, k: accuracy_score(y, predicted),
    "macro_f1": lambda y, predicted, probs, k: _macro_f1(y, predicted, list(range(k))),
    "micro_f1": lambda y, predicted, probs, k: accuracy_score(y, predicted),  # one class per example: pooled F1 is accuracy
    "precision": lambda y, predicted, probs, k: precision_score(y, predicted, zero_division=0, **_averaged(y, predicted, k)),
    "recall": lambda y, predicted, probs, k: recall_score(y, predicted, zero_division=0, **_averaged(y, predicted, k)),
    "f1": lambda y, predicted, probs, k: _macro_f1(y, predicted, list(range(k))) if k > 2 else f1_score(y, predicted, zero_division=0),
    "auroc": lambda y, predicted, probs, k: _auroc(y, probs, k),
    "mcc": lambda y, predicted, probs, k: matthews_corrcoef(y, predicted),
}


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, num_classes: int, threshold: float | np.ndarray | list[float] | None = None
) -> dict[str, float]:
    """Scalar metrics. precision/recall/f1 are for the positive class when binary, macro-averaged otherwise;
    labels are decided as `predicted_labels` says (AUROC reads the probabilities alone). Multi-label targets
    (a matrix) get `multi_label_metrics`."""
    return _scored(labels, probs, num_classes, threshold, SINGLE_LABEL_METRICS)


def metric_value(labels: np.ndarray, probs: np.ndarray, num_classes: int, metric: str) -> float:
    """One of `classification_metrics`, computing only that one (a single-label task; multi-label gets all of them)."""
    return _scored(labels, probs, num_classes, None, {metric: SINGLE_LABEL_METRICS[metric]})[metric]


def _scored(
    labels: np.ndarray, probs: np.ndarray, num_classes: int, threshold: float | np.ndarray | list[float] | None, metrics: dict
) -> dict[str, float]:
    """`metrics` (a part of SINGLE_LABEL_METRICS) on single-label targets; `multi_label_metrics` on a matrix of them."""
    labels = np.asarray(labels)
    if is_multi_label(labels):
        return multi_label_metrics(labels.astype(int), probs, threshold)
    predicted = predicted_labels(probs, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return {name: float(score(labels, predicted, probs, num_classes)) for name, score in metrics.items()}


def multi_label_metrics(labels: np.ndarray, probs: np.ndarray, threshold: np.ndarray | list[float] | None = None) -> dict[str, float]:
    """accuracy is subset accuracy (scikit-learn's on indicator matrices), precision/recall/f1 are micro-averaged,
    auroc is the mean of the per-label AUROCs (over labels with both outcomes present), mcc is over every
    (example, label) decision; hamming_loss is the share of wrong label decisions."""
    predicted = predicted_labels(probs, threshold, multi_label=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="micro", zero_division=0)
        macro_f1 = _macro_f1(labels, predicted)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(macro_f1),
        "micro_f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": float(np.nanmean(per_label_auroc(labels, probs))) if labels.any(0).any() else float("nan"),
        "mcc": float(matthews_corrcoef(labels.ravel(), predicted.ravel())),
        "hamming_loss": float(hamming_loss(labels, predicted)),
    }


def per_label_auroc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each label's AUROC; NaN for a label whose examples all carry it or all lack it."""
    both = [len(np.unique(labels[:, j])) == 2 for j in range(labels.shape[1])]
    return np.array([roc_auc_score(labels[:, j], probs[:, j]) if ok else np.nan for j, ok in enumerate(both)])


class MetricScorer:
    """A scikit-learn scorer, `scorer(estimator, x, y)`, that scores with `classification_metrics` itself, so a
    cross-validated choice (the probe's C) optimises exactly the metric the run reports.

    An object rather than a scoring string: scikit-learn 1.9's `LogisticRegressionCV` rebuilds string scorers
    with its own `pos_label` and fails on binary data for "f1_macro" and the other averaged scorers. A
    module-level class pickles into the worker processes that fit probes side by side.
    """

    def __init__(self, metric: str, num_classes: int):
        if metric not in HEADLINE_METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        self.metric = metric
        self.num_classes = num_classes

    def __call__(self, estimator, x: np.ndarray, y: np.ndarray) -> float:
        fitted = estimator.predict_proba(x)
        probs = np.zeros((len(fitted), self.num_classes), dtype=fitted.dtype)
        probs[:, np.asarray(estimator.classes_, dtype=int)] = fitted  # a fold's model knows only the classes it saw
        return metric_value(y, probs, self.num_classes, self.metric)

    def __repr__(self) -> str:
        return f"MetricScorer({self.metric!r}, {self.num_classes})"


def _auroc(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """Multi-class: one-vs-rest, averaged over the classes `labels` hold (scikit-learn's macro "ovr" where all are
    there); a class absent from them has no AUROC, and is left out as macro-F1 leaves it, so that a fold or a
    validation split without a rare class still scores. NaN with fewer than two classes present."""
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))


def per_class_report(
    labels: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: float | np.ndarray | list[float] | None = None
) -> dict:
    """Per-class precision / recall / F1 / support and the confusion matrix (rows: true, columns: predicted).
    Multi-label: per label, with its AUROC and its 2 x 2 confusion counts (no, yes) in place of one matrix."""
    if is_multi_label(labels):
        return _per_label_report(np.asarray(labels, dtype=int), probs, label_names, threshold)
    predicted = predicted_labels(probs, threshold)
    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    return {
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def _per_label_report(labels: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: np.ndarray | list[float] | None) -> dict:
    predicted = predicted_labels(probs, threshold, multi_label=True)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, average=None, zero_division=0)
    auroc = per_label_auroc(labels, probs)
    confusion = multilabel_confusion_matrix(labels, predicted)
    return {
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s), "auroc": float(a), "confusion": c.tolist()}
            for name, p, r, f, s, a, c in zip(label_names, precision, recall, f1, support, auroc, confusion)
        }
    }
