"""Repeated runs summarised honestly: mean ± std per metric, and which gaps to the best are noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

SIGNIFICANCE = 0.05
TEST_NAME = "paired t-test over the same folds and seeds (two-sided, alpha 0.05)"
# Cross-validation folds train on overlapping examples, so their scores move together and the plain t-test's
# variance is too small: it finds differences that are not there. Nadeau and Bengio's corrected resampled t-test
# (2003; for repeated folds, Bouckaert and Frank 2004) widens the variance by the test-to-training size ratio.
FOLDS_TEST_NAME = (
    "corrected resampled t-test (Nadeau and Bengio) over the folds, each fold's gap its mean over the seeds (two-sided, alpha 0.05)"
)
# Seeds scored on one test set differ by their training alone: the t-test over them does not see the test set's own
# sampling noise, so a gap must clear that too (an intersection-union test, whose p-value is the larger of the two).
SHARED_TEST_NAME = (
    "paired t-test over the seeds and a two-proportion z-test at the one test set's size; a gap is real where both "
    "reject (two-sided, alpha 0.05)"
)
REPORTED_CHOICES = ("head_layer",)  # what a strategy chose while fitting (it logs them): kept in each run's record


def mean_std(values: list[float]) -> dict[str, Any]:
    """Sample standard deviation (ddof 1); 0.0 for a single run."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "values": [float(v) for v in array]}


# What results.json keeps of each run.
RUN_KEYS = (
    "fold", "seed", "metrics", "per_class", "confusion_matrix", "train_seconds", "peak_memory_mb", "head_layer", "calibration",
    "decision_threshold", "decision_thresholds",
)  # fmt: skip


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One strategy's runs (folds x seeds) -> the summary that results.json and the table show."""
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        return {k: v for k, v in failed[0].items() if k in ("status", "reason")}
    first = runs[0]
    return {
        "status": "ok",
        "metrics": {name: mean_std([r["metrics"][name] for r in runs]) for name in first["metrics"]},
        "trainable_params": first["trainable_params"],
        "trainable_params_without_head": first["trainable_params_without_head"],
        "total_params": first["total_params"],
        "trainable_percent": first["trainable_percent"],
        "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
        "peak_memory_mb": float(max(r["peak_memory_mb"] for r in runs)),
        "settings": first["settings"],
        **({"confusion_matrix": np.sum([r["confusion_matrix"] for r in runs], axis=0).tolist()} if "confusion_matrix" in first else {}),
        **_calibration_summary(runs),
        "runs": [{k: r[k] for k in RUN_KEYS if k in r} for r in runs],
    }


def _calibration_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The temperature, the uncalibrated scores and the tuned decision threshold, mean and std over the runs (runs
    recorded before calibration have none; a threshold only where every run tuned one)."""
    if not all("calibration" in r for r in runs):
        return {}
    keys = ("temperature", "ece_uncalibrated", "brier_uncalibrated")
    summary: dict[str, Any] = {"calibration": {key: mean_std([r["calibration"][key] for r in runs]) for key in keys}}
    if all("decision_threshold" in r for r in runs):
        summary["decision_threshold"] = mean_std([r["decision_threshold"] for r in runs])
    return summary


def paired_p_value(a: np.ndarray, b: np.ndarray, test_to_train: float = 0.0, folds: Sequence[int] | None = None) -> float:
    """Two-sided paired t-test over the same folds and seeds: 1 when the runs are identical, 0 when every run
    differs by the same non-zero amount (no variance to test against). `test_to_train` > 0 (folds: each fold's test
    size over its training size) makes it Nadeau and Bengio's corrected resampled t-test, the variance of the mean
    difference taken as (1/n + test_to_train) s^2 rather than s^2 / n; 0 is scipy's `ttest_rel`. Written by hand:
    neither scipy nor scikit-learn has the correction.

    `folds`: each run's fold. The seeds of one fold retrain on its training part and score its test part, so they
    are not new folds: the corrected test runs over each fold's mean difference, n the number of folds. (Bouckaert
    and Frank's n = folds x repetitions holds for repetitions that draw new folds, which these do not.)"""
    differences = a - b
    if test_to_train and folds is not None:
        fold_of = np.asarray(folds)
        differences = np.array([differences[fold_of == fold].mean() for fold in np.unique(fold_of)])
    if np.allclose(differences, differences[0]):
        return 1.0 if differences[0] == 0 else 0.0
    if test_to_train == 0:
        return float(stats.ttest_rel(a, b).pvalue)
    n = len(differences)
    if n < 2:
        return 1.0  # one fold, however many seeds: nothing measures how the gap moves between folds
    t = differences.mean() / math.sqrt((1 / n + test_to_train) * differences.var(ddof=1))
    return float(2 * stats.t.sf(abs(t), n - 1))


def run_folds(summary: dict[str, Any]) -> list[int] | None:
    """The fold of each of a summary's runs, in the order of its metric values; None for a summary without them."""
    runs = summary.get("runs")
    return [run["fold"] for run in runs] if runs and all("fold" in run for run in runs) else None


