"""Class imbalance: weights for the loss and oversampling of the training examples."""

from __future__ import annotations

import numpy as np
from sklearn.utils import resample
from sklearn.utils.class_weight import compute_class_weight

from transferlab.data.sources import is_multi_label, label_counts
from transferlab.evaluation.metrics import imbalance_ratio
from transferlab.settings import SEVERE_IMBALANCE


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """w_c = N / (C n_c): scikit-learn's 'balanced' weights, which are exactly the usual inverse-frequency formula."""
    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def resolved_class_weights(choice: str, counts: np.ndarray, multi_label: bool = False) -> str:
    """`--class-weights` made concrete: `auto` is balanced beyond SEVERE_IMBALANCE (unweighted, fine-tuning on few
    examples of a class learns to leave it out), else none; multi-label data stays unweighted."""
    if choice != "auto":
        return choice
    return "balanced" if not multi_label and imbalance_ratio(counts) > SEVERE_IMBALANCE else "none"


def loss_class_weights(choice: str, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """The per-class loss weights `--class-weights` asks for on these training labels, or None for plain cross-entropy."""
    resolved = resolved_class_weights(choice, label_counts(labels, num_classes), multi_label=is_multi_label(labels))
    return balanced_class_weights(labels, num_classes) if resolved == "balanced" else None


def oversample(indices: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Every class resampled with replacement up to the largest class's count (training examples only)."""
    by_class = [indices[labels[indices] == c] for c in np.unique(labels[indices])]
    largest = max(len(members) for members in by_class)
    grown = [
        members
        if len(members) == largest
        else np.concatenate([members, resample(members, n_samples=largest - len(members), random_state=seed)])
        for members in by_class
    ]
    return np.sort(np.concatenate(grown))
