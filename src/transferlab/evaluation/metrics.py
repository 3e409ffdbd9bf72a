"""Classification metrics, all from scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from transferlab.settings import HEADLINE_METRICS


def predicted_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The most probable class; with a decision threshold (binary), class 1 when its probability reaches it."""
    if threshold is None:
        return probs.argmax(-1)
    return (probs[:, 1] >= threshold).astype(int)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, num_classes: int, threshold: float | None = None) -> dict[str, float]:
    """Scalar metrics. precision/recall/f1 are for the positive class when binary, macro-averaged otherwise;
    labels are decided as `predicted_labels` says (AUROC reads the probabilities alone)."""
    labels = np.asarray(labels)
    predicted = predicted_labels(probs, threshold)
    classes = list(range(num_classes))
    average = "binary" if num_classes == 2 else "macro"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=classes if average == "macro" else None, average=average, zero_division=0
        )
        macro_f1 = f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(macro_f1),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": _auroc(labels, probs, num_classes),
        "mcc": float(matthews_corrcoef(labels, predicted)),
    }


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
        return classification_metrics(y, probs, self.num_classes)[self.metric]

    def __repr__(self) -> str:
        return f"MetricScorer({self.metric!r}, {self.num_classes})"


def _auroc(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """One-vs-rest when multi-class; NaN when a class is absent from `labels` (AUROC is undefined there)."""
    if len(np.unique(labels)) < num_classes:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(num_classes))))


def per_class_report(labels: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: float | None = None) -> dict:
    """Per-class precision / recall / F1 / support and the confusion matrix (rows: true, columns: predicted)."""
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