def one_test_set(record: dict[str, Any]) -> int | None:
    """The size of the test set every run of a run record scored on, or None when each fold tests its own part."""
    return record["n_test"] if record["evaluation"]["folds"] == 1 else None


def fold_overlap(record: dict[str, Any]) -> float:
    """Each fold's test size over its training size where a run record's runs are cross-validation folds (the
    correction `paired_p_value` takes), else 0."""
    return record["n_test"] / max(record["n_train"], 1) if record["evaluation"]["folds"] > 1 else 0.0


def test_set_p_value(a: float, b: float, n_test: int) -> float:
    """Two-sided two-proportion z-test of two scores on `n_test` examples each: exact for accuracy, an approximation for
    the other metrics (their spread over test sets is of the same order); conservative for two models scored on the
    same examples, whose errors are correlated."""
    se = math.sqrt(max(a * (1 - a) + b * (1 - b), 1e-12) / max(n_test, 1))
    return float(2 * stats.norm.sf(abs(a - b) / se))


def gap_p_value(
    a: np.ndarray, b: np.ndarray, shared_test: int | None, test_to_train: float = 0.0, folds: Sequence[int] | None = None
) -> float:
    """The paired t-test's p over the same folds and seeds (corrected for overlapping folds by `test_to_train`, over
    each fold's mean when `folds` names the runs' folds); where they all scored one test set of `shared_test`
    examples, the larger of it and that test set's z-test."""
    p = paired_p_value(a, b, test_to_train, folds)
    return p if shared_test is None else max(p, test_set_p_value(float(a.mean()), float(b.mean()), shared_test))


def compare_to_best(
    strategies: dict[str, dict[str, Any]], metric: str, shared_test: int | None = None, test_to_train: float = 0.0
) -> dict[str, Any]:
    """Mark the best strategy by mean `metric`, and test every other one's gap against it; `shared_test`: the size of the
    one test set all the runs scored on (`one_test_set`), whose sampling noise the gap must clear too; `test_to_train`:
    the folds' overlap (`fold_overlap`)."""
    name = SHARED_TEST_NAME if shared_test is not None else FOLDS_TEST_NAME if test_to_train else TEST_NAME
    finished = {n: s for n, s in strategies.items() if s["status"] == "ok" and not math.isnan(s["metrics"][metric]["mean"])}
    if not finished:
        return {"metric": metric, "best": None, "test": name, "others": {}}
    best = max(finished, key=lambda n: finished[n]["metrics"][metric]["mean"])
    reference = np.asarray(finished[best]["metrics"][metric]["values"])
    others = {}
    for other, summary in finished.items():
        if other == best:
            continue
        values = np.asarray(summary["metrics"][metric]["values"])
        gap = float(reference.mean() - values.mean())
        if len(values) < 2 or len(values) != len(reference):
            others[other] = {"gap": gap, "p_value": None, "within_noise": None}
            continue
        p = gap_p_value(reference, values, shared_test, test_to_train, run_folds(finished[best]))
        others[other] = {"gap": gap, "p_value": p, "within_noise": p >= SIGNIFICANCE}
    return {"metric": metric, "best": best, "test": name, "others": others}


def mean_curve(curves: list[dict[str, list[list[float]]]], key: str = "eval_loss") -> list[tuple[float, float, float]]:
    """(step, epoch, mean value) over the runs that logged that step."""
    by_step: dict[float, list[tuple[float, float]]] = {}
    for curve in curves:
        for step, epoch, value in curve.get(key, []):
            by_step.setdefault(step, []).append((epoch, value))
    return [(step, float(np.mean([e for e, _ in v])), float(np.mean([x for _, x in v]))) for step, v in sorted(by_step.items())]


def gap_within_noise(
    a: dict[str, Any], b: dict[str, Any], metric: str, n_test: int, shared_test: bool = True, test_to_train: float = 0.0
) -> tuple[bool, str]:
    """Whether the difference between two summaries' `metric` is within noise, and the test that says so.

    With two or more paired runs each (the same folds and seeds), the paired t-test compare uses for 'vs best'
    (corrected for overlapping folds by `test_to_train`), and, when they all scored on one test set (`shared_test`),
    the z-test below too: both must reject. With one run each, a two-proportion z-test at the test set's size
    (`test_set_p_value`).
    """
    x, y = np.asarray(a["metrics"][metric]["values"]), np.asarray(b["metrics"][metric]["values"])
    if len(x) >= 2 and len(x) == len(y):
        p = gap_p_value(x, y, n_test if shared_test else None, test_to_train, run_folds(a))
        kind = "corrected resampled t-test" if test_to_train else "paired t-test"
        test = f"{kind} over {len(x)} runs{f' and a z-test on {n_test} test examples' if shared_test else ''}"
        return bool(p >= SIGNIFICANCE), f"{test}, p = {p:.2f}"
    p1, p2 = float(x.mean()), float(y.mean())
    p = test_set_p_value(p1, p2, n_test)
    return bool(p >= SIGNIFICANCE), f"one run each: |gap| {abs(p1 - p2):.3f} on {n_test} test examples, p = {p:.2f}"
