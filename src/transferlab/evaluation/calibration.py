"""Are the probabilities honest, and where should a binary decision cut them? Temperature scaling (Guo et al. 2017,
"On Calibration of Modern Neural Networks"), the expected calibration error, the Brier score, and the decision
threshold tuned for the headline metric.

Temperature scaling divides every logit by one T > 0, fitted on the validation split to minimise the log-loss:
the predicted labels stay the same, only how sure the model says it is changes. SciPy's bounded scalar search fits
it over log T (scikit-learn's `CalibratedClassifierCV(method="temperature")` takes the classes from the labels, so a
class that validation lacks, as a class of one example always does, breaks it); torchmetrics computes
the ECE (15 equal-width confidence bins, weighted by their share of examples) and scikit-learn the Brier score
(squared error of the probability vector against the one-hot label, summed over classes, averaged over examples).

A binary task scored by F1, macro-F1 or MCC is not best served by predicting the class above 0.5 when the classes
are imbalanced: scikit-learn's `TunedThresholdClassifierCV` picks the cut on the validation probabilities that
maximises that metric there (0.01 steps; the test set is never seen).

Multi-label outputs are independent sigmoids. One temperature is fitted for all of them by minimising the validation
binary cross-entropy (the same search: scikit-learn's calibrators take one class per example), each
label gets its own threshold, the cut that maximises its F1 on validation, and ECE, Brier and the reliability
diagram are those of every (example, label) probability against whether the label is there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import expit, logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import brier_score_loss, f1_score, make_scorer, matthews_corrcoef, precision_recall_curve
from sklearn.model_selection import TunedThresholdClassifierCV
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from transferlab.data.sources import is_multi_label
from transferlab.evaluation.metrics import MULTI_LABEL_THRESHOLD, classification_metrics

ECE_BINS = 15
# The headline metrics a tuned threshold serves (accuracy is best at the argmax of calibrated probabilities; AUROC
# does not depend on a threshold; precision or recall alone would push it to an extreme).
THRESHOLD_SCORERS = {
    "f1": make_scorer(f1_score),
    "macro_f1": make_scorer(f1_score, average="macro"),
    "mcc": make_scorer(matthews_corrcoef),
}
THRESHOLD_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)


class _GivenProbabilities(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose inputs are already its probabilities: lets scikit-learn's threshold tuner work on a
    model's outputs."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.classes_ = np.arange(num_classes)

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> _GivenProbabilities:
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        return probs

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return probs.argmax(1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the validation log-loss of softmax(logits / T), or for multi-label targets the binary
    cross-entropy of sigmoid(logits / T)."""
    logits = logits.astype(np.float64)
    if is_multi_label(labels):
        targets = np.asarray(labels, dtype=np.float64)

        def loss(t: float) -> float:  # -log sigmoid for 1, -log(1 - sigmoid) for 0
            return float(np.mean(np.logaddexp(0, logits / t) - targets * logits / t))
    else:
        rows = np.arange(len(labels))

        def loss(t: float) -> float:
            return float(np.mean(logsumexp(logits / t, axis=1) - logits[rows, labels] / t))

    search = minimize_scalar(lambda log_t: loss(np.exp(log_t)), bounds=(-7.0, 7.0), method="bounded", options={"xatol": 1e-8})
    return float(np.exp(search.x))


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, metric: str) -> list[float] | None:
    """Multi-label: per label, the cut on its probability that maximises its F1 on these (validation) examples, from
    scikit-learn's precision-recall curve (every distinct probability is a candidate; a label's F1 is what both
    micro- and macro-F1 gain from its cut); the default 0.5 for a label these examples never or always carry. None
    when the metric does not depend on a cut."""
    if metric == "auroc":
        return None
    cuts = []
    for j in range(labels.shape[1]):
        if len(np.unique(labels[:, j])) < 2:
            cuts.append(MULTI_LABEL_THRESHOLD)
            continue
        precision, recall, thresholds = precision_recall_curve(labels[:, j], probs[:, j])
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        cuts.append(float(thresholds[int(np.argmax(f1))]))
    return cuts


def validation_metrics(labels: np.ndarray, probs: np.ndarray, num_classes: int, metric: str) -> dict[str, float]:
    """Metrics for choosing between checkpoints or trials on validation. Multi-label: at the per-label thresholds
    tuned on these same examples, as the run will decide; at a fixed 0.5 a model still learning the labels'
    frequencies predicts no label at all and scores 0, so early stopping would end it before it learns anything."""
    if not is_multi_label(labels):
        return classification_metrics(labels, probs, num_classes)
    return classification_metrics(labels, probs, num_classes, tune_thresholds(probs, labels, metric))


def tune_threshold(probs: np.ndarray, labels: np.ndarray, metric: str) -> float | None:
    """The cut on P(class 1) that maximises `metric` on these (validation) examples; None where no cut applies."""
    if probs.shape[1] != 2 or metric not in THRESHOLD_SCORERS or len(np.unique(labels)) < 2:
        return None
    tuner = TunedThresholdClassifierCV(
        _GivenProbabilities(2),
        scoring=THRESHOLD_SCORERS[metric],
        response_method="predict_proba",
        thresholds=THRESHOLD_GRID,
        cv="prefit",
        refit=False,
    )
    return float(tuner.fit(probs, labels).best_threshold_)


def probabilities(logits: np.ndarray, temperature: float = 1.0, multi_label: bool = False) -> np.ndarray:
    """Softmax over the classes, or an independent sigmoid per label, of logits / T."""
    return expit(logits / temperature) if multi_label else softmax(logits, temperature)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(-1, keepdims=True)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray) -> float:
    if is_multi_label(labels):
        return float(
            binary_calibration_error(
                torch.tensor(np.asarray(probs, dtype=np.float32).ravel()),
                torch.tensor(np.asarray(labels, dtype=np.int64).ravel()),
                n_bins=ECE_BINS,
            )
        )
    return float(
        multiclass_calibration_error(
            torch.tensor(np.asarray(probs, dtype=np.float32)),
            torch.tensor(np.asarray(labels, dtype=np.int64)),
            probs.shape[1],
            n_bins=ECE_BINS,
        )
    )


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Summed over classes (0 perfect, 2 worst), as Brier defined it; scikit-learn halves it only when asked.
    Multi-label: the mean over labels of each label's binary Brier score (0 perfect, 1 worst)."""
    if is_multi_label(labels):
        return float(np.mean((np.asarray(probs, dtype=float) - labels) ** 2))
    return float(brier_score_loss(labels, probs, labels=list(range(probs.shape[1])), scale_by_half=False))


def reliability_bins(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and share of examples (the reliability diagram's bars).
    Multi-label: per bin of label probabilities, how often the label is there."""
    if is_multi_label(labels):
        confidence, correct = np.asarray(probs).ravel(), np.asarray(labels).ravel() == 1
    else:
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
    multi = is_multi_label(labels)
    raw, scaled = probabilities(logits, multi_label=multi), probabilities(logits, temperature, multi)
    return {
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(labels, raw),
        "brier_uncalibrated": brier_score(labels, raw),
        "reliability_uncalibrated": reliability_bins(labels, raw),
        "reliability": reliability_bins(labels, scaled),
    }
