"""Feature extraction: a frozen backbone runs once per example; a linear head fits its features.

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
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.backbones.text import FEATURE_LAYERS
from transferlab.errors import UserError
from transferlab.evaluation.probe import ProbeSettings, fit_probe
from transferlab.strategies.base import Strategy, StrategyConfig, register_strategy, set_trainable
from transferlab.training.loop import FitData, TrainingConfig, inference_precision, map_batches, pooled_features


@dataclass
class HeadConfig(StrategyConfig):
    layers: str = "last"  # last | second_to_last | last4 | weighted (ELMo scalar mix)
    c_grid: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])
    cv_folds: int = 5
    max_iter: int = 3000

    def validate(self) -> None:
        if self.layers not in FEATURE_LAYERS:
            raise UserError(f"layers must be one of {', '.join(FEATURE_LAYERS)}, got '{self.layers}'")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise UserError(f"c_grid must hold positive values, got {self.c_grid}")
        if self.cv_folds < 2:
            raise UserError(f"cv_folds must be at least 2, got {self.cv_folds}")


@register_strategy
class FeatureExtraction(Strategy):
    name = "head"
    summary = "frozen backbone, features cached once, linear head fitted to convergence"
    config_class = HeadConfig

    def prepare(self, model: TransferModel) -> nn.Module:
        model.set_feature_layers(self.config.layers)
        head = {id(p) for p in model.head_parameters()}
        set_trainable(model, lambda name: id(model.get_parameter(name)) in head)
        return model

    def reads_frozen_features(self) -> bool:
        return self.config.layers == "last"

    def expected_trainable_params(self, model: TransferModel) -> int:
        """A linear head, (features + 1) x classes, plus one mixing weight per layer state when weighted."""
        features = model.feature_dim() * (4 if self.config.layers == "last4" else 1)
        weighted = self.config.layers == "weighted"
        states = model.config.backbone_config.num_hidden_layers + 1 if weighted else 0
        return (features + 1) * model.config.num_labels + states

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        model = self.prepare(model)
        examples = data.train + data.val
        y = np.array([f["labels"] for f in examples])
        if self.config.layers == "weighted":
            with inference_precision(training):
                states = map_batches(
                    model,
                    examples,
                    data.collate,
                    lambda m, b: torch.stack(m.pooled_hidden_states(**b), 1),
                    data.length_of,
                    training.eval_batch_size,
                )
            mix = self._fit_layer_mix(model, states, y, len(data.train), data, training)
            x = np.einsum("l,nld->nd", mix, states)
        elif data.frozen_features is not None and self.config.layers == "last":
            x = data.frozen_features
        else:
            with inference_precision(training):
                x = pooled_features(model, examples, data.collate, data.length_of, training.eval_batch_size)
        coef, intercept = self._fit_linear(x, y, len(data.label_names), data, training)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.as_tensor(coef, dtype=model.classifier.weight.dtype))
            model.classifier.bias.copy_(torch.as_tensor(intercept, dtype=model.classifier.bias.dtype))
        return model

    def _fit_linear(
        self, x: np.ndarray, y: np.ndarray, num_classes: int, data: FitData, training: TrainingConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cross-validated probe (evaluation/probe.py); its C search goes to the run's log history."""
        probe = fit_probe(x, y, num_classes, self.probe_settings(training, balanced=data.class_weights is not None))
        data.log_history.extend(probe.log_entries(training.headline_metric))
        return probe.coef, probe.intercept

    def probe_settings(self, training: TrainingConfig, balanced: bool = False) -> ProbeSettings:
        return ProbeSettings(
            c_grid=tuple(self.config.c_grid),
            folds=self.config.cv_folds,
            max_iter=self.config.max_iter,
            seed=training.seed,
            metric=training.headline_metric,
            balanced=balanced,
        )

    def _fit_layer_mix(
        self, model: TransferModel, states: np.ndarray, y: np.ndarray, n_train: int, data: FitData, training: TrainingConfig
    ) -> np.ndarray:
        """Learn the softmax weights over layer states (ELMo's scalar mix) on the cached states.

        Written by hand (no library fits a scalar mix on cached features): a linear head is fitted on
        the current mix, then the mix weights alone take gradient steps on the training examples with
        that head fixed, keeping the weights with the lowest validation loss; two rounds.
        """
        num_classes = len(data.label_names)
        s = torch.as_tensor(states, dtype=torch.float32)
        target = torch.as_tensor(y)
        logits_of = torch.zeros(states.shape[1], requires_grad=True)
        for _ in range(2):
            mix = torch.softmax(logits_of.detach(), 0).numpy()
            coef, intercept = self._fit_linear(np.einsum("l,nld->nd", mix, states), y, num_classes, data, training)
            w, b = torch.as_tensor(coef, dtype=torch.float32), torch.as_tensor(intercept, dtype=torch.float32)
            optimizer = torch.optim.Adam([logits_of], lr=0.05)
            best = (float("inf"), logits_of.detach().clone())
            for _ in range(100):
                mixed = torch.einsum("l,nld->nd", torch.softmax(logits_of, 0), s)
                losses = nn.functional.cross_entropy(mixed @ w.T + b, target, reduction="none")
                val_loss = float(losses[n_train:].detach().mean())
                if val_loss < best[0]:
                    best = (val_loss, logits_of.detach().clone())
                optimizer.zero_grad()
                losses[:n_train].mean().backward()
                optimizer.step()
            with torch.no_grad():
                logits_of.copy_(best[1])
        weights = torch.softmax(logits_of.detach(), 0)
        with torch.no_grad():
            model.layer_mix.weights.copy_(logits_of.detach())
        data.log_history.append({"layer_weights": [round(float(v), 4) for v in weights]})
        return weights.numpy()


@dataclass
class WeightedLayersConfig(HeadConfig):
    layers: str = "weighted"


@register_strategy
class WeightedLayerFeatures(FeatureExtraction):
    name = "head-all-layers"
    summary = "feature extraction from a learned weighted sum of every layer's pooled state (ELMo scalar mix)"
    config_class = WeightedLayersConfig
    starts_at_pretrained = False  # the head is rebuilt for the mixed features
    modalities = ("text",)  # a CNN's stages differ in width: no common space to mix them in
