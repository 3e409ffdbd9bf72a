"""Every headline metric on every path that chooses by it: the probe's cross-validation (the head, the layer
probe, LP-FT's first stage), on binary and multi-class data, balanced and imbalanced, integer and string labels.

The expected cross-validated scores are computed here with plain `LogisticRegression` fits per fold and
scikit-learn's metric functions, not with the code under test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from transferlab.evaluation.probe import ProbeSettings, fit_probe, fit_probes
from transferlab.settings import HEADLINE_METRICS

C_GRID = (0.01, 0.3)


def _task(num_classes: int, imbalanced: bool, n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, overlapping enough that the metrics differ; 6:1 between the largest and smallest class."""
    rng = np.random.default_rng(seed)
    shares = np.array([6.0] + [1.0] * (num_classes - 1)) if imbalanced else np.ones(num_classes)
    counts = np.maximum(8, np.round(n * shares / shares.sum()).astype(int))
    y = np.repeat(np.arange(num_classes), counts)
    centres = rng.normal(0, 1.2, size=(num_classes, 6))
    x = centres[y] + rng.normal(size=(len(y), 6))
    return x, y


def _reference_score(metric: str, y: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    predicted = probs.argmax(1)
    binary = num_classes == 2
    average = "binary" if binary else "macro"
    if metric == "accuracy":
        return accuracy_score(y, predicted)
    if metric == "macro_f1":
        return f1_score(y, predicted, average="macro", zero_division=0)
    if metric == "micro_f1":
        return f1_score(y, predicted, average="micro", zero_division=0)
    if metric == "precision":
        return precision_score(y, predicted, average=average, zero_division=0)
    if metric == "recall":
        return recall_score(y, predicted, average=average, zero_division=0)
    if metric == "f1":
        return f1_score(y, predicted, average=average, zero_division=0)
    if metric == "auroc":
        return roc_auc_score(y, probs[:, 1]) if binary else roc_auc_score(y, probs, multi_class="ovr")
    return matthews_corrcoef(y, predicted)


def _reference_cv(x: np.ndarray, y: np.ndarray, c: float, metric: str, num_classes: int) -> float:
    z = StandardScaler().fit_transform(x)
    scores = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(z, y):
        clf = LogisticRegression(C=c, max_iter=3000).fit(z[train], y[train])
        scores.append(_reference_score(metric, y[test], clf.predict_proba(z[test]), num_classes))
    return float(np.mean(scores))


@pytest.mark.parametrize("metric", HEADLINE_METRICS)
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("imbalanced", [False, True], ids=["balanced", "imbalanced"])
def test_probe_cross_validates_every_metric(metric, num_classes, imbalanced):
    x, y = _task(num_classes, imbalanced)
    probe = fit_probe(x, y, num_classes, ProbeSettings(c_grid=C_GRID, metric=metric))
    for c in C_GRID:
        assert probe.cv_scores[c] == pytest.approx(_reference_cv(x, y, c, metric, num_classes), abs=0.01)
    assert probe.chosen_c == max(C_GRID, key=lambda c: probe.cv_scores[c])


def test_probes_fitted_side_by_side_score_like_one_at_a_time():
    """The layer probe fits in worker processes: the scorer must travel there and score the same."""
    x, y = _task(2, True)
    tasks = [(x, y, 2, ProbeSettings(c_grid=C_GRID, metric=m)) for m in ("macro_f1", "mcc")]
    for alone, parallel in zip([fit_probe(*t) for t in tasks], fit_probes(tasks)):
        assert alone.cv_scores == pytest.approx(parallel.cv_scores, abs=1e-9)


def _write_task(path, num_classes: int, imbalanced: bool, string_labels: bool):
    """A text file the tiny vocabulary can read: the class is told by one word among neutral ones."""
    from .conftest import NEGATIVE, NEUTRAL, POSITIVE

    rng = np.random.default_rng(1)
    cue_words = [POSITIVE, NEGATIVE, NEUTRAL[:4]][:num_classes]
    counts = [90] + [15] * (num_classes - 1) if imbalanced else [40] * num_classes
    rows = []
    for label, count in enumerate(counts):
        for _ in range(count):
            words = list(rng.choice(NEUTRAL[4:], size=5)) + [str(rng.choice(cue_words[label]))]
            rng.shuffle(words)
            name = ["neg", "pos", "mixed"][label] if string_labels else label * 10
            rows.append({"message": " ".join(words), "category": name})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("metric", HEADLINE_METRICS)
@pytest.mark.parametrize(
    "num_classes,imbalanced,string_labels",
    [(2, True, True), (2, False, False), (3, True, False), (3, False, True)],
    ids=["binary-imbalanced-str", "binary-balanced-int", "3class-imbalanced-int", "3class-balanced-str"],
)
def test_head_and_lpft_run_with_every_metric(tmp_path, tiny_bert_dir, metric, num_classes, imbalanced, string_labels):
    """`compare` end to end on a tiny backbone; every run finishes and reports the chosen metric."""
    from transferlab.config import load_run_config
    from transferlab.recipes.compare import compare

    path = _write_task(tmp_path / "task.csv", num_classes, imbalanced, string_labels)
    strategies = ["head", "lp-ft"] if num_classes == 2 and imbalanced else ["head"]
    config = load_run_config(
        None,
        backbone=str(tiny_bert_dir),
        dataset=str(path),
        text_column="message",
        label_column="category",
        strategies=strategies,
        cv=1,
        n_test=40,
        max_length=16,
        training={"metric": metric, "epochs": 1},
    )
    results = compare(config, tmp_path / "run", log=lambda m: None)
    for name in strategies:
        row = results["strategies"][name]
        assert row["status"] == "ok", row
        assert 0 <= row["metrics"][metric]["mean"] <= 1 or metric == "mcc"
