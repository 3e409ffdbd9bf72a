"""Are the probabilities honest? Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"),
the expected calibration error and the Brier score.

Temperature scaling divides every logit by one T > 0, fitted on the validation split to minimise the log-loss:
the predicted labels stay the same, only how sure the model says it is changes. scikit-learn fits it
(`CalibratedClassifierCV(method="temperature")` over the frozen model's validation logits); torchmetrics computes
the ECE (15 equal-width confidence bins, weighted by their share of examples) and scikit-learn the Brier score
(squared error of the probability vector against the one-hot label, summed over classes, averaged over examples).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import brier_score_loss
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15
# Fewer validation examples than this leave T at 1: one scalar fitted on a handful of examples swings with each one
# (the trainer's early stopping stops trusting validation at the same size).
MIN_CALIBRATION_EXAMPLES = 50
CALIBRATIONS = ("temperature", "none")


class _GivenLogits(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose inputs are already its logits: lets scikit-learn's calibrator see a model's scores."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.classes_ = np.arange(num_classes)

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> _GivenLogits:
        return self

    def decision_function(self, logits: np.ndarray) -> np.ndarray:
        if self.num_classes == 2:  # scikit-learn reads a binary score x as the logits (-x, x): the same softmax
            return (logits[:, 1] - logits[:, 0]) / 2
        return logits

    def predict(self, logits: np.ndarray) -> np.ndarray:
        return logits.argmax(1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the validation log-loss of softmax(logits / T)."""
    num_classes = logits.shape[1]
    calibrated = CalibratedClassifierCV(FrozenEstimator(_GivenLogits(num_classes)), method="temperature")
    calibrated.fit(logits.astype(np.float64), labels)
    return float(1.0 / calibrated.calibrated_classifiers_[0].calibrators[0].beta_)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(-1, keepdims=True)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(
        multiclass_calibration_error(
            torch.tensor(np.asarray(probs, dtype=np.float32)),
            torch.tensor(np.asarray(labels, dtype=np.int64)),
            probs.shape[1],
            n_bins=ECE_BINS,
        )
    )


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Summed over classes (0 perfect, 2 worst), as Brier defined it; scikit-learn halves it only when asked."""
    return float(brier_score_loss(labels, probs, labels=list(range(probs.shape[1])), scale_by_half=False))


def reliability_bins(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and share of examples (the reliability diagram's bars)."""
    confidence, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, ECE_BINS - 1)  # torchmetrics' bins
    return [
        {
            "confidence": float(confidence[which == b].mean()),
            "accuracy": float(correct[which == b].mean()),
            "share": float((which == b).mean()),
        }
        for b in range(ECE_BINS)
        if (which == b).any()
    ]


def calibration_report(labels: np.ndarray, logits: np.ndarray, temperature: float) -> dict[str, Any]:
    """Test-set calibration before and after dividing the logits by `temperature`."""
    raw, scaled = softmax(logits), softmax(logits, temperature)
    return {
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(labels, raw),
        "brier_uncalibrated": brier_score(labels, raw),
        "reliability_uncalibrated": reliability_bins(labels, raw),
        "reliability": reliability_bins(labels, scaled),
    }
