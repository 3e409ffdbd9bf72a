"""Feature extraction (seed 3.1, 6): a frozen backbone runs once per example; a linear head fits its features.

The head is scikit-learn's L2-regularised logistic regression trained to convergence on the
cached, standardised features. Its strength is chosen by stratified 5-fold cross-validation over
the training and validation examples together (a 200-example validation set alone picks it
noisily; the features are cached, so the extra fits cost seconds), then refitted on all of them.
Its weights, with the standardisation folded in, are written into the model's linear head, so the
exported model is an ordinary classifier giving exactly the probabilities the regression gave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.errors import UserError
from transferlab.evaluation.metrics import sklearn_scorer
from transferlab.strategies.base import Strategy, StrategyConfig, register_strategy, set_trainable
from transferlab.training.loop import FitData, TrainingConfig, pooled_features


@dataclass
class HeadConfig(StrategyConfig):
    c_grid: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])
    cv_folds: int = 5
    max_iter: int = 3000

    def validate(self) -> None:
        if not self.c_grid or min(self.c_grid) <= 0:
            raise UserError(f"c_grid must hold positive values, got {self.c_grid}")
        if self.cv_folds < 2:
            raise UserError(f"cv_folds must be at least 2, got {self.cv_folds}")


def fold_standardisation(clf: LogisticRegression, scaler: StandardScaler, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (classes x features) and bias acting on raw features, equal to scaler-then-classifier.

    A binary regression has one weight row w: softmax over (-w/2, +w/2) is exactly sigmoid(w).
    """
    coef, intercept = clf.coef_ / scaler.scale_, clf.intercept_ - (clf.coef_ * scaler.mean_ / scaler.scale_).sum(1)
    if num_classes == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


@register_strategy
class FeatureExtraction(Strategy):
    name = "head"
    summary = "frozen backbone, features cached once, linear head fitted to convergence"
    config_class = HeadConfig

    def prepare(self, model: TransferModel) -> nn.Module:
        head = {id(p) for p in model.head_parameters()}
        by_name = {n for n, p in model.named_parameters() if id(p) in head}
        set_trainable(model, lambda name: name in by_name)
        return model

    def expected_trainable_params(self, model: TransferModel) -> int:
        """A linear head: (features + 1) x classes."""
        return (model.classifier.in_features + 1) * model.classifier.out_features

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        model = self.prepare(model)
        examples = data.train + data.val
        x = pooled_features(model, examples, data.collate, data.length_of, training.eval_batch_size)
        y = np.array([f["labels"] for f in examples])
        num_classes = len(data.label_names)
        folds = min(self.config.cv_folds, int(np.bincount(y, minlength=num_classes).min()))
        if folds < 2:
            raise UserError("the head's cross-validation needs at least 2 examples of every class")
        search = GridSearchCV(
            Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=self.config.max_iter, random_state=training.seed))]),
            {"clf__C": self.config.c_grid},
            scoring=sklearn_scorer(training.metric, num_classes),
            cv=StratifiedKFold(folds, shuffle=True, random_state=training.seed),
        ).fit(x, y)
        for c, score in zip(self.config.c_grid, search.cv_results_["mean_test_score"]):
            data.log_history.append({"C": c, f"cv_{training.metric}": float(score)})
        data.log_history.append({"chosen_C": search.best_params_["clf__C"], f"best_cv_{training.metric}": float(search.best_score_)})
        best = search.best_estimator_
        coef, intercept = fold_standardisation(best.named_steps["clf"], best.named_steps["scale"], num_classes)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.as_tensor(coef, dtype=model.classifier.weight.dtype))
            model.classifier.bias.copy_(torch.as_tensor(intercept, dtype=model.classifier.bias.dtype))
        return model
