"""Classification metrics, all from scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    make_scorer,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

HEADLINE_METRICS = ("accuracy", "macro_f1", "precision", "recall", "f1", "auroc", "mcc")


def classification_metrics(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[str, float]:
    """Scalar metrics. precision/recall/f1 are for the positive class when binary, macro-averaged otherwise."""
    labels = np.asarray(labels)
    predicted = probs.argmax(-1)
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


def sklearn_scorer(metric: str, num_classes: int) -> str | object:
    """The scikit-learn scorer that computes `metric` the way `classification_metrics` does."""
    binary = num_classes == 2
    return {
        "accuracy": "accuracy",
        "macro_f1": "f1_macro",
        "precision": "precision" if binary else "precision_macro",
        "recall": "recall" if binary else "recall_macro",
        "f1": "f1" if binary else "f1_macro",
        "auroc": "roc_auc" if binary else "roc_auc_ovr",
        "mcc": make_scorer(matthews_corrcoef),
    }[metric]


def _auroc(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """One-vs-rest when multi-class; NaN when a class is absent from `labels` (AUROC is undefined there)."""
    if len(np.unique(labels)) < num_classes:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(num_classes))))


def per_class_report(labels: np.ndarray, probs: np.ndarray, label_names: list[str]) -> dict:
    """Per-class precision / recall / F1 / support and the confusion matrix (rows: true, columns: predicted)."""
    predicted = probs.argmax(-1)
    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    return {
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }
