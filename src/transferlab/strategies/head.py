"""Feature extraction (seed 3.1, 6): a frozen backbone runs once per example; a linear head fits its features.

The head is scikit-learn's L2-regularised logistic regression trained to convergence on the
cached, standardised features, its strength chosen on the validation set. Its weights (with the
standardisation folded in) are then written into the model's linear head, so the exported model
is an ordinary classifier that gives exactly the probabilities the regression gave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.evaluation.metrics import classification_metrics
from transferlab.strategies.base import Strategy, StrategyConfig, register_strategy, set_trainable
from transferlab.training.loop import FitData, TrainingConfig, pooled_features


@dataclass
class HeadConfig(StrategyConfig):
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    max_iter: int = 2000


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
        x_train, x_val = (
            pooled_features(model, part, data.collate, data.length_of, training.eval_batch_size) for part in (data.train, data.val)
        )
        y_train = np.array([f["labels"] for f in data.train])
        y_val = np.array([f["labels"] for f in data.val])
        scaler = StandardScaler().fit(x_train)
        num_classes = len(data.label_names)
        best = None
        for c in self.config.c_grid:
            clf = LogisticRegression(C=c, max_iter=self.config.max_iter, random_state=training.seed)
            clf.fit(scaler.transform(x_train), y_train)
            score = classification_metrics(y_val, clf.predict_proba(scaler.transform(x_val)), num_classes)[training.metric]
            data.log_history.append({"C": c, f"eval_{training.metric}": score})
            if best is None or score > best[0]:
                best = (score, c, clf)
        coef, intercept = fold_standardisation(best[2], scaler, num_classes)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.as_tensor(coef, dtype=model.classifier.weight.dtype))
            model.classifier.bias.copy_(torch.as_tensor(intercept, dtype=model.classifier.bias.dtype))
        data.log_history.append({"chosen_C": best[1], f"best_eval_{training.metric}": best[0]})
        return model
