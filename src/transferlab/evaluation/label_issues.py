"""Likely label errors: confident learning (cleanlab) on the linear probe's out-of-fold probabilities.

A label is suspect when a model that never saw the row confidently predicts another class. The probabilities
must be out-of-fold: a model fitted on a row (above all a flexible one, or one with weak regularisation) learns
that row's label, wrong or not, and then agrees with it. The linear probe on frozen backbone features is cheap
enough to fit once per fold, and it is the head strategy's own classifier.

Like probe.py, this module imports only numpy, pandas, scikit-learn and cleanlab (no torch), so it can run in
a worker process.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
from cleanlab.rank import get_label_quality_scores
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from transferlab.data.sources import label_keys
from transferlab.errors import UserError
from transferlab.evaluation.metrics import predicted_labels
from transferlab.evaluation.probe import ProbeSettings, fit_probe, informative_features, out_of_fold_logits

LABEL_ISSUE_COLUMNS = ("row", "given_label", "suggested_label", "score")


def out_of_fold_probabilities(
    x: np.ndarray, y: np.ndarray, num_classes: int, settings: ProbeSettings, groups: np.ndarray | None = None
) -> np.ndarray:
    """Class probabilities (rows x num_classes) for every row, each from a probe fitted without that row.

    The strength C is chosen once by `fit_probe`'s cross-validation over all rows (one number, so the
    leak of the held-out labels into it is negligible), then each of the stratified folds is predicted
    by a standardise-then-logistic-regression fit on the other folds; the folds are `fit_probe`'s
    (`settings.folds_for`: fewer when a class is smaller, and the copies of one example, rows sharing one of
    `groups`, in one fold: a copy in the fitted folds would teach the probe that example's label, wrong or not,
    and hide it from the ranking). Features that are
    (nearly) constant over all rows are dropped as `fit_probe` does: standardising them would multiply
    float noise by a huge 1 / std.

    A class listed in `num_classes` but absent from `y` gets probability 0 (no model could predict it).
    A class with a single example raises `UserError`: no model that lacks that row has seen its class,
    so its probability would be decided by no evidence at all, and cleanlab would flag the row for it.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim == 2 and len(x) == len(y):  # multi-label: each label's out-of-fold sigmoid, from the probe's folds
        probe = fit_probe(x, y, num_classes, settings, groups)
        return expit(out_of_fold_logits(x, y, num_classes, settings, probe.chosen_c, groups))
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected features (rows x dims) and one label per row, got {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    counts = np.bincount(y, minlength=num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise UserError("finding label issues needs examples of at least 2 classes")
    if counts[present].min() < 2:
        single = ", ".join(str(c) for c in present[counts[present] < 2])
        raise UserError(f"finding label issues needs at least 2 examples of every class; class {single} has one")
    # Classes renumbered 0..m-1 over the present ones, so that fit_probe and the folds never see an empty class.
    compact = np.searchsorted(present, y)
    probe = fit_probe(x, compact, len(present), settings, groups)
    informative = informative_features(x)  # as fit_probe drops them, which has run on `x` above
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "clf",
                LogisticRegression(
                    C=probe.chosen_c,
                    max_iter=settings.max_iter,
                    random_state=settings.seed,
                    class_weight="balanced" if settings.balanced else None,
                ),
            ),
        ]
    )
    with threadpool_limits(1), warnings.catch_warnings():  # one BLAS thread: see fit_probe
        warnings.simplefilter("ignore", FutureWarning)
        probs = cross_val_predict(
            model,
            x[:, informative],
            compact,
            cv=settings.folds_for(compact, len(present), groups),
            method="predict_proba",
        )
    full = np.zeros((len(y), num_classes))
    full[:, present] = probs
    return full


