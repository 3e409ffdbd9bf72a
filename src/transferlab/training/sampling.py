"""Class imbalance: weights for the loss and oversampling of the training examples."""

from __future__ import annotations

import numpy as np
from sklearn.utils import resample
from sklearn.utils.class_weight import compute_class_weight


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """w_c = N / (C n_c): scikit-learn's 'balanced' weights, which are exactly the usual inverse-frequency formula."""
    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


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
