"""Are the probabilities honest, and where should a binary decision cut them? Temperature scaling (Guo et al. 2017,
"On Calibration of Modern Neural Networks"), the expected calibration error, the Brier score, and the decision
threshold tuned for the headline metric.

Temperature scaling divides every logit by one T > 0, fitted on the validation split to minimise the log-loss:
the predicted labels stay the same, only how sure the model says it is changes. scikit-learn fits it
(`CalibratedClassifierCV(method="temperature")` over the frozen model's validation logits); torchmetrics computes
the ECE (15 equal-width confidence bins, weighted by their share of examples) and scikit-learn the Brier score
(squared error of the probability vector against the one-hot label, summed over classes, averaged over examples).

A binary task scored by F1, macro-F1 or MCC is not best served by predicting the class above 0.5 when the classes
are imbalanced: scikit-learn's `TunedThresholdClassifierCV` picks the cut on the validation probabilities that
maximises that metric there (0.01 steps; the test set is never seen).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import brier_score_loss, f1_score, make_scorer, matthews_corrcoef
from sklearn.model_selection import TunedThresholdClassifierCV
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15
# The headline metrics a tuned threshold serves (accuracy is best at the argmax of calibrated probabilities; AUROC
# does not depend on a threshold; precision or recall alone would push it to an extreme).
THRESHOLD_SCORERS = {
    "f1": make_scorer(f1_score),
    "macro_f1": make_scorer(f1_score, average="macro"),
    "mcc": make_scorer(matthews_corrcoef),
}
THRESHOLD_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)


class _GivenScores(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose inputs are already its scores (logits or probabilities): lets scikit-learn's
    calibrator and threshold tuner work on a model's outputs."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.classes_ = np.arange(num_classes)

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> _GivenScores:
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        return probs

    def decision_function(self, logits: np.ndarray) -> np.ndarray:
        if self.num_classes == 2:  # scikit-learn reads a binary score x as the logits (-x, x): the same softmax
            return (logits[:, 1] - logits[:, 0]) / 2
        return logits

    def predict(self, logits: np.ndarray) -> np.ndarray:
        return logits.argmax(1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the validation log-loss of softmax(logits / T)."""
    num_classes = logits.shape[1]
    calibrated = CalibratedClassifierCV(FrozenEstimator(_GivenScores(num_classes)), method="temperature")
    calibrated.fit(logits.astype(np.float64), labels)
    return float(1.0 / calibrated.calibrated_classifiers_[0].calibrators[0].beta_)


def tune_threshold(probs: np.ndarray, labels: np.ndarray, metric: str) -> float | None:
    """The cut on P(class 1) that maximises `metric` on these (validation) examples; None where no cut applies."""
    if probs.shape[1] != 2 or metric not in THRESHOLD_SCORERS or len(np.unique(labels)) < 2:
        return None
    tuner = TunedThresholdClassifierCV(
        _GivenScores(2),
        scoring=THRESHOLD_SCORERS[metric],
        response_method="predict_proba",
        thresholds=THRESHOLD_GRID,
        cv="prefit",
        refit=False,
    )
    return float(tuner.fit(probs, labels).best_threshold_)


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