def find_label_issues(probs: np.ndarray, labels: np.ndarray, label_names: list[str], rows: np.ndarray | None = None) -> pd.DataFrame:
    """The rows whose given label is likely wrong, most likely first (columns `LABEL_ISSUE_COLUMNS`).

    cleanlab's confident learning decides which rows are flagged: it estimates per class how confident the
    model is on correctly labelled rows, counts the rows confidently predicted as another class, and removes
    that many per (given, predicted) pair, the lowest margins first. Rows are ranked and scored by
    self-confidence, the probability of the given label (cleanlab's label quality score: lower is more likely
    wrong). `suggested_label` is the most probable class. `row` is `rows[i]` when given (the row's index in
    the caller's dataset), else the position i in `probs`.

    The probabilities should be out-of-fold (`out_of_fold_probabilities`): in-fold ones agree with the given
    labels. cleanlab runs in this process (`n_jobs=1`): its default forks one worker per core, which is slow
    to start for so little work and unsafe in a process that runs torch threads.

    When cleanlab cannot handle the input (for example every label the same class), the result is an empty
    frame with cleanlab's message in `frame.attrs["skipped"]`: a data check must not stop the run.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return _multi_label_issues(probs, labels, label_names, np.arange(len(labels)) if rows is None else np.asarray(rows))
    n = len(labels)
    if probs.ndim != 2 or probs.shape != (n, len(label_names)):
        raise ValueError(f"expected probabilities of shape ({n}, {len(label_names)}), got {probs.shape}")
    if n and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise ValueError(f"labels must lie in 0..{len(label_names) - 1}")
    if not np.isfinite(probs).all():
        raise ValueError("the probabilities contain NaN or infinite values")
    positions = np.arange(n) if rows is None else np.asarray(rows)
    if len(positions) != n:
        raise ValueError(f"rows has {len(positions)} entries for {n} labels")
    if n == 0:
        return _frame(np.array([], dtype=int), labels, probs, np.array([]), label_names, positions)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            flagged = cleanlab_find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
            scores = get_label_quality_scores(labels, probs, method="self_confidence")
    except Exception as err:  # cleanlab signals degenerate input with assorted exceptions
        empty = _frame(np.array([], dtype=int), labels, probs, np.array([]), label_names, positions)
        empty.attrs["skipped"] = f"cleanlab: {type(err).__name__}: {err}"
        return empty
    flagged = np.asarray(flagged, dtype=int)
    return _frame(flagged, labels, probs, scores[flagged], label_names, positions)


def _multi_label_issues(probs: np.ndarray, labels: np.ndarray, label_names: list[str], rows: np.ndarray) -> pd.DataFrame:
    """cleanlab's multi-label confident learning (`multi_label=True`: one-vs-rest per label) and its multi-label
    label quality score; the suggestion is every label whose out-of-fold probability reaches one half (`predicted_labels`)."""
    from cleanlab.multilabel_classification import get_label_quality_scores as multi_label_scores

    given = [np.flatnonzero(row).tolist() for row in labels]
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            flagged = cleanlab_find_label_issues(given, probs, multi_label=True, return_indices_ranked_by="self_confidence", n_jobs=1)
            scores = multi_label_scores(given, probs)
    except Exception as err:  # cleanlab signals degenerate input with assorted exceptions
        empty = pd.DataFrame(columns=list(LABEL_ISSUE_COLUMNS))
        empty.attrs["skipped"] = f"cleanlab: {type(err).__name__}: {err}"
        return empty
    flagged = np.asarray(flagged, dtype=int)
    return pd.DataFrame(
        {
            "row": rows[flagged].astype(np.int64),
            "given_label": pd.Series(label_keys(labels[flagged], label_names), dtype=object),
            "suggested_label": pd.Series(label_keys(predicted_labels(probs[flagged], multi_label=True), label_names), dtype=object),
            "score": np.asarray(scores[flagged], dtype=float),
        },
        columns=list(LABEL_ISSUE_COLUMNS),
    )


def _frame(
    flagged: np.ndarray, labels: np.ndarray, probs: np.ndarray, scores: np.ndarray, label_names: list[str], rows: np.ndarray
) -> pd.DataFrame:
    names = np.asarray(label_names, dtype=object)
    return pd.DataFrame(
        {
            "row": rows[flagged].astype(np.int64),
            "given_label": pd.Series(names[labels[flagged]], dtype=object),
            "suggested_label": pd.Series(names[probs[flagged].argmax(1)] if len(flagged) else [], dtype=object),
            "score": np.asarray(scores, dtype=float),
        },
        columns=list(LABEL_ISSUE_COLUMNS),
    )
