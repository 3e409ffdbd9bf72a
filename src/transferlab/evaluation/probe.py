"""A cross-validated linear probe on cached features: the head strategy's classifier and the layer-probe
study's measurement.

L2-regularised logistic regression on standardised features (or on the features as they are), its strength C
chosen by stratified k-fold cross-validation (copies of one example, given as groups, kept within one fold) and then
refitted on every row. scikit-learn's `LogisticRegressionCV`
walks each fold along the C grid (smallest C first) warm-starting every fit from the previous one: about 3 s
against 5.2 s for a grid search of cold fits over the 7 layer probes of minilm-l6 on 2,000 sentences, at the same
test accuracy to 0.001 (docs/benchmarks.md). The scaler is fitted once on all rows rather than per fold: a mean and a
standard deviation, which see no labels.

Multi-label targets get one regression per label on the shared standardised features (one-vs-rest), all at the
strength C whose cross-validated log-loss, averaged over the labels, is best: each label's folds are stratified on
it, and thresholds are tuned afterwards, so the probe is chosen for its probabilities rather than its cuts.

This module imports only numpy and scikit-learn, so the worker processes `fit_probes` spreads probes over
load those and not torch (starting two still costs 1.5-2 s the first time, docs/benchmarks.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, cpu_count, delayed
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from transferlab.errors import UserError
from transferlab.evaluation.metrics import MetricScorer


@dataclass(frozen=True)
class ProbeSettings:
    c_grid: tuple[float, ...]
    folds: int = 5
    max_iter: int = 3000
    seed: int = 0
    metric: str = "accuracy"  # the cross-validation score that picks C
    balanced: bool = False  # scikit-learn's "balanced" class weights, w_c = N / (C n_c)
    # Each feature scaled to unit variance before the regression. Off, the regression reads the features as they
    # are: on unit-length sentence embeddings that is SetFit's head, whose fixed C then acts on their geometry.
    standardize: bool = True

    @property
    def class_weight(self) -> str | None:
        return "balanced" if self.balanced else None

    def folds_for(self, y: np.ndarray, num_classes: int, groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The probe's cross-validation as (fit rows, scored rows) pairs: `folds` stratified folds, fewer when the
        rarest class has fewer examples. Rows sharing a group (copies of one example: oversampled, augmented or
        duplicated in the data) stay in one fold; scored beside its own copy, an example would favour the weakest
        regularisation and flatter the scores."""
        copies = groups is not None and len(np.unique(groups)) < len(groups)
        per_class = [len(np.unique(groups[y == c])) for c in range(num_classes)] if copies else np.bincount(y, minlength=num_classes)
        folds = min(self.folds, int(min(per_class)))
        if folds < 2:
            raise UserError("the linear probe's cross-validation needs at least 2 examples of every class (copies count once)")
        rows = np.zeros((len(y), 1))
        if copies:
            return list(StratifiedGroupKFold(folds, shuffle=True, random_state=self.seed).split(rows, y, groups))
        return list(StratifiedKFold(folds, shuffle=True, random_state=self.seed).split(rows, y))

    def scaler(self) -> StandardScaler:
        """The features' standardisation, or (with `standardize` off) a scaler that passes them through."""
        return StandardScaler(with_mean=self.standardize, with_std=self.standardize)


@dataclass(frozen=True)
class Probe:
    coef: np.ndarray  # classes x features, acting on raw features (standardisation folded in)
    intercept: np.ndarray
    cv_scores: dict[float, float]  # mean cross-validated score of each C
    chosen_c: float
    # the chosen C's score on each fold (multi-label: on each label), for paired comparisons on the same folds
    fold_scores: tuple[float, ...] = ()
    scored_by: str | None = None  # what the cross-validation scored, when not the run's headline metric

    @property
    def best_score(self) -> float:
        return self.cv_scores[self.chosen_c]

    def log_entries(self, metric: str) -> list[dict[str, float]]:
        """For a run's log history: the score of every C, then the choice."""
        metric = self.scored_by or metric
        return [{"C": c, f"cv_{metric}": s} for c, s in self.cv_scores.items()] + [
            {"chosen_C": self.chosen_c, f"best_cv_{metric}": self.best_score}
        ]


def fold_standardisation(clf: LogisticRegression, scaler: StandardScaler, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (classes x features) and bias acting on raw features, equal to scaler-then-classifier.

    A binary regression has one weight row w: softmax over (-w/2, +w/2) is exactly sigmoid(w).
    """
    mean, scale = _shift_and_scale(scaler)
    coef, intercept = clf.coef_ / scale, clf.intercept_ - (clf.coef_ * mean / scale).sum(1)
    if num_classes == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def _shift_and_scale(scaler: StandardScaler) -> tuple[np.ndarray | float, np.ndarray | float]:
    """What a fitted scaler subtracts and divides by: a scaler told not to centre or scale keeps None for those."""
    return (0.0 if scaler.mean_ is None else scaler.mean_), (1.0 if scaler.scale_ is None else scaler.scale_)


def informative_features(x: np.ndarray) -> np.ndarray:
    """Which feature columns vary: a column whose spread is under a millionth of the largest is (nearly) constant."""
    spread = x.std(0)
    return spread > 1e-6 * spread.max()


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, settings: ProbeSettings, groups: np.ndarray | None = None) -> Probe:
    """Features that are (nearly) constant carry no information, and standardising them would fold a
    huge 1 / std into the weights (MiniLM has mean-pooled dimensions with std 2e-9), which breaks any
    later fine-tuning from this head (LP-FT): they get weight zero.

    One BLAS thread: beside torch's OpenMP threads, several BLAS threads on these small solves spin
    against each other and run 40x slower (0.8 s vs 33 s measured on 2 cores). Rows sharing one of `groups` are
    copies of one example, kept in one fold (`ProbeSettings.folds_for`).
    """
    if y.ndim == 2:
        return _fit_multi_label_probe(x, y, settings, groups)
    folds = settings.folds_for(y, num_classes, groups)
    informative = informative_features(x)
    search = LogisticRegressionCV(
        Cs=list(settings.c_grid),
        cv=folds,
        scoring=MetricScorer(settings.metric, num_classes),
        max_iter=settings.max_iter,
        random_state=settings.seed,
        class_weight=settings.class_weight,
    )
    model = Pipeline([("scale", settings.scaler()), ("clf", search)])
    with threadpool_limits(1), warnings.catch_warnings():
        # scikit-learn 1.9-1.11 announce new defaults and attribute layouts; both are read below
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(x[:, informative], y)
    coef, intercept = fold_standardisation(search, model.named_steps["scale"], num_classes)
    full = np.zeros((coef.shape[0], x.shape[1]), dtype=coef.dtype)
    full[:, informative] = coef
    per_fold = _scores_by_fold(search, len(settings.c_grid))
    chosen_c = float(np.ravel(search.C_)[0])
    return Probe(
        coef=full,
        intercept=intercept,
        cv_scores={float(c): float(s) for c, s in zip(settings.c_grid, per_fold.mean(0))},
        chosen_c=chosen_c,
        fold_scores=tuple(float(v) for v in per_fold[:, list(settings.c_grid).index(chosen_c)]),
    )


MULTI_LABEL_SCORE = "neg_log_loss"


def _fit_multi_label_probe(x: np.ndarray, y: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None) -> Probe:
    informative = informative_features(x)
    scaler = settings.scaler().fit(x[:, informative])
    z = scaler.transform(x[:, informative])
    grid = list(settings.c_grid)
    scores = np.full((y.shape[1], len(grid)), np.nan)  # labels x C: mean cross-validated score
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for j in range(y.shape[1]):
            if not _cross_validates(y[:, j], groups):  # fitted at the chosen C only
                continue
            search = LogisticRegressionCV(
                Cs=grid, cv=settings.folds_for(y[:, j], 2, groups), scoring=MULTI_LABEL_SCORE, max_iter=settings.max_iter,
                random_state=settings.seed, class_weight=settings.class_weight, refit=False,
            )  # fmt: skip
            search.fit(z, y[:, j])
            scores[j] = _scores_by_fold(search, len(grid)).mean(0)
        mean = np.nanmean(scores, 0) if np.isfinite(scores).any() else np.zeros(len(grid))
        best = int(np.argmax(mean))
        fits = [_fit_label(z, y[:, j], grid[best], settings) for j in range(y.shape[1])]
    shift, scale = _shift_and_scale(scaler)
    coef = np.vstack([w for w, _ in fits]) / scale
    intercept = np.array([b for _, b in fits]) - (coef * shift).sum(1)
    full = np.zeros((coef.shape[0], x.shape[1]), dtype=coef.dtype)
    full[:, informative] = coef
    return Probe(
        coef=full,
        intercept=intercept,
        cv_scores={float(c): float(v) for c, v in zip(grid, mean)},
        chosen_c=float(grid[best]),
        fold_scores=tuple(float(v) for v in np.nan_to_num(scores[:, best])),
        scored_by=MULTI_LABEL_SCORE,
    )


def _scores_by_fold(search: LogisticRegressionCV, n_c: int) -> np.ndarray:
    """The cross-validated scores as folds x Cs, whichever layout scikit-learn keeps them in."""
    scores = search.scores_
    scores = next(iter(scores.values())) if isinstance(scores, dict) else scores  # legacy: {class: folds x Cs}
    return np.asarray(scores).reshape(-1, n_c)


def _cross_validates(y: np.ndarray, groups: np.ndarray | None) -> bool:
    """A binary label with at least 2 examples (copies counted once) on each side: enough for stratified folds."""
    if groups is None:
        return np.bincount(y, minlength=2).min() >= 2
    return min(len(np.unique(groups[y == side])) for side in (0, 1)) >= 2


def _fit_label(z: np.ndarray, y: np.ndarray, c: float, settings: ProbeSettings) -> tuple[np.ndarray, float]:
    """One label's weights and bias; a label every example carries (or none does) has no boundary to learn: its
    bias alone says so, at the smoothed frequency (n + 1/2) / (n + 1)."""
    if len(np.unique(y)) < 2:
        n = len(y)
        sure = np.log((n + 0.5) / 0.5)
        return np.zeros(z.shape[1]), sure if y[0] == 1 else -sure
    fit = _label_regression(c, settings).fit(z, y)
    return fit.coef_[0], float(fit.intercept_[0])


def _label_regression(c: float, settings: ProbeSettings) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=settings.max_iter, random_state=settings.seed, class_weight=settings.class_weight)


def out_of_fold_logits(
    x: np.ndarray, y: np.ndarray, num_classes: int, settings: ProbeSettings, c: float, groups: np.ndarray | None = None
) -> np.ndarray:
    """Each row's logits from the probe (at strength `c`) fitted on the folds that leave it out, on the probe's own
    folds: what the head would say of examples it never saw, for choosing a temperature or a threshold on rows the
    head itself was fitted on. A binary probe's score d becomes the logits (-d/2, d/2), as `fold_standardisation` does."""
    informative = informative_features(x)
    probe = Pipeline([("scale", settings.scaler()), ("clf", _label_regression(c, settings))])
    with threadpool_limits(1):
        if y.ndim == 2:
            return np.stack([_out_of_fold_label(probe, x[:, informative], y[:, j], c, settings, groups) for j in range(y.shape[1])], 1)
        scores = cross_val_predict(probe, x[:, informative], y, cv=settings.folds_for(y, num_classes, groups), method="decision_function")
    return np.stack([-scores / 2, scores / 2], 1) if num_classes == 2 else scores


def _out_of_fold_label(
    probe: Pipeline, x: np.ndarray, y: np.ndarray, c: float, settings: ProbeSettings, groups: np.ndarray | None
) -> np.ndarray:
    """One label's out-of-fold scores; a label too rare to cross-validate gets its in-sample ones."""
    if _cross_validates(y, groups):
        return cross_val_predict(probe, x, y, cv=settings.folds_for(y, 2, groups), method="decision_function")
    scaler = settings.scaler().fit(x)
    weights, bias = _fit_label(scaler.transform(x), y, c, settings)
    return scaler.transform(x) @ weights + bias


def fit_probes(tasks: list[tuple[np.ndarray, np.ndarray, int, ProbeSettings, np.ndarray | None]]) -> list[Probe]:
    """`fit_probe` on each (x, y, num_classes, settings, groups), spread over the machine's cores: the probes of a
    layer study are independent, and each one runs on a single thread."""
    jobs = min(len(tasks), cpu_count())
    if jobs <= 1:
        return [fit_probe(*task) for task in tasks]
    return Parallel(n_jobs=jobs)(delayed(fit_probe)(*task) for task in tasks)
